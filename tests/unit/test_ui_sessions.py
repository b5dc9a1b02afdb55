"""Signing the web UI in and out, session cookies, and the CSRF check, in process."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from enclave.app import create_app
from enclave.auth.sessions import CSRF_HEADER, SESSION_COOKIE
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ADMIN_KEY, ScriptedApp


def login(
    client: TestClient, key: str = ADMIN_KEY, next_path: str | None = None, **options: Any
) -> httpx.Response:
    data = {"api_key": key} if next_path is None else {"api_key": key, "next": next_path}
    return client.post("/ui/login", data=data, follow_redirects=False, **options)


def csrf_of(scripted: ScriptedApp) -> str:
    """The CSRF token the page would show for the client's session."""
    services = scripted.client.app.state.services  # type: ignore[attr-defined]
    resolved = services.sessions.resolve(scripted.client.cookies[SESSION_COOKIE])
    assert resolved is not None
    return str(resolved[1])


def new_key(scripted: ScriptedApp, **body: Any) -> dict[str, Any]:
    response = scripted.client.post(
        "/api/keys", json={"name": "user", **body}, headers=scripted.auth()
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def cookie_attributes(response: httpx.Response) -> dict[str, str]:
    header = response.headers["set-cookie"]
    name_value, *attributes = [part.strip() for part in header.split(";")]
    parsed = {"": name_value}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        parsed[key.lower()] = value.lower()
    return parsed


# -- sign-in -----------------------------------------------------------------


def test_a_good_key_signs_in_with_a_locked_down_cookie(scripted: ScriptedApp) -> None:
    response = login(scripted.client)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    cookie = cookie_attributes(response)
    assert cookie[""].startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in cookie
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "28800"
    assert "secure" not in cookie  # plain http and secure_cookies off
    me = scripted.client.get("/api/me")
    assert me.status_code == 200, me.text
    assert me.json()["key_name"] == "admin (ENCLAVE_ADMIN_KEY)"


def test_only_the_hash_of_the_session_id_is_stored(scripted: ScriptedApp) -> None:
    login(scripted.client)
    login(scripted.client)  # signing in again replaces the session
    session_id = scripted.client.cookies[SESSION_COOKIE]
    assert len(session_id) >= 43  # 32 random bytes, URL-safe
    engine = scripted.client.app.state.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT * FROM ui_sessions")).all()
    assert len(rows) == 1
    assert rows[0].id_hash == hashlib.sha256(session_id.encode()).hexdigest()
    assert all(session_id not in str(value) for value in rows[0])


def test_a_wrong_key_is_a_401_without_a_cookie(scripted: ScriptedApp) -> None:
    response = login(scripted.client, "ek-not-a-real-key-aaaaaaaaaaaa")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "Invalid API key." in response.text
    assert login(scripted.client, "").status_code == 401
    assert scripted.client.get("/api/me").status_code == 401


def test_the_login_page_renders_the_error(scripted: ScriptedApp) -> None:
    """A refused key shows the sign-in page again with the error, and a ``next`` that
    leaves the site is dropped from the form."""
    response = login(scripted.client, "ek-not-a-real-key-aaaaaaaaaaaa", "https://evil.example/")
    assert response.status_code == 401
    assert '<p class="alert" role="alert">Invalid API key.</p>' in response.text
    assert "evil.example" not in response.text


@pytest.mark.parametrize(
    ("asked", "sent_to"),
    [
        ("/knowledge?kb=hr", "/knowledge?kb=hr"),
        ("/apps/hr-assistant", "/apps/hr-assistant"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
    ],
)
def test_next_only_leads_to_this_site(scripted: ScriptedApp, asked: str, sent_to: str) -> None:
    response = login(scripted.client, next_path=asked)
    assert response.status_code == 303
    assert response.headers["location"] == sent_to


def test_a_form_posted_from_another_site_does_not_sign_in(scripted: ScriptedApp) -> None:
    for site in ("cross-site", "same-site"):
        refused = login(scripted.client, headers={"Sec-Fetch-Site": site})
        assert refused.status_code == 403
        assert "set-cookie" not in refused.headers
    accepted = login(scripted.client, headers={"Sec-Fetch-Site": "same-origin"})
    assert accepted.status_code == 303


def test_the_cookie_is_secure_over_https_or_when_configured(settings: Settings) -> None:
    settings.ui.secure_cookies = True
    app = create_app(settings, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app) as client:
        assert "secure" in cookie_attributes(login(client))
    settings.ui.secure_cookies = False
    app = create_app(settings, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app, base_url="https://testserver") as client:
        assert "secure" in cookie_attributes(login(client))


def test_an_expired_session_is_refused_and_removed(scripted: ScriptedApp) -> None:
    login(scripted.client)
    engine = scripted.client.app.state.engine  # type: ignore[attr-defined]
    past = datetime.now(UTC) - timedelta(seconds=1)
    with engine.begin() as connection:
        connection.execute(text("UPDATE ui_sessions SET expires_at = :t"), {"t": past})
    response = scripted.client.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_expired"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM ui_sessions")).scalar() == 0


