"""Sign-in with a real OpenID Connect provider on loopback (``oidc-provider-mock``).

The provider runs in a thread on a free port; Enclave runs in process. Each test
walks the whole authorization code flow: ``/ui/oidc/login`` sends the browser to
the provider, the provider's form (posted here as a browser would) sends it back
to ``/ui/oidc/callback`` with a code, and Enclave swaps it for tokens and checks
the ID token. The provider's ``PUT /users/{sub}`` sets a person's claims, so a
test can move someone between groups and watch their next request.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from oidc_provider_mock import run_server_in_thread
from sqlalchemy import select

from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.storage.models import UiSessionRow, UserRow
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY

BASE = "http://testserver"
SECRET_ENV = "ENCLAVE_TEST_OIDC_SECRET"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

PEOPLE = {
    "alice": {"name": "Alice Admin", "groups": ["ai-platform"]},
    "bob": {"name": "Bob Member", "groups": ["mpd"]},
    "carol": {"name": "Carol Builder", "groups": ["mpd-ai", "mpd"]},
    "mallory": {"name": "Mallory Nobody", "groups": ["canteen"]},
    "dave": {"name": "Dave Two-Hats", "groups": ["mpd", "hr-partners"]},
}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(scope="module")
def expired_provider() -> Iterator[str]:
    """A provider whose ID tokens ran out five minutes before they were issued."""
    with run_server_in_thread(access_token_max_age=timedelta(seconds=-300)) as server:
        yield f"http://localhost:{server.server_port}"


def set_person(provider: str, sub: str, claims: dict[str, Any]) -> None:
    httpx.put(f"{provider}/users/{sub}", json=claims).raise_for_status()


def identity(provider: str, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "oidc": {
            "issuer": provider,
            "client_id": "enclave",
            "client_secret": f"env:{SECRET_ENV}",
            "display_name": "Bank Login",
            "refresh_s": 0,
        },
        "admins": ["group:ai-platform"],
        "workspaces": {
            "monetary-policy": {"members": ["group:mpd"], "builders": ["group:mpd-ai"]},
            "hr": {"builders": ["group:hr-partners"]},
        },
    }
    config.update(changes)
    return config


@contextmanager
def running_clients(
    tmp_path: Path, provider: str, **fixed: Any
) -> Iterator[Callable[..., TestClient]]:
    """``make(issuer, **identity_changes)``: a running app on the loopback provider, each
    with its own home; ``fixed`` are further settings for every app (a callable value is
    called for each, e.g. a fresh database URL). The apps stop when this ends."""
    clients: list[TestClient] = []

    def make(issuer: str = provider, **changes: Any) -> TestClient:
        for sub, claims in PEOPLE.items():
            set_person(issuer, sub, claims)
        extra = {name: value() if callable(value) else value for name, value in fixed.items()}
        settings = Settings(
            home=tmp_path / f"home{len(clients)}",
            admin_key=ADMIN_KEY,
            public_url=BASE,
            identity=identity(issuer, **changes),
            **extra,
        )
        registry = ModelRegistry([ScriptedProvider()], default_model="scripted")
        client = TestClient(create_app(settings, registry=registry), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.__exit__(None, None, None)


@pytest.fixture
def make_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str) -> Iterator[Any]:
    monkeypatch.setenv(SECRET_ENV, "the-client-secret")
    with running_clients(tmp_path, provider) as make:
        yield make


@pytest.fixture
def client(make_client: Any) -> TestClient:
    return make_client()  # type: ignore[no-any-return]


def start(client: TestClient, next_path: str = "/") -> str:
    """``/ui/oidc/login``: the provider's authorization URL it sends the browser to."""
    response = client.get("/ui/oidc/login", params={"next": next_path}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def at_provider(authorize_url: str, sub: str) -> str:
    """The person picks ``sub`` on the provider's form; the callback path it sends back to."""
    answer = httpx.post(authorize_url, data={"sub": sub}, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith(f"{BASE}/ui/oidc/callback?")
    return location.removeprefix(BASE)


def sign_in(client: TestClient, sub: str, next_path: str = "/") -> httpx.Response:
    return client.get(at_provider(start(client, next_path), sub), follow_redirects=False)


def signed_in(client: TestClient, sub: str) -> str:
    """Sign ``sub`` in; the session's CSRF token."""
    response = sign_in(client, sub)
    assert response.status_code == 200, response.text
    page = client.get("/")
    assert page.status_code == 200
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match
    return match.group(1)


def me(client: TestClient) -> httpx.Response:
    return client.get("/api/me")


def alert_of(response: httpx.Response) -> str:
    match = re.search(r'role="alert">([^<]*)<', response.text)
    return match.group(1) if match else ""


def test_the_login_page_offers_the_provider(client: TestClient) -> None:
    page = client.get("/login", params={"next": "/knowledge"})
    assert "Sign in with Bank Login" in page.text
    assert 'href="/ui/oidc/login?next=/knowledge"' in page.text
    assert 'name="api_key"' in page.text  # break-glass keys still sign in


def test_the_provider_is_asked_with_pkce_state_and_nonce(client: TestClient) -> None:
    url = httpx.URL(start(client))
    params = dict(url.params)
    assert params["response_type"] == "code" and params["client_id"] == "enclave"
    assert params["redirect_uri"] == f"{BASE}/ui/oidc/callback"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 40 and len(params["nonce"]) >= 40
    assert "openid" in params["scope"].split()
    (pending,) = [c for c in client.cookies.jar if c.name == "enclave_oidc"]
    assert pending.path == "/ui/oidc" and pending.has_nonstandard_attr("HttpOnly")
    kept = json.loads(base64.urlsafe_b64decode(pending.value or ""))
    assert kept[:2] == [params["state"], params["nonce"]]
    assert kept[2] not in str(url)  # the PKCE verifier stays with the browser's cookie


def test_sign_in_starts_a_session_and_moves_on_to_next(client: TestClient) -> None:
    response = sign_in(client, "bob", "/knowledge")
    assert response.status_code == 200
    assert '<meta http-equiv="refresh" content="0;url=/knowledge">' in response.text
    cookie = response.headers["set-cookie"]
    assert "enclave_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.cookies.get("enclave_oidc") is None  # the pending sign-in is used up
    body = me(client).json()
    assert body["user_name"] == "Bob Member" and body["groups"] == ["mpd"]
    page = client.get("/knowledge")
    assert "Bob Member" in page.text and ">member<" in page.text


@pytest.mark.parametrize(
    ("sub", "workspace", "role"),
    [
        ("alice", "monetary-policy", "admin"),  # admins have every workspace
        ("bob", "monetary-policy", "member"),
        ("carol", "monetary-policy", "builder"),
    ],
)
def test_groups_map_to_roles(client: TestClient, sub: str, workspace: str, role: str) -> None:
    signed_in(client, sub)
    body = me(client).json()
    assert (body["workspace"], body["role"], body["admin"]) == (workspace, role, role == "admin")
    assert client.get("/api/keys").status_code == (200 if role == "admin" else 403)


def test_a_person_in_two_workspaces_switches_between_them(client: TestClient) -> None:
    csrf = signed_in(client, "dave")
    assert (me(client).json()["workspace"], me(client).json()["role"]) == (
        "monetary-policy",
        "member",
    )
    page = client.get("/").text
    assert '<option value="hr">hr (builder)</option>' in page
    moved = client.post(
        "/ui/workspace", data={"workspace": "hr", "csrf_token": csrf}, follow_redirects=False
    )
    assert moved.status_code == 303
    assert (me(client).json()["workspace"], me(client).json()["role"]) == ("hr", "builder")
    refused = client.post("/ui/workspace", data={"workspace": "default", "csrf_token": csrf})
    assert refused.status_code == 403 and me(client).json()["workspace"] == "hr"
    no_token = client.post("/ui/workspace", data={"workspace": "monetary-policy"})
    assert no_token.status_code == 403 and me(client).json()["workspace"] == "hr"


def test_someone_whose_groups_give_no_role_is_refused_and_not_recorded(
    client: TestClient,
) -> None:
    response = sign_in(client, "mallory")
    assert response.status_code == 403
    assert "none of your groups has a role" in alert_of(response)
    assert "enclave_session" not in response.headers.get("set-cookie", "")
    with client.app.state.services.keys._sessions() as session:  # type: ignore[attr-defined]
        assert session.scalars(select(UserRow)).all() == []


def test_a_callback_with_another_state_is_refused(client: TestClient) -> None:
    callback = at_provider(start(client), "bob")
    forged = re.sub(r"state=[^&]+", "state=attackers-state", callback)
    response = client.get(forged, follow_redirects=False)
    assert response.status_code == 400 and "(state)" in alert_of(response)
    assert me(client).status_code == 401


def test_a_callback_without_the_browsers_pending_cookie_is_refused(client: TestClient) -> None:
    callback = at_provider(start(client), "bob")
    client.cookies.clear()  # another browser: login CSRF with the attacker's code
    response = client.get(callback, follow_redirects=False)
    assert response.status_code == 400
    assert me(client).status_code == 401


def test_a_wrong_nonce_is_refused_through_the_callback(client: TestClient) -> None:
    callback = at_provider(start(client), "bob")
    (pending,) = [c for c in client.cookies.jar if c.name == "enclave_oidc"]
    assert pending.value
    state, _nonce, verifier, next_path = json.loads(base64.urlsafe_b64decode(pending.value))
    swapped = [state, "a-nonce-of-an-earlier-sign-in", verifier, next_path]
    client.cookies.delete("enclave_oidc")
    client.cookies.set(
        "enclave_oidc",
        base64.urlsafe_b64encode(json.dumps(swapped).encode()).decode(),
        domain=pending.domain,
        path="/ui/oidc",
    )
    response = client.get(callback, follow_redirects=False)
    assert response.status_code == 401 and "nonce" in alert_of(response)
    assert me(client).status_code == 401


def test_a_tampered_id_token_is_refused_through_the_callback(client: TestClient) -> None:
    """A man in the middle of the token response promotes Bob to admin."""

    class Tamper(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            forwarded = httpx.Request(
                request.method, request.url, headers=request.headers, content=await request.aread()
            )
            async with httpx.AsyncClient() as real:
                response = await real.send(forwarded)
            if not request.url.path.endswith("/oauth2/token"):
                return httpx.Response(
                    response.status_code,
                    content=response.content,
                    headers={"content-type": response.headers["content-type"]},
                )
            token = response.json()
            header, payload, signature = token["id_token"].split(".")
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            claims["groups"] = ["ai-platform"]
            forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
            token["id_token"] = f"{header}.{forged}.{signature}"
            return httpx.Response(200, json=token)

    client.app.state.services.identity.oidc._transport = Tamper()  # type: ignore[attr-defined]
    response = sign_in(client, "bob")
    assert response.status_code == 401 and "signature" in alert_of(response)
    assert me(client).status_code == 401


def test_an_expired_id_token_is_refused_through_the_callback(
    make_client: Any, expired_provider: str
) -> None:
    client = make_client(expired_provider)
    response = sign_in(client, "bob")
    assert response.status_code == 401 and "exp" in alert_of(response)
    assert me(client).status_code == 401


def test_a_person_removed_from_a_group_loses_access_on_their_next_request(
    client: TestClient, provider: str
) -> None:
    csrf = signed_in(client, "carol")
    assert me(client).json()["role"] == "builder"
    made = client.post("/api/knowledge", json={"name": "drafts"}, headers={"X-CSRF-Token": csrf})
    assert made.status_code != 403

    set_person(provider, "carol", {"name": "Carol Builder", "groups": ["mpd"]})  # not mpd-ai
    assert me(client).json()["role"] == "member"
    refused = client.post("/api/knowledge", json={"name": "more"}, headers={"X-CSRF-Token": csrf})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "needs_builder"

    set_person(provider, "carol", {"name": "Carol Builder", "groups": []})  # left the bank
    assert me(client).status_code == 401
    assert client.get("/", follow_redirects=False).status_code == 303  # to the sign-in page


def test_a_builder_cannot_reach_admin_routes(client: TestClient) -> None:
    csrf = signed_in(client, "carol")
    for method, path in [
        ("GET", "/api/keys"),
        ("GET", "/api/admin/audit"),
        ("GET", "/api/admin/workspaces"),
        ("GET", "/api/admin/users"),
        ("POST", "/api/keys"),
    ]:
        response = client.request(
            method, path, json={"name": "mine", "admin": True}, headers={"X-CSRF-Token": csrf}
        )
        assert response.status_code == 403, (method, path, response.text)
    assert client.get("/admin").status_code == 403


def test_a_member_cannot_apply_an_app_or_manage_knowledge(client: TestClient) -> None:
    csrf = signed_in(client, "bob")
    headers = {"X-CSRF-Token": csrf}
    for method, path, body in [
        ("PUT", "/api/apps/hr-assistant", {"spec": {}}),
        ("DELETE", "/api/apps/hr-assistant", None),
        ("POST", "/api/apps/drafts", {"spec": {}}),
        ("POST", "/api/knowledge", {"name": "salaries"}),
        ("DELETE", "/api/knowledge/salaries", None),
    ]:
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "needs_builder"
    assert client.get("/api/apps").status_code == 200  # the app store is theirs


def test_a_key_never_has_more_rights_than_its_user(client: TestClient, provider: str) -> None:
    signed_in(client, "carol")
    carol = me(client).json()["user_id"]
    made = client.post(
        "/api/keys",
        json={
            "name": "carol's notebook",
            "workspace": "monetary-policy",
            "role": "admin",
            "user_id": carol,
        },
        headers=ADMIN,
    )
    assert made.status_code == 201, made.text
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    as_key = client.get("/api/me", headers=key).json()
    assert as_key["role"] == "builder" and as_key["user_name"] == "Carol Builder"
    assert client.get("/api/keys", headers=key).status_code == 403  # not admin, as she is not

    set_person(provider, "carol", {"name": "Carol Builder", "groups": []})
    assert me(client).status_code == 401  # her session's re-check records the change
    services = client.app.state.services  # type: ignore[attr-defined]
    services.keys._cache.clear()  # past the key cache's few seconds
    refused = client.get("/api/me", headers=key)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "no_role"


def test_without_self_registration_a_new_person_waits_for_an_admin(make_client: Any) -> None:
    client = make_client(self_registration=False)
    response = sign_in(client, "bob")
    assert response.status_code == 403 and "waits for an admin" in alert_of(response)
    users = client.get("/api/admin/users", headers=ADMIN).json()["data"]
    assert [(u["name"], u["disabled"]) for u in users] == [("Bob Member", True)]
    enabled = client.patch(
        f"/api/admin/users/{users[0]['id']}", json={"disabled": False}, headers=ADMIN
    )
    assert enabled.status_code == 200
    signed_in(client, "bob")
    assert me(client).json()["role"] == "member"
    # an admin by group is let in at once
    client.cookies.clear()
    signed_in(client, "alice")
    assert me(client).json()["role"] == "admin"


def test_disabling_a_user_ends_their_session_at_the_next_request(client: TestClient) -> None:
    signed_in(client, "bob")
    bob = me(client).json()["user_id"]
    assert (
        client.patch(f"/api/admin/users/{bob}", json={"disabled": True}, headers=ADMIN).status_code
        == 200
    )
    assert me(client).status_code == 401


def test_sign_out_ends_the_session_and_goes_to_the_providers_logout(
    client: TestClient, provider: str
) -> None:
    csrf = signed_in(client, "bob")
    response = client.post("/ui/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    target = httpx.URL(response.headers["location"])
    assert str(target).startswith(f"{provider}/oauth2/end_session?")
    assert target.params["post_logout_redirect_uri"] == f"{BASE}/login"
    assert target.params["id_token_hint"].count(".") == 2
    assert me(client).status_code == 401


def test_the_providers_tokens_are_stored_sealed(client: TestClient) -> None:
    signed_in(client, "bob")
    with client.app.state.services.keys._sessions() as session:  # type: ignore[attr-defined]
        row = session.scalars(select(UiSessionRow)).one()
    assert row.user_id is not None and row.tokens
    assert "eyJ" not in row.tokens  # no JWT (the ID token) in clear
    assert "access_token" not in row.tokens


def test_the_audit_log_records_the_user_as_well_as_the_key(client: TestClient) -> None:
    csrf = signed_in(client, "bob")
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post("/v1/chat/completions", json=body, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200, answer.text
    who = me(client).json()
    services = client.app.state.services  # type: ignore[attr-defined]
    services.gateway.audit.flush(timeout=5)
    entries = client.get("/api/admin/audit", headers=ADMIN).json()["data"]
    assert (entries[0]["key_id"], entries[0]["user_id"]) == (who["key_id"], who["user_id"])


def test_the_configs_in_docs_identity_are_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    monkeypatch.setenv("OIDC_SECRET", "from-the-docs")
    monkeypatch.setenv("SCIM_TOKEN", "from-the-docs-a-long-scim-token")
    text = (Path(__file__).parents[2] / "docs" / "identity.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    configs = [yaml.safe_load(block) for block in blocks]
    configs = [c for c in configs if isinstance(c, dict) and "identity" in c]
    assert len(configs) == 4  # the local try-out, SCIM, Keycloak, Entra ID
    for config in configs:
        loaded = Settings(home=tmp_path, **config)
        assert loaded.identity.oidc is not None and loaded.public_url
