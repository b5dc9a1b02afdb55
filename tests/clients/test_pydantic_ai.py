"""pydantic-ai with its OpenAI chat-completions model (and the Responses model
once enclave serves /v1/responses)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic_ai import Agent, NativeOutput
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.clients.conftest import MODEL, skip_without_responses
from tests.clients.models import Address, City, Person
from tests.e2e.conftest import Server

pytestmark = pytest.mark.model

# Greedy decoding and room for a whole tool call: a sampled 135M model can
# spend 48 tokens inside one string and hit the length limit.
SETTINGS = ModelSettings(max_tokens=256, temperature=0)


def provider(server: Server) -> OpenAIProvider:
    return OpenAIProvider(base_url=f"{server.url}/v1", api_key=server.admin_key)


def chat_model(server: Server) -> OpenAIChatModel:
    return OpenAIChatModel(MODEL, provider=provider(server))


def test_plain_run_and_stream(server: Server) -> None:
    agent = Agent(chat_model(server), model_settings=SETTINGS)
    assert isinstance(agent.run_sync("What is the capital of France?").output, str)

    async def stream() -> list[str]:
        async with agent.run_stream("What is the capital of France?") as result:
            return [delta async for delta in result.stream_text(delta=True)]

    assert "".join(asyncio.run(stream()))


def test_tool_output_is_a_tool_call(server: Server) -> None:
    """The default output mode asks for a `final_result` tool call."""
    result = Agent(chat_model(server), output_type=City, model_settings=SETTINGS).run_sync(
        "Describe Paris."
    )
    assert isinstance(result.output, City)
    calls = [
        part
        for message in result.all_messages()
        for part in getattr(message, "parts", ())
        if isinstance(part, ToolCallPart)
    ]
    assert calls


def test_native_structured_output_flat(server: Server) -> None:
    agent = Agent(chat_model(server), output_type=NativeOutput(City), model_settings=SETTINGS)
    assert isinstance(agent.run_sync("Describe Paris.").output, City)


def test_native_structured_output_nested(server: Server) -> None:
    agent = Agent(chat_model(server), output_type=NativeOutput(Person), model_settings=SETTINGS)
    output = agent.run_sync("Invent a person in Paris.").output
    assert isinstance(output, Person) and isinstance(output.address, Address)


def test_responses_model(server: Server) -> None:
    skip_without_responses(server)
    model = OpenAIResponsesModel(MODEL, provider=provider(server))
    result = Agent(model, model_settings=SETTINGS).run_sync("What is the capital of France?")
    assert isinstance(result.output, str)