# -- the cookie on the API, and CSRF -------------------------------------------


def test_unsafe_methods_with_the_cookie_need_the_csrf_token(scripted: ScriptedApp) -> None:
    login(scripted.client)
    missing = scripted.client.post("/api/conversations", json={})
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == "csrf_failed"
    wrong = scripted.client.post("/api/conversations", json={}, headers={CSRF_HEADER: "nope"})
    assert wrong.status_code == 403
    assert scripted.client.get("/api/conversations").json()["data"] == []  # nothing was made
    made = scripted.client.post(
        "/api/conversations", json={}, headers={CSRF_HEADER: csrf_of(scripted)}
    )
    assert made.status_code == 201, made.text
    assert len(scripted.client.get("/api/conversations").json()["data"]) == 1


def test_v1_accepts_the_cookie_with_the_csrf_token(scripted: ScriptedApp) -> None:
    login(scripted.client)
    body = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
    refused = scripted.client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"  # the OpenAI error shape on /v1
    answered = scripted.client.post(
        "/v1/chat/completions", json=body, headers={CSRF_HEADER: csrf_of(scripted)}
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["message"]["content"] == "Hello from the script."
    assert scripted.client.get("/v1/models").status_code == 200


def test_a_bearer_key_wins_over_the_cookie_and_needs_no_csrf(scripted: ScriptedApp) -> None:
    user = new_key(scripted)
    login(scripted.client)  # the admin's session
    me = scripted.client.get("/api/me", headers=scripted.auth(user["key"])).json()
    assert me["key_name"] == "user"
    made = scripted.client.post("/api/conversations", json={}, headers=scripted.auth(user["key"]))
    assert made.status_code == 201
    wrong = scripted.client.get("/api/me", headers=scripted.auth("ek-not-a-real-key-aaaaaaaaa"))
    assert wrong.status_code == 401  # a bad header is not rescued by the cookie


def test_admin_routes_check_the_sessions_key(scripted: ScriptedApp) -> None:
    user = new_key(scripted)
    login(scripted.client, user["key"])
    assert scripted.client.get("/api/keys").status_code == 403
    login(scripted.client)
    assert scripted.client.get("/api/keys").status_code == 200


# -- sign-out and the key's lifetime --------------------------------------------


def test_logout_needs_the_csrf_token_then_ends_the_session(scripted: ScriptedApp) -> None:
    login(scripted.client)
    session_id = scripted.client.cookies[SESSION_COOKIE]
    refused = scripted.client.post("/ui/logout", follow_redirects=False)
    assert refused.status_code == 403
    assert scripted.client.get("/api/me").status_code == 200
    done = scripted.client.post(
        "/ui/logout", headers={CSRF_HEADER: csrf_of(scripted)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/login"
    cookie = cookie_attributes(done)
    assert cookie[""].startswith(f"{SESSION_COOKIE}=") and cookie["max-age"] == "0"
    assert SESSION_COOKIE not in scripted.client.cookies
    scripted.client.cookies.set(SESSION_COOKIE, session_id)  # replaying the old cookie
    assert scripted.client.get("/api/me").status_code == 401


def test_logout_from_a_plain_form_takes_the_token_as_a_field(scripted: ScriptedApp) -> None:
    login(scripted.client)
    done = scripted.client.post(
        "/ui/logout", data={"csrf_token": csrf_of(scripted)}, follow_redirects=False
    )
    assert done.status_code == 303
    assert scripted.client.get("/api/me").status_code == 401


def test_revoking_the_key_ends_its_sessions(scripted: ScriptedApp) -> None:
    user = new_key(scripted)
    login(scripted.client, user["key"])
    assert scripted.client.get("/api/me").status_code == 200
    revoked = scripted.client.delete(f"/api/keys/{user['id']}", headers=scripted.auth())
    assert revoked.status_code == 200
    response = scripted.client.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "session_expired"
    assert login(scripted.client, user["key"]).status_code == 401


def test_an_expiring_key_ends_its_sessions(scripted: ScriptedApp) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    user = new_key(scripted, expires_at=soon.isoformat())
    login(scripted.client, user["key"])
    assert scripted.client.get("/api/me").status_code == 200
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    assert scripted.client.get("/api/me").status_code == 401
