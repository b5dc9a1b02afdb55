"""LangChain's `ChatOpenAI` and `OpenAIEmbeddings`, with their defaults."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import SecretStr

from tests.clients.conftest import EMBEDDER, MODEL
from tests.clients.models import Address, City, Person
from tests.e2e.conftest import Server

pytestmark = pytest.mark.model


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


def chat(server: Server, **options: object) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL,
        base_url=f"{server.url}/v1",
        api_key=SecretStr(server.admin_key),
        max_retries=0,
        # Greedy, with room for a whole tool call: a sampled 135M model can
        # spend 48 tokens inside one string and stop at the length limit.
        max_completion_tokens=256,
        temperature=0,
        **options,
    )


def test_invoke_and_stream(server: Server) -> None:
    llm = chat(server)
    assert isinstance(llm.invoke("What is the capital of France?").content, str)
    chunks = list(llm.stream("What is the capital of France?"))
    assert len(chunks) > 1 and "".join(str(c.content) for c in chunks)


def test_bound_tool_is_called(server: Server) -> None:
    llm = chat(server).bind_tools([get_weather], tool_choice="get_weather")
    reply = llm.invoke("What is the weather in Paris?")
    assert isinstance(reply, AIMessage) and reply.tool_calls
    assert reply.tool_calls[0]["name"] == "get_weather"
    assert isinstance(reply.tool_calls[0]["args"]["city"], str)


def test_structured_output_flat(server: Server) -> None:
    result = chat(server).with_structured_output(City).invoke("Describe Paris.")
    assert isinstance(result, City)


def test_structured_output_nested(server: Server) -> None:
    result = chat(server).with_structured_output(Person).invoke("Invent a person in Paris.")
    assert isinstance(result, Person) and isinstance(result.address, Address)


def test_embeddings_with_plain_text(server: Server) -> None:
    embedder = OpenAIEmbeddings(
        model=EMBEDDER,
        openai_api_base=f"{server.url}/v1",
        openai_api_key=SecretStr(server.admin_key),
        max_retries=0,
        check_embedding_ctx_length=False,
    )
    vectors = embedder.embed_documents(["a cat", "a dog"])
    assert [len(v) for v in vectors] == [384, 384]
    assert len(embedder.embed_query("a bird")) == 384


def tiktoken_available() -> bool:
    import tiktoken

    try:
        tiktoken.get_encoding("cl100k_base")
    except Exception:  # offline: the encoding is downloaded on first use
        return False
    return True


def test_embeddings_with_defaults(server: Server) -> None:
    """By default the client tokenises with tiktoken and sends token arrays."""
    if not tiktoken_available():
        pytest.skip("tiktoken cannot fetch cl100k_base offline (OpenAIEmbeddings' default)")
    embedder = OpenAIEmbeddings(
        model=EMBEDDER,
        openai_api_base=f"{server.url}/v1",
        openai_api_key=SecretStr(server.admin_key),
        max_retries=0,
    )
    assert [len(v) for v in embedder.embed_documents(["a cat", "a dog"])] == [384, 384]
