"""The official `openai` client against a real `enclave serve` process."""

from __future__ import annotations

import base64
import json

import jsonschema
import numpy as np
import openai
import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.model

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]


def test_models_are_listed(server: Server) -> None:
    client = server.client()
    ids = {model.id for model in client.models.list()}
    assert {MODEL, "all-minilm-l6-v2"} <= ids
    assert client.models.retrieve(MODEL).owned_by == "local"


def test_chat_without_streaming(server: Server) -> None:
    reply = server.client().chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=30
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert 0 < reply.usage.completion_tokens <= 30


def test_chat_streaming_with_usage(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=HELLO,
        temperature=0,
        max_tokens=30,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text.strip()
    assert finishes[-1] in {"stop", "length"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # The same request without streaming gives the same text at temperature 0.
    whole = server.client().chat.completions.create(
        model=MODEL, messages=HELLO, temperature=0, max_tokens=30
    )
    assert whole.choices[0].message.content == text


def test_json_schema_output_validates(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population_millions": {"type": "number"},
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": False,
    }
    reply = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        temperature=0,
        max_tokens=150,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), schema)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
            },
        },
    }
]


def test_tool_call_has_parseable_arguments(server: Server) -> None:
    reply = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        temperature=0,
        max_tokens=60,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_tool_call_streams_as_deltas_and_round_trips(server: Server) -> None:
    client = server.client()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    calls = [tc for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function and calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    json.loads(arguments)
    # The tool result goes back as a tool message, and the model answers in text.
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": calls[0].id or "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": calls[0].id or "call_1", "content": "Sunny, 21 C"},
        ],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert follow_up.choices[0].message.content


def test_text_completions_stream_a_list_of_prompts(server: Server) -> None:
    stream = server.client().completions.create(
        model=MODEL, prompt=["The sky is", "Water is"], max_tokens=8, temperature=0, stream=True
    )
    texts = {0: "", 1: ""}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert texts[0] and texts[1]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_dimension_and_similarity(server: Server) -> None:
    client = server.client()
    sentences = [
        "The cat sits on the mat.",
        "A kitten is resting on the rug.",
        "Quarterly inflation figures were revised upwards.",
    ]
    result = client.embeddings.create(model="all-minilm-l6-v2", input=sentences)
    vectors = [item.embedding for item in result.data]
    assert all(len(vector) == 384 for vector in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2
    single = client.embeddings.create(model="all-minilm-l6-v2", input="The cat sits on the mat.")
    assert np.allclose(single.data[0].embedding, vectors[0], atol=1e-5)
    raw = server.http().post(
        "/v1/embeddings",
        json={"model": "all-minilm-l6-v2", "input": sentences[0], "encoding_format": "base64"},
    )
    decoded = np.frombuffer(base64.b64decode(raw.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-5)


# -- errors, as the client sees them -------------------------------------------


def test_bad_parameter_is_400(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        server.client().chat.completions.create(model=MODEL, messages=HELLO, n=2)
    assert info.value.status_code == 400
    assert "n=1" in info.value.message


def test_missing_or_wrong_key_is_401(server: Server) -> None:
    with pytest.raises(openai.AuthenticationError):
        server.client(key="ek-wrong-key-000000000000000000").models.list()
    response = server.http().get("/v1/models", headers={"Authorization": ""})
    assert response.status_code == 401


def test_unknown_model_is_404(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        server.client().chat.completions.create(model="gpt-9", messages=HELLO)
    assert "gpt-9" in info.value.message


def test_body_over_the_limit_is_413(server: Server) -> None:
    huge = [{"role": "user", "content": "x" * (11 * 1024 * 1024)}]
    with pytest.raises(openai.APIStatusError) as info:
        server.client().chat.completions.create(model=MODEL, messages=huge)
    assert info.value.status_code == 413


def test_full_queue_is_429_with_retry_after(server: Server) -> None:
    """One slot, a queue of two: the fourth concurrent request is refused."""
    client = server.http()
    body = {"model": MODEL, "messages": STORY, "max_tokens": 300, "temperature": 0, "stream": True}
    opened = []
    try:
        running = client.stream("POST", "/v1/chat/completions", json=body)
        opened.append(running)
        response = running.__enter__()
        next(response.iter_lines())  # it holds the slot now
        for _ in range(2):
            waiting = client.stream("POST", "/v1/chat/completions", json=body)
            opened.append(waiting)
            assert waiting.__enter__().status_code == 200
        with pytest.raises(openai.RateLimitError) as info:
            server.client().chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        assert int(info.value.response.headers["Retry-After"]) >= 1
    finally:
        for stream in opened:
            stream.__exit__(None, None, None)
        client.close()


def test_disconnecting_mid_stream_stops_generation(server: Server) -> None:
    def runner_state() -> dict[str, int]:
        providers = server.http().get("/api/providers").json()
        local = next(p for p in providers if p["name"] == "local")
        return dict(local["state"][MODEL])

    import time

    deadline = time.monotonic() + 30
    while runner_state()["busy"] or runner_state()["queued"]:  # earlier tests' leftovers
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = runner_state()
    body = {"model": MODEL, "messages": STORY, "max_tokens": 1000, "temperature": 0, "stream": True}
    with (
        server.http() as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        received = 0
        while received < 4:  # the role chunk, then three tokens
            received += next(lines).startswith("data: ")
    deadline = time.monotonic() + 30
    while (after := runner_state())["generations"] == before["generations"]:
        assert time.monotonic() < deadline, "the generation never finished"
        time.sleep(0.05)
    assert after["cancelled"] == before["cancelled"] + 1
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert generated < 50, f"{generated} tokens generated after the client left"


def test_metrics_need_admin_and_report_model_figures(server: Server) -> None:
    assert server.http(key="ek-wrong-key-000000000000000000").get("/metrics").status_code == 401
    text = server.http().get("/metrics").text
    assert f'enclave_time_to_first_token_seconds_count{{model="{MODEL}"}}' in text
    assert f'enclave_queue_depth{{model="{MODEL}"}}' in text
    assert f'enclave_tokens_total{{direction="out",model="{MODEL}"}}' in text
    assert 'route="/v1/chat/completions"' in text
