"""Only what was scanned is forwarded: a fuzz test over every JSON path of a request.

Two mock upstreams, ``cloud`` cleared for public data and ``onprem`` for
confidential, sit behind an alias that prefers ``cloud``. Hypothesis builds
a random valid request for each token-spending endpoint (many optional
OpenAI fields, legacy ones, and unknown extras), puts a secret at a random
place in it (a new key anywhere, a replaced or extended string, a list item,
an object key of a schema) and sends it over HTTP. The property is checked
where it matters, in the public mock's request log: the request was refused,
or no byte of the secret reached ``cloud``.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from enclave.app import create_app
from enclave.errors import InvalidRequest
from enclave.gateway.forwarding import FORWARDED, Outbound
from enclave.settings import Settings
from enclave.testing.detector_variants import FAMILIES, KINDS, variant
from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from tests.conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "MIIEowIBAAKCAQEAx4Nq4bGvd5c0fQ8a9Xc6HqVJ1ZhFQ1uFz3k8r2VwTb7LmQ9p\n" * 3
    + "-----END RSA PRIVATE KEY-----"
)
# Each secret, and a fragment that must never appear in what the public mock saw.
SECRETS: dict[str, tuple[Any, str]] = {
    "card as a number": (4111111111111111, "4111111111111111"),
    "card as a float": (4111111111111111.0, "4111111111111111"),
    "iban": ("SE45 5000 0000 0583 9825 7466", "5000 0000 0583"),
    "card": ("4111 1111 1111 1111", "4111 1111 1111"),
    "personnummer": ("19811228-9874", "19811228-9874"),
    "pem": (PEM, "MIIEowIBAAKCAQEAx4Nq4bGvd5c0fQ8a9Xc6HqVJ1Zh"),
    "api_key": ("sk-proj-Q7dLm2ZpX9vR4tK8wN3bY6cF1hJ5sA0eT2uV", "Q7dLm2ZpX9vR4tK8"),
}


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, MockUpstream]]:
    with running_mock_upstream(chunks=2) as cloud, running_mock_upstream(chunks=2) as onprem:
        yield {"cloud": cloud, "onprem": onprem}


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, mocks: dict[str, MockUpstream]
) -> Iterator[TestClient]:
    settings = Settings.model_validate(
        {
            "home": tmp_path_factory.mktemp("forwarding") / "home",
            "admin_key": ADMIN_KEY,
            "providers": [
                {
                    "name": name,
                    "type": "openai",
                    "base_url": mocks[name].url,
                    "clearance": clearance,
                    "models": ["m", {"name": "e", "embeddings": True}],
                }
                for name, clearance in (("cloud", "public"), ("onprem", "confidential"))
            ],
            "aliases": {"best": ["cloud/m", "onprem/m"], "embed": ["cloud/e", "onprem/e"]},
            "default_model": "best",
        }
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def send(client: TestClient, mocks: dict[str, MockUpstream], path: str, body: Any) -> Any:
    """Forget what the mocks saw, then send ``body`` and read the whole answer."""
    for mock in mocks.values():
        mock.reset()
    response = client.post(path, json=body, headers=AUTH)
    response.read()
    return response


# -- random valid requests ------------------------------------------------------------------

words = st.text(alphabet="abcdefgh ", min_size=1, max_size=12)
schema = st.fixed_dictionaries(
    {
        "type": st.just("object"),
        "properties": st.dictionaries(
            st.sampled_from(["city", "unit", "day"]),
            st.fixed_dictionaries(
                {"type": st.just("string")},
                optional={"description": words, "enum": st.lists(words, min_size=1, max_size=3)},
            ),
            max_size=3,
        ),
    }
)
tool = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.sampled_from(["lookup", "weather"])},
            optional={"description": words, "parameters": schema, "strict": st.booleans()},
        ),
    }
)
tool_call = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["call_1", "call_2"]),
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.just("lookup"), "arguments": st.just('{"city": "Oslo"}')}
        ),
    }
)
user_message = st.fixed_dictionaries(
    {
        "role": st.just("user"),
        "content": words
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": words}), min_size=1),
    },
    optional={"name": st.sampled_from(["anna", "bo"]), "x_extra": words},
)
messages = st.tuples(
    st.lists(st.fixed_dictionaries({"role": st.just("system"), "content": words}), max_size=1),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.just("assistant"), "content": st.none() | words},
            optional={"tool_calls": st.lists(tool_call, min_size=1, max_size=2)},
        ),
        max_size=1,
    ),
    st.lists(
        st.fixed_dictionaries(
            {"role": st.just("tool"), "tool_call_id": st.just("call_1"), "content": words}
        ),
        max_size=1,
    ),
    st.lists(user_message, min_size=1, max_size=2),
).map(lambda parts: [message for part in parts for message in part])
sampling = {
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0.1, 1),
    "max_tokens": st.integers(1, 50),
    "stop": words | st.lists(words, min_size=1, max_size=4),
    "seed": st.integers(0, 1000),
    "user": words,
    "metadata": st.dictionaries(st.sampled_from(["team", "ticket"]), words, max_size=2),
    "stream": st.booleans(),
    "x_unknown": words,
}
chat_request = st.fixed_dictionaries(
    {"model": st.just("best"), "messages": messages},
    optional={
        **sampling,
        "tools": st.lists(tool, min_size=1, max_size=2),
        "tool_choice": st.sampled_from(["auto", "none"]),
        "response_format": st.fixed_dictionaries(
            {
                "type": st.just("json_schema"),
                "json_schema": st.fixed_dictionaries({"name": st.just("out"), "schema": schema}),
            }
        ),
        "functions": st.lists(tool.map(lambda t: t["function"]), min_size=1, max_size=1),
        "parallel_tool_calls": st.booleans(),
        "logit_bias": st.dictionaries(st.sampled_from(["50256", "198"]), st.integers(-5, 5)),
    },
)
completion_request = st.fixed_dictionaries(
    {"model": st.just("best"), "prompt": words | st.lists(words, min_size=1, max_size=2)},
    optional={**sampling, "echo": st.booleans()},
)
embedding_request = st.fixed_dictionaries(
    {"model": st.just("embed"), "input": words | st.lists(words, min_size=1, max_size=3)},
    optional={"user": words, "encoding_format": st.just("float"), "x_unknown": words},
)
ENDPOINTS = {
    "/v1/chat/completions": chat_request,
    "/v1/completions": completion_request,
    "/v1/embeddings": embedding_request,
}


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every place a secret can go: (path, how)."""
    if isinstance(value, dict):
        yield path, "new key"
        yield path, "as key"
        for key, item in value.items():
            yield from places(item, (*path, key))
    elif isinstance(value, list):
        yield path, "append"
        for index, item in enumerate(value):
            yield from places(item, (*path, index))
    elif isinstance(value, str):
        yield path, "replace"
        yield path, "extend"


