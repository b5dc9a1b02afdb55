"""The openai-agents SDK, told to use chat completions (`OpenAIChatCompletionsModel`);
its default Responses model once enclave serves /v1/responses."""

from __future__ import annotations

import asyncio

import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem
from openai import AsyncOpenAI

from tests.clients.conftest import MODEL, skip_without_responses
from tests.clients.models import City
from tests.e2e.conftest import Server

pytestmark = pytest.mark.model

set_tracing_disabled(True)  # traces would be exported to api.openai.com


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def client(server: Server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.url}/v1", api_key=server.admin_key, max_retries=0)


def chat_model(server: Server) -> OpenAIChatCompletionsModel:
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client(server))


def test_run_and_stream(server: Server) -> None:
    agent = Agent(
        name="Helper",
        instructions="Answer briefly.",
        model=chat_model(server),
        model_settings=ModelSettings(max_tokens=32),
    )

    async def run_then_stream() -> tuple[object, int]:  # one event loop for the client
        answer = (await Runner.run(agent, "What is the capital of France?")).final_output
        streamed = Runner.run_streamed(agent, "What is the capital of France?")
        return answer, len([event async for event in streamed.stream_events()])

    answer, events = asyncio.run(run_then_stream())
    assert isinstance(answer, str) and events > 1


def test_a_required_tool_is_called(server: Server) -> None:
    agent = Agent(
        name="Weather",
        instructions="Use the tool.",
        model=chat_model(server),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", max_tokens=256, temperature=0),
        tool_use_behavior="stop_on_first_tool",
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    assert any(isinstance(item, ToolCallItem) for item in result.new_items)
    assert str(result.final_output).startswith("Sunny in")


def test_structured_output_flat(server: Server) -> None:
    agent = Agent(
        name="Cities",
        instructions="Describe the city.",
        model=chat_model(server),
        output_type=City,
        model_settings=ModelSettings(max_tokens=256, temperature=0),
    )
    assert isinstance(Runner.run_sync(agent, "Paris").final_output, City)


def test_responses_model(server: Server) -> None:
    skip_without_responses(server)
    agent = Agent(
        name="Helper",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client(server)),
        instructions="Answer in one word.",
        # The SDK raises on an incomplete response, so leave room to finish.
        model_settings=ModelSettings(max_tokens=256, temperature=0),
    )
    assert isinstance(Runner.run_sync(agent, "What is the capital of France?").final_output, str)
