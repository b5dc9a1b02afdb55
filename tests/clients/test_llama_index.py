"""LlamaIndex's `OpenAILike` LLM: complete, chat, stream, tools, structured output."""

from __future__ import annotations

import pytest

from tests.clients.conftest import MODEL
from tests.clients.models import City
from tests.e2e.conftest import Server

openai_like = pytest.importorskip(
    "llama_index.llms.openai_like",
    reason="llama-index-llms-openai pins openai<3, which openai-agents and llm cannot use; "
    "install llama-index-llms-openai-like in a separate environment to run these",
)

pytestmark = pytest.mark.model


def llm(server: Server) -> object:
    return openai_like.OpenAILike(
        model=MODEL,
        api_base=f"{server.url}/v1",
        api_key=server.admin_key,
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=2048,
        max_tokens=256,
        temperature=0,
        max_retries=0,
    )


def test_complete_chat_and_stream(server: Server) -> None:
    from llama_index.core.llms import ChatMessage

    model = llm(server)
    assert isinstance(model.complete("The capital of France is").text, str)  # type: ignore[attr-defined]
    reply = model.chat([ChatMessage(role="user", content="Hi")])  # type: ignore[attr-defined]
    assert reply.message.role == "assistant"
    chunks = list(model.stream_chat([ChatMessage(role="user", content="Hi")]))  # type: ignore[attr-defined]
    assert len(chunks) > 1


def test_a_forced_tool_is_called(server: Server) -> None:
    from llama_index.core.tools import FunctionTool

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    tool = FunctionTool.from_defaults(fn=get_weather)
    response = llm(server).chat_with_tools(  # type: ignore[attr-defined]
        [tool], user_msg="What is the weather in Paris?", tool_required=True
    )
    calls = llm(server).get_tool_calls_from_response(response, error_on_no_tool_call=True)  # type: ignore[attr-defined]
    assert calls[0].tool_name == "get_weather"


def test_structured_output_flat(server: Server) -> None:
    from llama_index.core.prompts import PromptTemplate

    city = llm(server).structured_predict(City, PromptTemplate("Describe {name}."), name="Paris")  # type: ignore[attr-defined]
    assert isinstance(city, City)