def plant(body: dict[str, Any], path: tuple[Any, ...], how: str, secret: str) -> dict[str, Any]:
    planted = copy.deepcopy(body)
    if not path:
        parent, last = None, None
        target: Any = planted
    else:
        parent = planted
        for step in path[:-1]:
            parent = parent[step]
        last = path[-1]
        target = parent[last]
    if how == "new key":
        target["x_secret"] = secret
    elif how == "as key":
        target[str(secret)] = "value"
    elif how == "append":
        target.append(secret)
    elif how in ("replace", "extend"):
        assert parent is not None
        parent[last] = secret if how == "replace" else f"{target} {secret}"
    return planted


@hypothesis_settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    endpoint=st.sampled_from(sorted(ENDPOINTS)),
    kind=st.sampled_from(sorted(SECRETS)),
)
def test_a_secret_anywhere_is_refused_or_never_reaches_the_public_upstream(
    client: TestClient,
    mocks: dict[str, MockUpstream],
    data: st.DataObject,
    endpoint: str,
    kind: str,
) -> None:
    body = data.draw(ENDPOINTS[endpoint], label="request")
    path, how = data.draw(st.sampled_from(list(places(body))), label="place")
    secret, fragment = SECRETS[kind]
    planted = plant(body, path, how, secret)
    response = send(client, mocks, endpoint, planted)
    seen = b"".join(request.raw for request in mocks["cloud"].requests)
    assert fragment.encode() not in seen, (
        f"{kind} at {path} ({how}) reached the public upstream: {response.status_code}"
    )
    if response.status_code == 200:
        assert response.headers["x-enclave-provider"] in ("cloud", "onprem")


