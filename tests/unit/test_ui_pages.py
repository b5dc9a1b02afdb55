"""The web UI's pages, in process: sessions, security headers, static files.

What the pages do in a browser is tested in ``tests/browser``; here are the
server's promises (a page needs a session, the CSP is on every page, admins
only on /admin) and static checks that keep the front end safe: no script
builds HTML from strings, and no template carries inline script or style.
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from enclave.ui import pages
from tests.conftest import ADMIN_KEY, ScriptedApp

UI = Path(pages.__file__).parent
STATIC_JS = UI / "static" / "js"
TEMPLATES = UI / "templates"
ROOT = Path(__file__).parents[2]
PAGES = ["/", "/knowledge", "/apps", "/apps/hr-assistant", "/admin"]


def sign_in(client: TestClient, key: str = ADMIN_KEY) -> None:
    response = client.post("/ui/login", data={"api_key": key}, follow_redirects=False)
    assert response.status_code == 303, response.text
    assert "enclave_session" in client.cookies


def user_key(scripted: ScriptedApp) -> str:
    created = scripted.client.post(
        "/api/keys", json={"name": "reader", "workspace": "default"}, headers=scripted.auth()
    )
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def meta(html: str, name: str) -> str | None:
    found = re.search(rf'<meta name="{name}" content="([^"]*)"', html)
    return found.group(1) if found else None


# -- sessions --------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_redirects_to_sign_in(scripted: ScriptedApp, path: str) -> None:
    response = scripted.client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next={path}"


def test_the_redirect_keeps_the_query(scripted: ScriptedApp) -> None:
    response = scripted.client.get("/?c=12&model=app/x", follow_redirects=False)
    assert response.headers["location"] == "/login?next=/%3Fc%3D12%26model%3Dapp/x"


def test_a_bearer_key_alone_does_not_open_a_page(scripted: ScriptedApp) -> None:
    response = scripted.client.get("/", headers=scripted.auth(), follow_redirects=False)
    assert response.status_code == 303


def test_the_login_page_asks_for_an_api_key(scripted: ScriptedApp) -> None:
    response = scripted.client.get("/login?next=/knowledge")
    assert response.status_code == 200
    html = response.text
    assert '<label for="api-key">API key</label>' in html
    assert 'id="api-key" name="api_key" type="password"' in html
    assert ">Sign in</button>" in html
    assert '<input type="hidden" name="next" value="/knowledge">' in html
    assert 'role="alert"' not in html
    assert 'aria-label="Main"' not in html  # no navigation before sign-in


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/", "/\\evil"])
def test_the_login_page_drops_a_next_that_leaves_the_site(
    scripted: ScriptedApp, target: str
) -> None:
    html = scripted.client.get("/login", params={"next": target}).text
    assert 'name="next"' not in html


def test_a_wrong_key_shows_the_error_as_an_alert(scripted: ScriptedApp) -> None:
    response = scripted.client.post(
        "/ui/login", data={"api_key": "ek-wrong-0000000000000000", "next": "/apps"}
    )
    assert response.status_code == 401
    assert re.search(r'<p class="alert" role="alert">[^<]+</p>', response.text)
    assert '<input type="hidden" name="next" value="/apps">' in response.text
    assert response.headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY


def test_a_signed_in_page_has_the_user_csrf_token_and_navigation(scripted: ScriptedApp) -> None:
    sign_in(scripted.client)
    response = scripted.client.get("/")
    assert response.status_code == 200
    html = response.text
    assert html.startswith('<!doctype html>\n<html lang="en">')
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    token = meta(html, "csrf-token")
    assert token and len(token) >= 32
    user = meta(html, "enclave-user")
    assert user is not None and "&#34;is_admin&#34;: true" in user
    assert '<nav class="main-nav" aria-label="Main">' in html
    for link in ("Chat", "Knowledge", "Apps", "Admin"):
        assert f">{link}</a>" in html
    assert '<script type="module" src="/static/js/chat.js"></script>' in html
    # The token on the page is the session's: an unsafe API call with it passes the CSRF check.
    created = scripted.client.post(
        "/api/conversations", json={"title": "t"}, headers={"X-CSRF-Token": token}
    )
    assert created.status_code == 201, created.text


def test_signing_in_again_goes_straight_to_next(scripted: ScriptedApp) -> None:
    sign_in(scripted.client)
    response = scripted.client.get("/login?next=/apps", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (303, "/apps")


def test_a_page_shows_the_current_key_and_escapes_names(scripted: ScriptedApp) -> None:
    created = scripted.client.post(
        "/api/keys", json={"name": "<b>eve</b>", "workspace": "default"}, headers=scripted.auth()
    ).json()
    sign_in(scripted.client, created["key"])
    html = scripted.client.get("/apps/<x>").text
    assert "<b>eve</b>" not in html and "&lt;b&gt;eve&lt;/b&gt;" in html
    assert "<h1><x></h1>" not in html and "<h1>&lt;x&gt;</h1>" in html


# -- security headers -----------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_every_page_carries_the_csp_and_is_not_cached(scripted: ScriptedApp, path: str) -> None:
    sign_in(scripted.client)
    response = scripted.client.get(path)
    assert response.status_code == 200
    headers = response.headers
    assert headers["content-security-policy"] == (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"].startswith("text/html")


def test_the_login_page_and_redirects_carry_the_csp(scripted: ScriptedApp) -> None:
    for response in (
        scripted.client.get("/login"),
        scripted.client.get("/", follow_redirects=False),
    ):
        assert response.headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY


def test_admin_is_for_admins_only(scripted: ScriptedApp) -> None:
    sign_in(scripted.client, user_key(scripted))
    response = scripted.client.get("/admin")
    assert response.status_code == 403
    assert "<h1>Admins only</h1>" in response.text
    assert ">Admin</a>" not in response.text  # nor is it in the navigation
    assert scripted.client.get("/").status_code == 200


def test_a_revoked_key_ends_its_page_session(scripted: ScriptedApp) -> None:
    created = scripted.client.post(
        "/api/keys", json={"name": "short"}, headers=scripted.auth()
    ).json()
    sign_in(scripted.client, created["key"])
    assert scripted.client.get("/knowledge").status_code == 200
    scripted.client.delete(f"/api/keys/{created['id']}", headers=scripted.auth())
    response = scripted.client.get("/knowledge", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (
        303,
        "/login?next=/knowledge",
    )


# -- static files -----------------------------------------------------------------------


def test_static_files_are_served_with_their_types(scripted: ScriptedApp) -> None:
    script = scripted.client.get("/static/js/chat.js")
    assert script.status_code == 200
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }
    assert script.headers["x-content-type-options"] == "nosniff"
    style = scripted.client.get("/static/css/app.css")
    assert style.headers["content-type"].startswith("text/css")
    assert scripted.client.get("/static/js/missing.js").status_code == 404
    assert scripted.client.get("/static/../pages.py").status_code == 404


def test_every_module_import_and_page_script_exists() -> None:
    for module in STATIC_JS.glob("*.js"):
        for imported in re.findall(
            r'^import .* from "\./([\w-]+\.js)";$', module.read_text(), re.M
        ):
            assert (STATIC_JS / imported).is_file(), (module.name, imported)
    for script in re.findall(r'script="([\w-]+\.js)"', (UI / "pages.py").read_text()):
        assert (STATIC_JS / script).is_file(), script


def test_the_wheel_ships_every_ui_file() -> None:
    """Every template and static file matches a package-data pattern in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["enclave"]
    package = UI.parent
    for path in [*TEMPLATES.rglob("*"), *(UI / "static").rglob("*")]:
        if path.is_file():
            relative = path.relative_to(package).as_posix()
            assert any(fnmatch(relative, pattern) for pattern in patterns), relative


