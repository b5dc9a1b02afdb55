"""No route except the health checks and the sign-in answers without a valid key.

The test walks the app's route table, so a route added later without
authentication fails here. API routes answer 401; the web UI's pages refuse
by sending the browser to the sign-in page (303 to ``/login``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from enclave.api import ui_auth
from enclave.api.health import PUBLIC_PATHS
from enclave.app import create_app
from enclave.providers.registry import ModelRegistry
from enclave.settings import Settings
from enclave.testing.scripted import ScriptedProvider
from tests.conftest import ScriptedApp

# The health checks, the sign-in form post, and the web UI's sign-in page.
PUBLIC = PUBLIC_PATHS | ui_auth.PUBLIC_PATHS | {"/login"}


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def api_routes(routes: list[Any]) -> list[Route]:
    """Flatten the route table, including routers mounted with include_router.

    Plain Starlette routes (the gateway's hot-path endpoints) count too.
    """
    found: list[Route] = []
    for route in routes:
        if isinstance(route, (APIRoute, Route)):
            found.append(route)
        elif hasattr(route, "original_router"):  # FastAPI >= 0.16x wraps included routers
            found.extend(api_routes(route.original_router.routes))
        elif hasattr(route, "routes"):
            found.extend(api_routes(route.routes))
    return found


def routes(scripted: ScriptedApp) -> list[tuple[str, str]]:
    app = scripted.client.app
    return [
        (method, concrete(route.path))
        for route in api_routes(app.routes)  # type: ignore[attr-defined]
        for method in sorted((route.methods or set()) - {"HEAD"})
    ]


def test_the_route_table_is_not_empty(scripted: ScriptedApp) -> None:
    paths = {path for _, path in routes(scripted)}
    assert {"/v1/chat/completions", "/v1/models", "/metrics", "/api/keys"} <= paths


def is_page(method: str, path: str) -> bool:
    return method == "GET" and not path.startswith(("/api/", "/v1/", "/ui/", "/metrics"))


def assert_refused(method: str, path: str, response: Any) -> None:
    if is_page(method, path):
        assert response.status_code == 303, (method, path, response.text)
        assert response.headers["location"].startswith("/login"), (method, path)
        return
    assert response.status_code == 401, (method, path, response.text)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_every_non_public_route_refuses_requests_without_a_key(scripted: ScriptedApp) -> None:
    for method, path in routes(scripted):
        if path in PUBLIC:
            continue
        response = scripted.client.request(method, path, json={}, follow_redirects=False)
        assert_refused(method, path, response)


def test_every_non_public_route_refuses_a_wrong_key_or_session(scripted: ScriptedApp) -> None:
    wrong_key = scripted.auth("ek-not-a-real-key-aaaaaaaaaaaa")
    for method, path in routes(scripted):
        if path in PUBLIC:
            continue
        response = scripted.client.request(
            method, path, json={}, headers=wrong_key, follow_redirects=False
        )
        assert_refused(method, path, response)
        scripted.client.cookies.set("enclave_session", "not-a-session")
        response = scripted.client.request(method, path, json={}, follow_redirects=False)
        scripted.client.cookies.clear()
        if path == "/ui/logout":  # an ended session is simply forgotten
            assert response.status_code == 303, response.text
            continue
        assert_refused(method, path, response)


def test_health_checks_are_open(scripted: ScriptedApp) -> None:
    assert scripted.client.get("/healthz").status_code == 200
    ready = scripted.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


def test_revoked_and_expired_keys_are_refused(scripted: ScriptedApp) -> None:
    created = scripted.client.post(
        "/api/keys", json={"name": "temp"}, headers=scripted.auth()
    ).json()
    assert (
        scripted.client.get("/v1/models", headers=scripted.auth(created["key"])).status_code == 200
    )
    scripted.client.delete(f"/api/keys/{created['id']}", headers=scripted.auth())
    refused = scripted.client.get("/v1/models", headers=scripted.auth(created["key"]))
    assert refused.status_code == 401

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = scripted.client.post(
        "/api/keys", json={"name": "old", "expires_at": past}, headers=scripted.auth()
    ).json()
    response = scripted.client.get("/v1/models", headers=scripted.auth(expired["key"]))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "expired_api_key"


def test_admin_routes_refuse_ordinary_keys(scripted: ScriptedApp) -> None:
    user = scripted.client.post("/api/keys", json={"name": "user"}, headers=scripted.auth()).json()
    for method, path in [("GET", "/api/keys"), ("POST", "/api/keys"), ("GET", "/metrics")]:
        response = scripted.client.request(
            method, path, json={}, headers=scripted.auth(user["key"])
        )
        assert response.status_code == 403, path
    assert scripted.client.get("/v1/models", headers=scripted.auth(user["key"])).status_code == 200


def test_metrics_accept_the_metrics_token(scripted: ScriptedApp) -> None:
    scripted.client.app.state.services.metrics_token = "metrics-reader-token"  # type: ignore[attr-defined]
    response = scripted.client.get("/metrics", headers=scripted.auth("metrics-reader-token"))
    assert response.status_code == 200
    assert "enclave_http_requests_total" in response.text


def test_key_timestamps_are_utc_and_a_naive_expiry_means_utc(scripted: ScriptedApp) -> None:
    naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None, microsecond=0)
    created = scripted.client.post(
        "/api/keys", json={"name": "tz", "expires_at": naive.isoformat()}, headers=scripted.auth()
    ).json()
    listed = scripted.client.get("/api/keys", headers=scripted.auth()).json()
    row = next(key for key in listed if key["id"] == created["id"])
    for stamp in (row["created_at"], row["expires_at"], created["created_at"]):
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), stamp
    assert datetime.fromisoformat(row["expires_at"]) == naive.replace(tzinfo=UTC)


def test_a_revoked_admin_key_from_the_environment_stays_revoked(
    settings: Settings, scripted: ScriptedApp
) -> None:
    listed = scripted.client.get("/api/keys", headers=scripted.auth()).json()
    env_key = next(key for key in listed if key["name"] == "admin (ENCLAVE_ADMIN_KEY)")
    other = scripted.client.post(
        "/api/keys", json={"name": "ops", "admin": True}, headers=scripted.auth()
    ).json()
    scripted.client.delete(f"/api/keys/{env_key['id']}", headers=scripted.auth(other["key"]))
    scripted.client.close()  # restart on the same database with the same variable
    app = create_app(settings, registry=ModelRegistry([ScriptedProvider()], "scripted"))
    with TestClient(app) as client:
        assert client.get("/v1/models", headers=scripted.auth()).status_code == 401
        assert client.get("/v1/models", headers=scripted.auth(other["key"])).status_code == 200