def test_the_same_request_without_a_secret_goes_to_the_public_upstream(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    """The fuzz test could pass by refusing everything; a clean request must still flow."""
    body = {
        "model": "best",
        "messages": [{"role": "user", "content": "hello", "name": "anna"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "stop": ["END"],
        "user": "u1",
    }
    response = send(client, mocks, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-enclave-provider"] == "cloud"
    forwarded = mocks["cloud"].requests[0].body
    assert forwarded["messages"] == body["messages"]
    assert forwarded["tools"] == body["tools"] and forwarded["stop"] == ["END"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messages.0.name", "SE4550000000058398257466"),
        ("tools.0.function.parameters.properties.x.description", "card 4111 1111 1111 1111"),
        ("tools.0.function.parameters.properties.x.enum", ["19811228-9874"]),
        ("response_format", None),
        ("stop", "SE4550000000058398257466"),
        ("user", "4111111111111111"),
        ("functions", None),
        ("messages.0.tool_calls.0.id", "SE4550000000058398257466"),
    ],
)
def test_each_reported_field_is_scanned(
    client: TestClient, mocks: dict[str, MockUpstream], field: str, value: Any
) -> None:
    """The fields the attacker used, one by one: each one's secret raises the class."""
    body: dict[str, Any] = {
        "model": "best",
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "user", "content": "hello"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "f",
                    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
                },
            }
        ],
    }
    if field == "response_format":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": "o",
                "schema": {"type": "object", "description": "IBAN SE4550000000058398257466"},
            },
        }
    elif field == "functions":
        body["functions"] = [{"name": "g", "description": "card 4111 1111 1111 1111"}]
    else:
        *steps, last = field.split(".")
        target: Any = body
        for step in steps:
            target = target[int(step)] if step.isdigit() else target[step]
        target[last] = value
    response = send(client, mocks, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-enclave-classification"] == "confidential"
    assert response.headers["x-enclave-provider"] == "onprem"
    assert not mocks["cloud"].requests


def test_unknown_fields_are_dropped_and_known_ones_forwarded(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    body = {
        "model": "best",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": "y"}]}],
        "metadata": {"ticket": "T-1"},
        "x_vendor": {"a": 1},
        "enclave": {},
        "seed": 7,
    }
    response = send(client, mocks, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    forwarded = mocks["cloud"].requests[0].body
    assert set(forwarded) == {"model", "messages", "seed"}
    assert forwarded["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_an_unsupported_content_part_is_a_400_not_a_silent_drop(client: TestClient) -> None:
    body = {
        "model": "best",
        "messages": [{"role": "user", "content": [{"type": "input_audio", "text": "x"}]}],
    }
    response = client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert "input_audio" in response.json()["error"]["message"]


def test_every_forwarded_string_is_collected_in_order() -> None:
    outbound = Outbound(
        "chat",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "4111 1111"},
                {"role": "user", "content": "1111 1111"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"k1": {"enum": ["v"]}}},
                }
            ],
            "seed": 4111111111111111,
            "x": "dropped",
        },
    )
    assert "x" not in outbound.body
    strings = outbound.strings
    # Consecutive: a role that is one of the known ones is not scanned text.
    assert strings.index("4111 1111") + 1 == strings.index("1111 1111")
    assert "k1" in strings and "v" in strings and "4111111111111111" in strings
    assert "dropped" not in strings


def test_the_allowlists_are_documented() -> None:
    """docs/gateway.md names every forwarded top-level field of every endpoint."""
    docs = Path(__file__).parents[2].joinpath("docs", "gateway.md").read_text()
    section = docs.split("## What is forwarded", 1)[1].split("\n## ", 1)[0]
    for capability, shape in FORWARDED.items():
        assert isinstance(shape, dict)
        for name in shape:
            assert re.search(rf"`{name}`", section), f"{capability}.{name} is not documented"


def test_the_mock_logs_hold_what_was_sent(client: TestClient, mocks: dict) -> None:
    """Guard for the fuzz test's evidence: the raw log does hold forwarded text."""
    for mock in mocks.values():
        mock.reset()
    client.post(
        "/v1/chat/completions",
        json={"model": "best", "messages": [{"role": "user", "content": "marker-xyz"}]},
        headers=AUTH,
    )
    assert b"marker-xyz" in b"".join(r.raw for r in mocks["cloud"].requests)
    assert json.dumps(mocks["cloud"].requests[0].body)


SINGLE_STRING_FAMILIES = sorted(
    family for family in FAMILIES if family != "split over two messages"
)


@hypothesis_settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    family=st.sampled_from(SINGLE_STRING_FAMILIES),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32),
)
def test_a_disguised_secret_anywhere_never_reaches_the_public_upstream(
    client: TestClient,
    mocks: dict[str, MockUpstream],
    data: st.DataObject,
    family: str,
    kind: str,
    seed: int,
) -> None:
    """The same, with the secret spelled as people paste it: NBSP, dots, full-width
    digits, zero-width characters, look-alike letters, base64, hex."""
    texts = variant(random.Random(seed), family, kind)
    if texts is None:
        return  # the family does not apply to this kind
    secret = texts[0]
    body = data.draw(chat_request, label="request")
    path, how = data.draw(st.sampled_from(list(places(body))), label="place")
    planted = plant(body, path, how, secret)
    send(client, mocks, "/v1/chat/completions", planted)
    seen = json.dumps([r.body for r in mocks["cloud"].requests], ensure_ascii=False)
    assert secret not in seen, f"{kind} ({family}) at {path} ({how}) reached the public upstream"


