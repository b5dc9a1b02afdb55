"""App API calls as the signed-in user: their own token, or one exchanged for it (RFC 8693).

A loopback HTTP server plays both the HR API (it records the bearer of every
request and says whose data it served) and the identity provider's token
endpoint (it checks the client's Basic credentials and the RFC 8693 form, and
records every exchange). The server's own guarded client calls them, with
``egress.allow`` opening loopback, so the egress guard is on the path. People
are keys with a user and an access token behind them (the seam the sign-in
fills). The checks: each user's call carries their token (or their exchanged
one), a key without a user is refused with a clear error and nothing is sent,
and no token reaches the audit log, the server's log or the model's prompt.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from fastapi.testclient import TestClient

from enclave.app import create_app
from enclave.apps.calls import CallError
from enclave.apps.credentials import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, ApiCredentials
from enclave.apps.spec import ApiSpec
from enclave.auth.principals import Principal
from enclave.egress import Caller
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import Script, ScriptedProvider
from tests.conftest import ADMIN_KEY
from tests.unit.test_apps_api import AppsClient, example_spec, respond

CLIENT_SECRET = "exchange-client-secret-value"
# The identity provider's access tokens, by user; and what the exchange gives for each.
USER_TOKENS = {"alice": "idp-access-token-of-alice", "bob": "idp-access-token-of-bob"}
EXCHANGED = {user: f"hr-api-token-for-{user}" for user in USER_TOKENS}
SUBJECTS = {token: user for user, token in USER_TOKENS.items()}
SUBJECTS.update({token: user for user, token in EXCHANGED.items()})
SECRETS = [CLIENT_SECRET, *USER_TOKENS.values(), *EXCHANGED.values()]


@dataclass
class IdentityWorld:
    """The loopback HR API and token endpoint, and what each has seen."""

    url: str = ""
    bearers: list[str] = field(default_factory=list)  # the HR API's Authorization headers
    exchanges: list[dict[str, Any]] = field(default_factory=list)  # the token endpoint's forms
    lifetime: int = 300


def serve_world(world: IdentityWorld) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            bearer = self.headers.get("authorization", "")
            world.bearers.append(bearer)
            subject = SUBJECTS.get(bearer.removeprefix("Bearer "))
            if self.path != "/api/vacancies":
                self._send(404, {"error": "no route"})
            elif subject is None:
                self._send(401, {"error": "who are you?"})
            else:
                self._send(200, [{"id": 12, "title": f"Welder (as seen by {subject})"}])

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            form["authorization"] = self.headers.get("authorization", "")
            world.exchanges.append(form)
            expected = base64.b64encode(f"enclave:{CLIENT_SECRET}".encode()).decode()
            if self.path != "/token" or form["authorization"] != f"Basic {expected}":
                self._send(401, {"error": "invalid_client"})
                return
            user = SUBJECTS.get(form.get("subject_token", ""))
            if (
                form.get("grant_type") != TOKEN_EXCHANGE_GRANT
                or form.get("subject_token_type") != ACCESS_TOKEN_TYPE
                or form.get("audience") != "hr-api"
                or user is None
                or form["subject_token"] != USER_TOKENS[user]
            ):
                self._send(400, {"error": "invalid_grant", "error_description": "no"})
                return
            self._send(
                200,
                {
                    "access_token": EXCHANGED[user],
                    "issued_token_type": ACCESS_TOKEN_TYPE,
                    "token_type": "Bearer",
                    "expires_in": world.lifetime,
                },
            )

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    world.url = f"http://127.0.0.1:{server.server_address[1]}"
    return server


@pytest.fixture
def world() -> Iterator[IdentityWorld]:
    world = IdentityWorld()
    server = serve_world(world)
    yield world
    server.shutdown()


@dataclass
class People:
    apps: AppsClient
    keys: dict[str, str]  # alice, bob (users with tokens), service (no user)
    world: IdentityWorld

    def ask(self, who: str) -> dict[str, Any]:
        answer = self.apps.chat("Which vacancies are open?", key=self.keys[who])
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def prompts(self) -> str:
        return "\n".join(m.content for r in self.apps.provider.requests for m in r.messages)


@pytest.fixture
def people(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: IdentityWorld
) -> Iterator[People]:
    monkeypatch.setenv("HR_EXCHANGE_SECRET", CLIENT_SECRET)
    settings = Settings(
        home=tmp_path / "home",
        admin_key=ADMIN_KEY,
        apps={"secret_env": ["HR_EXCHANGE_SECRET"], "tool_threshold": 0.45},
        egress={"allow": ["127.0.0.1/32"]},
    )
    settings.knowledge.embedding_model = "scripted-words"
    provider = ScriptedProvider(script=Script(respond=respond))
    app = create_app(settings, registry=ModelRegistry([provider], default_model="scripted"))
    with TestClient(app, raise_server_exceptions=False) as client:
        services = app.state.services
        keys = {name: services.keys.create(name)[0] for name in ["alice", "bob", "service"]}
        authenticate = services.keys.authenticate

        def signed_in(secret: str) -> Principal:
            principal = authenticate(secret)
            token = USER_TOKENS.get(principal.key_name)
            if token is None:
                return principal
            return replace(
                principal,
                user_id=len(principal.key_name),
                user_name=principal.key_name,
                user_token=token,
            )

        services.keys.authenticate = signed_in
        yield People(AppsClient(client, provider, None), keys, world)  # type: ignore[arg-type]


def hr_spec(world: IdentityWorld, auth: dict[str, Any]) -> dict[str, Any]:
    spec = example_spec()
    api = spec["spec"]["apis"][0]
    api["url"] = f"{world.url}/api"
    api.pop("headers", None)
    api["auth"] = auth
    return spec


EXCHANGE = {
    "token_exchange": {
        "client_id": "enclave",
        "client_secret": "env:HR_EXCHANGE_SECRET",
        "audience": "hr-api",
        "scope": "vacancies.read",
    }
}


def exchange_auth(world: IdentityWorld) -> dict[str, Any]:
    return {"token_exchange": {**EXCHANGE["token_exchange"], "token_url": f"{world.url}/token"}}


def assert_no_secret_leaked(people: People, caplog: pytest.LogCaptureFixture) -> None:
    audit = json.dumps(people.apps.audit())
    shown = audit + people.prompts() + caplog.text
    assert not [secret for secret in SECRETS if secret in shown]


def test_each_user_call_carries_their_own_token(
    people: People, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    applied = people.apps.apply(hr_spec(people.world, {"user_token": True}))
    assert applied.status_code in (200, 201), applied.text
    for user in ("alice", "bob"):
        body = people.ask(user)
        [call] = body["app"]["tool_calls"]
        assert call["status"] == 200 and call["error"] is None
        assert people.world.bearers[-1] == f"Bearer {USER_TOKENS[user]}"
        assert f"as seen by {user}" in body["choices"][0]["message"]["content"]
    assert_no_secret_leaked(people, caplog)


def test_a_key_without_a_user_is_refused_and_nothing_is_sent(people: People) -> None:
    for auth in ({"user_token": True}, exchange_auth(people.world)):
        applied = people.apps.apply(hr_spec(people.world, auth))
        assert applied.status_code in (200, 201), applied.text
        body = people.ask("service")
        [call] = body["app"]["tool_calls"]
        assert call["status"] is None and "has no user" in call["error"]
        assert people.world.bearers == [] and people.world.exchanges == []


def test_token_exchange_gives_each_user_their_own_token_once(
    people: People, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    applied = people.apps.apply(hr_spec(people.world, exchange_auth(people.world)))
    assert applied.status_code in (200, 201), applied.text
    for user in ("alice", "bob", "alice"):
        body = people.ask(user)
        [call] = body["app"]["tool_calls"]
        assert call["status"] == 200, call
        assert people.world.bearers[-1] == f"Bearer {EXCHANGED[user]}"
        assert f"as seen by {user}" in body["choices"][0]["message"]["content"]
    # alice's second question used the cached token: one exchange per user.
    assert [SUBJECTS[e["subject_token"]] for e in people.world.exchanges] == ["alice", "bob"]
    exchange = people.world.exchanges[0]
    assert exchange["grant_type"] == TOKEN_EXCHANGE_GRANT
    assert exchange["subject_token_type"] == ACCESS_TOKEN_TYPE
    assert exchange["scope"] == "vacancies.read" and "client_id" not in exchange
    assert_no_secret_leaked(people, caplog)


def test_a_refused_exchange_is_a_clear_error_and_no_call(people: People) -> None:
    auth = exchange_auth(people.world)
    auth["token_exchange"]["audience"] = "payroll-api"  # the provider refuses this audience
    applied = people.apps.apply(hr_spec(people.world, auth))
    assert applied.status_code in (200, 201), applied.text
    [call] = people.ask("alice")["app"]["tool_calls"]
    assert "was refused (HTTP 400, invalid_grant)" in call["error"]
    assert "no" not in call["error"].split("invalid_grant")[1]  # not the description
    assert people.world.bearers == []


@pytest.mark.parametrize(
    ("auth", "headers", "problem"),
    [
        ({"user_token": True}, {"Authorization": "Bearer env:HR_EXCHANGE_SECRET"}, "headers"),
        ({"user_token": True, **EXCHANGE}, None, "exactly one"),
        ({}, None, "exactly one"),
        ({"token_exchange": {**EXCHANGE["token_exchange"], "client_secret": "x"}}, None, "env:"),
        (
            {"token_exchange": {**EXCHANGE["token_exchange"], "client_secret": "env:OTHER"}},
            None,
            "apps.secret_env",
        ),
        (
            {
                "token_exchange": {
                    **EXCHANGE["token_exchange"],
                    "token_url": "http://169.254.169.254/t",
                }
            },
            None,
            "token_url",
        ),
    ],
)
def test_an_invalid_auth_is_refused_at_apply_naming_the_field(
    people: People, auth: dict[str, Any], headers: dict[str, str] | None, problem: str
) -> None:
    auth = json.loads(json.dumps(auth))
    if "token_exchange" in auth:
        auth["token_exchange"].setdefault("token_url", f"{people.world.url}/token")
    spec = hr_spec(people.world, auth)
    if headers is not None:
        spec["spec"]["apis"][0]["headers"] = headers
    refused = people.apps.apply(spec)
    assert refused.status_code == 400, refused.text
    assert problem in refused.json()["error"]["message"]


def test_exchanged_tokens_are_used_until_shortly_before_they_expire(world: IdentityWorld) -> None:
    now = [1000.0]
    credentials = ApiCredentials(
        ["HR_EXCHANGE_SECRET"], environ={"HR_EXCHANGE_SECRET": CLIENT_SECRET}, clock=lambda: now[0]
    )
    spec = ApiSpec.model_validate(
        {"name": "hr", "url": f"{world.url}/api", "schema": {}, "auth": exchange_auth(world)}
    )
    alice = Principal(1, "alice", 1, "default", False, user_id=1, user_token=USER_TOKENS["alice"])

    async def headers() -> dict[str, str]:
        async with httpx.AsyncClient() as http:
            return await credentials.headers(
                spec, alice, http=http, caller=Caller("default"), timeout_s=5
            )

    assert asyncio.run(headers())["Authorization"] == f"Bearer {EXCHANGED['alice']}"
    now[0] += world.lifetime - 31
    asyncio.run(headers())
    assert len(world.exchanges) == 1
    now[0] += 2  # within 30 s of expiry: exchanged again
    asyncio.run(headers())
    assert len(world.exchanges) == 2
    with pytest.raises(CallError, match="no user"):
        asyncio.run(
            credentials.headers(
                spec,
                replace(alice, user_token=None),
                http=httpx.AsyncClient(),
                caller=Caller("default"),
                timeout_s=5,
            )
        )