# -- static safety checks -------------------------------------------------------------------

FORBIDDEN_JS = [
    "innerHTML",
    "outerHTML",
    "insertAdjacentHTML",
    "document.write",
    "eval(",
    "new Function",
    'setTimeout("',
    "srcdoc",
]


def test_no_script_builds_html_from_strings() -> None:
    modules = list(STATIC_JS.glob("*.js"))
    assert {"api.js", "sse.js", "markdown.js", "dom.js", "chat.js"} <= {m.name for m in modules}
    for module in modules:
        source = module.read_text()
        for needle in FORBIDDEN_JS:
            assert needle not in source, f"{module.name} uses {needle}"


def test_templates_have_no_inline_script_or_style() -> None:
    templates = list(TEMPLATES.glob("*.html"))
    assert templates
    for template in templates:
        source = template.read_text()
        assert not re.search(r"\sstyle\s*=", source, re.I), template.name
        assert "<style" not in source.lower(), template.name
        assert not re.search(r"\son[a-z]+\s*=", source, re.I), template.name  # onclick= etc.
        assert "javascript:" not in source.lower(), template.name
        for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", source, re.I | re.S):
            attributes, body = match.groups()
            assert 'src="' in attributes and not body.strip(), template.name


def test_the_stylesheet_loads_nothing_from_elsewhere() -> None:
    css = (UI / "static" / "css" / "app.css").read_text()
    assert "@import" not in css
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", css)