def test_a_card_split_across_two_messages_never_reaches_the_public_upstream(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    body = {
        "model": "best",
        "messages": [
            {"role": "user", "content": "my card is 4111 1111"},
            {"role": "user", "content": "1111 1111, thanks"},
        ],
    }
    response = send(client, mocks, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-enclave-classification"] == "confidential"
    assert not mocks["cloud"].requests


# -- token ids in place of text ----------------------------------------------------------

CARD_AS_IDS = [ord(char) for char in "card 4111 1111 1111 1111"]  # ids the scan cannot read


@pytest.mark.parametrize("value", [[CARD_AS_IDS], CARD_AS_IDS, ["hello", CARD_AS_IDS]])
def test_a_secret_sent_as_token_ids_never_reaches_an_upstream(
    client: TestClient, mocks: dict[str, MockUpstream], value: Any
) -> None:
    """LangChain's default OpenAIEmbeddings sends ``input`` as token ids: a 400 that names
    the fix, and nothing reaches either upstream (ids cannot be scanned)."""
    response = send(client, mocks, "/v1/embeddings", {"model": "embed", "input": value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input"
    assert "check_embedding_ctx_length=False" in error["message"]
    assert "input.str" not in error["message"] and "list[" not in error["message"]
    assert mocks["cloud"].requests == [] and mocks["onprem"].requests == []


@pytest.mark.parametrize(
    ("capability", "body"),
    [
        ("embeddings", {"model": "e", "input": [CARD_AS_IDS]}),
        ("completion", {"model": "m", "prompt": [CARD_AS_IDS]}),
        ("completion", {"model": "m", "prompt": CARD_AS_IDS}),
    ],
)
def test_the_forwarding_layer_refuses_token_ids_itself(capability: str, body: Any) -> None:
    """Fail-closed below the wire models: were they ever to accept ids, none would leave."""
    with pytest.raises(InvalidRequest):
        Outbound(capability, body)


def test_an_alias_is_echoed_as_the_model(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    chat = {"model": "best", "messages": [{"role": "user", "content": "hi"}]}
    response = send(client, mocks, "/v1/chat/completions", chat)
    assert response.status_code == 200 and response.json()["model"] == "best"
    assert response.headers["x-enclave-model"] != "best"  # the header names who answered


# -- /v1/responses: translated to chat first, so classified and forwarded the same way --------


@pytest.mark.parametrize(
    "body",
    [
        {"instructions": "Pay to SE45 5000 0000 0583 9825 7466.", "input": "hello"},
        {
            "input": [
                {"role": "user", "content": "hello"},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": "card 4111111111111111",
                },
            ]
        },
    ],
    ids=["instructions", "function_call_output"],
)
def test_a_secret_in_a_responses_request_raises_its_class(
    client: TestClient, mocks: dict[str, MockUpstream], body: dict[str, Any]
) -> None:
    response = send(client, mocks, "/v1/responses", {"model": "best", "store": False, **body})
    assert response.status_code == 200, response.text
    assert response.headers["x-enclave-classification"] == "confidential"
    assert response.headers["x-enclave-provider"] == "onprem"
    assert not mocks["cloud"].requests
    forwarded = mocks["onprem"].requests[0]
    assert forwarded.path.endswith("/chat/completions")  # upstreams only ever see chat


def test_a_clean_responses_request_stays_public_and_is_forwarded_as_chat(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    """(Which provider answers depends on the health earlier tests left; the class does not.)"""
    body = {"model": "best", "input": "hello", "instructions": "Be brief.", "store": False}
    response = send(client, mocks, "/v1/responses", body)
    assert response.status_code == 200, response.text
    assert response.headers["x-enclave-classification"] == "public"
    provider = response.headers["x-enclave-provider"]
    forwarded = mocks[provider].requests[0]
    assert forwarded.path.endswith("/chat/completions")
    assert forwarded.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert response.json()["output"][0]["content"][0]["text"] == "tok0 tok1 "


def test_answered_requests_free_their_upstream_slot(
    client: TestClient, mocks: dict[str, MockUpstream]
) -> None:
    """A non-stream answer once kept its slot: after max_concurrency requests the preferred
    provider looked busy for ever and traffic drifted to the next one."""
    providers = client.app.state.services.gateway.routing.providers  # type: ignore[attr-defined]
    body = {"model": "best", "messages": [{"role": "user", "content": "hello"}]}
    for stream in (False, True, False):
        response = send(client, mocks, "/v1/chat/completions", {**body, "stream": stream})
        assert response.status_code == 200
        assert response.headers["x-enclave-provider"] == "cloud"
    assert providers["cloud"].in_flight == 0
    assert providers["onprem"].in_flight == 0
