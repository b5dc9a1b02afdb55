"""Browser fixtures: a real `enclave serve`, a mock upstream, the example HR API,
and one headless Debian chromium driven by Playwright's sync API.

The server serves the embedded models (streaming, Stop, grounded answers and the
example app run on the real tiny model) plus ``xss-bot``, an OpenAI-compatible
upstream (the mock) whose only answer is hostile Markdown, so the UI's rendering
is tested against HTML it must not execute.

Playwright cannot download its own browsers here, so it launches Debian's
``/usr/bin/chromium``, which ``make test`` installs. Without it the tests skip
on a developer's machine and fail in CI (``CI`` set), where it must be present.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from enclave.testing.mock_upstream import MockUpstream, running_mock_upstream
from tests.e2e.conftest import (
    ENCLAVE,
    EXAMPLE,
    Server,
    running_mock_hr_api,
    start_server,
    stop_server,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).parents[2]

ADMIN_KEY = "ek-browser-admin-key-0123456789abcdef"
HR_TOKEN = "browser-hr-token-0123456789"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Everything the UI must show as text and never run.
XSS_REPLY = (
    "Here is <script>window.__xss = 1</script> and "
    '<img src=x onerror="window.__xss = 2"> and **bold** text.'
)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make test installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


def server_config(upstream_port: int) -> str:
    """The default providers plus the mock upstream, and the example app's secret."""
    return f"""
runner:
  slots: 2
  queue_size: 8
apps:
  secret_env: [HR_TOKEN]
egress:
  allow: [127.0.0.1/32]  # the example's mock HR API, on loopback
providers:
  - name: local
    type: llamacpp
    models:
      - {{name: smollm2-135m, path: "builtin:smollm2"}}
  - name: local-embed
    type: sentence-transformers
    models:
      - {{name: all-minilm-l6-v2, path: "builtin:all-minilm-l6-v2", n_ctx: 256}}
  - name: mock
    type: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    location: test-upstream
    models: [xss-bot]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    # A small delay per piece, so the reply arrives as several stream chunks.
    with running_mock_upstream(models=("xss-bot",), reply=XSS_REPLY, delay=0.02) as mock:
        yield mock


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("enclave-browser")
    server = start_server(
        home, server_config(upstream.port), ENCLAVE_ADMIN_KEY=ADMIN_KEY, HR_TOKEN=HR_TOKEN
    )
    yield server
    stop_server(server.process)


def cli(server: Server, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "ENCLAVE_URL": server.url, "ENCLAVE_API_KEY": server.admin_key}
    return subprocess.run(
        [ENCLAVE, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def user_key(ui_server: Server) -> str:
    """A non-admin key in the default workspace."""
    with ui_server.http() as http:
        created = http.post("/api/keys", json={"name": "browser-user", "workspace": "default"})
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


@pytest.fixture(scope="module")
def hr_api() -> Iterator[str]:
    """The example's mock HR API; its base URL ends in ``/api``."""
    with running_mock_hr_api(HR_TOKEN) as url:
        yield url


def hr_vacancy_titles(hr_api: str) -> list[str]:
    answer = httpx.get(
        f"{hr_api}/vacancies", headers={"Authorization": f"Bearer {HR_TOKEN}"}, timeout=10
    )
    answer.raise_for_status()
    return [vacancy["title"] for vacancy in answer.json()]


@pytest.fixture(scope="module")
def hr_app(ui_server: Server, hr_api: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The example app applied (its tests passed) as ``hr-assistant``, calling the mock HR API."""
    created = cli(ui_server, "knowledge", "create", "hr-policies")
    assert created.returncode == 0, created.stderr
    added = cli(ui_server, "knowledge", "add", "hr-policies", str(EXAMPLE / "policies"))
    assert added.returncode == 0, added.stdout + added.stderr
    folder = tmp_path_factory.mktemp("app") / "hr-assistant"
    shutil.copytree(EXAMPLE, folder)
    manifest = yaml.safe_load((folder / "app.yaml").read_text())
    manifest["spec"]["apis"][0]["url"] = hr_api
    (folder / "app.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    # With its tests, so the app page has results to show.
    applied = cli(ui_server, "apply", "--test", "-f", str(folder), timeout=600)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return "hr-assistant"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    missing = browser_missing()
    if missing:
        pytest.fail(f"the browser tests cannot run: {missing}")
    from playwright.sync_api import expect, sync_playwright

    # The default of 5 s is short for a busy two-core CI machine; model answers
    # get their own, longer limits.
    expect.set_options(timeout=15_000)
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


class Problems:
    """What a page did that it must not: CSP violations, script errors, dialogs."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

        def dialog(d: object) -> None:
            self.dialogs.append(f"{d.type}: {d.message}")  # type: ignore[attr-defined]
            d.dismiss()  # type: ignore[attr-defined]

        page.on("dialog", dialog)

    def _console(self, message: object) -> None:
        text: str = message.text  # type: ignore[attr-defined]
        if message.type == "error" and "Content Security Policy" in text:  # type: ignore[attr-defined]
            self.console.append(text)

    def assert_none(self) -> None:
        assert self.console == [], f"CSP violations: {self.console}"
        assert self.page_errors == [], f"uncaught script errors: {self.page_errors}"
        assert self.dialogs == [], f"unexpected dialogs: {self.dialogs}"


def sign_in(page: Page, key: str, path: str = "/") -> None:
    """Open ``path``, get sent to the login page, sign in, and land back on ``path``."""
    from playwright.sync_api import expect

    page.goto(path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: urlsplit(url).path == urlsplit(path).path, timeout=30_000)


OpenPage = Callable[..., tuple["Page", Problems]]


@pytest.fixture
def signed_in(browser: Browser, ui_server: Server) -> Iterator[OpenPage]:
    """Open a signed-in page in a fresh context:
    ``page, problems = signed_in(key=None, viewport=DESKTOP, path="/")``."""
    contexts: list[BrowserContext] = []

    def open_page(
        key: str | None = None, viewport: dict[str, int] = DESKTOP, path: str = "/"
    ) -> tuple[Page, Problems]:
        context = browser.new_context(base_url=ui_server.url, viewport=viewport)  # type: ignore[arg-type]
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        problems = Problems()
        problems.watch(page)
        sign_in(page, key or ADMIN_KEY, path)
        return page, problems

    yield open_page
    for context in contexts:
        context.close()
