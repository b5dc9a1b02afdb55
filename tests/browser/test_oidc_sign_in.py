"""Signing in with the identity provider in Chromium, against `enclave serve`.

The provider (``oidc-provider-mock``) runs in this process on ``localhost``;
Enclave runs in a subprocess on ``127.0.0.1``: two different sites, as an
organisation's provider and Enclave are. That matters: the browser comes back
from the provider with a cross-site navigation, and the session cookie is
``SameSite=Strict``, so this test proves a real browser ends up signed in, on
the page it asked for, and shows the person's name and role.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from oidc_provider_mock import run_server_in_thread

from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from tests.browser.conftest import DESKTOP, Problems
from tests.conftest import without_enclave_variables
from tests.e2e.conftest import ENCLAVE, free_port, stop_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser

ADMIN_KEY = "ek-browser-oidc-admin-key-0123456789"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        url = f"http://localhost:{server.server_port}"
        httpx.put(f"{url}/users/carol", json={"name": "Carol Builder", "groups": ["mpd-ai"]})
        httpx.put(f"{url}/users/bob", json={"name": "Bob Member", "groups": ["mpd"]})
        httpx.put(f"{url}/users/dave", json={"name": "Dave", "groups": ["mpd", "hr-partners"]})
        yield url


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with running_mock_upstream(models=("echo",)) as mock:
        yield mock


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, provider: str, upstream: MockUpstream
) -> Iterator[str]:
    """`enclave serve` with only the mock upstream (no embedded model to load)."""
    home = tmp_path_factory.mktemp("enclave-oidc")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = home / "enclave.yaml"
    config.write_text(f"""
public_url: {url}
default_model: echo
providers:
  - name: mock
    type: openai
    base_url: http://127.0.0.1:{upstream.port}/v1
    location: test-upstream
    models: [echo]
identity:
  oidc:
    issuer: {provider}
    client_id: enclave
    client_secret: env:OIDC_SECRET
    display_name: Bank Login
  admins: [group:ai-platform]
  workspaces:
    monetary-policy: {{members: [group:mpd], builders: [group:mpd-ai]}}
    hr: {{builders: [group:hr-partners]}}
""")
    env = {
        **without_enclave_variables(dict(os.environ)),
        "ENCLAVE_HOME": str(home),
        "ENCLAVE_ADMIN_KEY": ADMIN_KEY,
        "OIDC_SECRET": "the-client-secret",
    }
    log = home / "server.log"
    process = subprocess.Popen(
        [ENCLAVE, "serve", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"enclave serve exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"enclave serve was not ready in time:\n{log.read_text()}")
        time.sleep(0.25)
    yield url
    stop_server(process)


def test_a_person_signs_in_with_the_provider_and_sees_their_name_and_role(
    browser: Browser, server: str, provider: str
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(base_url=server, viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    try:
        page.goto("/knowledge")
        expect(page).to_have_url(re.compile(r"/login\?next=/knowledge"))
        page.get_by_role("link", name="Sign in with Bank Login").click()

        # The provider's own page, on another site.
        page.wait_for_url(re.compile(re.escape(provider) + r"/oauth2/authorize\?"))
        page.get_by_placeholder("sub").fill("carol")
        page.get_by_role("button", name="Authorize").click()

        # Back at Enclave, signed in, on the page asked for.
        page.wait_for_url(f"{server}/knowledge", timeout=30_000)
        header = page.get_by_role("banner")
        expect(header.get_by_text("Carol Builder")).to_be_visible()
        expect(header.get_by_text("builder", exact=True)).to_be_visible()
        expect(header.get_by_text("monetary-policy")).to_be_visible()
        expect(page.get_by_role("link", name="Admin")).to_have_count(0)
        session = [c for c in context.cookies() if c.get("name") == "enclave_session"]
        assert session and session[0].get("httpOnly") and session[0].get("sameSite") == "Strict"

        # The page's own API calls carry the session.
        who = page.evaluate("fetch('/api/me').then(r => r.json())")
        assert who["role"] == "builder" and who["user_name"] == "Carol Builder"

        # Sign-out ends the session here and goes to the provider's logout.
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(re.escape(provider) + r"/oauth2/end_session"))
        page.goto(f"{server}/knowledge")
        expect(page).to_have_url(re.compile(r"/login\?next=/knowledge"))
        problems.assert_none()
    finally:
        context.close()


def test_a_member_signed_in_with_the_provider_cannot_reach_the_admin_page(
    browser: Browser, server: str, provider: str
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(base_url=server, viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_role("link", name="Sign in with Bank Login").click()
        page.get_by_placeholder("sub").fill("bob")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{server}/", timeout=30_000)
        expect(page.get_by_role("banner").get_by_text("member", exact=True)).to_be_visible()
        response = page.goto("/admin")
        assert response is not None and response.status == 403
    finally:
        context.close()


def test_a_person_in_two_workspaces_switches_in_the_header(
    browser: Browser, server: str, provider: str
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(base_url=server, viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    try:
        page.goto("/login")
        page.get_by_role("link", name="Sign in with Bank Login").click()
        page.get_by_placeholder("sub").fill("dave")
        page.get_by_role("button", name="Authorize").click()
        page.wait_for_url(f"{server}/", timeout=30_000)
        header = page.get_by_role("banner")
        expect(header.get_by_text("member", exact=True)).to_be_visible()
        header.get_by_label("Workspace").select_option("hr")
        header.get_by_role("button", name="Switch").click()
        expect(header.get_by_text("builder", exact=True)).to_be_visible()
        expect(header.get_by_label("Workspace")).to_have_value("hr")
        problems.assert_none()
    finally:
        context.close()


def test_the_api_key_form_still_signs_in(browser: Browser, server: str) -> None:
    """Break-glass: the admin key works on the same page as the provider's button."""
    from playwright.sync_api import expect

    context = browser.new_context(base_url=server, viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    try:
        page.goto("/login")
        page.get_by_label("API key", exact=True).fill(ADMIN_KEY)
        page.get_by_role("button", name="Sign in", exact=True).click()
        page.wait_for_url(f"{server}/")
        expect(page.get_by_role("banner").get_by_text("admin", exact=True)).to_be_visible()
    finally:
        context.close()
