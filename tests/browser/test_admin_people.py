"""The admin page's People and Replicas sections in chromium, against real servers.

Two ``enclave serve`` replicas share a Postgres and a Redis (the scale tests'
:class:`~tests.scale.cluster.Cluster`, without haproxy in the way of the browser)
and sign people in with ``oidc-provider-mock``, with
``identity.self_registration`` off. Carol signs in and waits for approval; Erin,
in the admins' group, is let in at once. The admin, with the break-glass key,
then sees both in **People** with their groups and roles, enables Carol,
disables her (after the row asks) and enables her again, each time checked
through the API; **Replicas** lists both replicas and marks the one that served
the page, on either replica. A single server without an identity provider says
so in both sections instead of showing empty tables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser.conftest import DESKTOP, ROOT, Problems, browser_missing

_missing = browser_missing()
if _missing and not os.environ.get("CI"):
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from oidc_provider_mock import run_server_in_thread  # noqa: E402
from playwright.sync_api import Browser, Locator, Page, expect  # noqa: E402

from enclave.testing.mock_upstream import running_mock_upstream  # noqa: E402
from tests.e2e.conftest import start_server, stop_server  # noqa: E402
from tests.scale.cluster import ADMIN_KEY, Cluster, ClusterOptions, missing_binaries  # noqa: E402

pytestmark = [pytest.mark.browser]

SHOTS = ROOT / "build" / "screenshots"
OIDC_SECRET = "the-client-secret"


class IdentityCluster(Cluster):
    """Replicas that sign people in with the provider at ``issuer``."""

    def __init__(self, issuer: str) -> None:
        options = ClusterOptions(
            replicas=2, embeddings=False, planner=False, hr_api=False, key_requests_per_minute=None
        )
        super().__init__(options)  # in a short /tmp folder: Postgres's socket lives there
        self.issuer = issuer

    def start_haproxy(self, members: object) -> None:
        """No load balancer: the browser talks to each replica by its own address."""

    def _config(self) -> str:
        return super()._config() + (
            "identity:\n"
            f"  oidc: {{issuer: '{self.issuer}', client_id: enclave,"
            " client_secret: 'env:OIDC_SECRET', display_name: Bank Login}\n"
            "  self_registration: false\n"
            "  admins: [group:ai-platform]\n"
            "  workspaces:\n"
            "    monetary-policy: {members: [group:mpd], builders: [group:mpd-ai]}\n"
        )

    def environment(self, home: Path) -> dict[str, str]:
        env = super().environment(home)
        env["OIDC_SECRET"] = OIDC_SECRET
        for replica in self.replicas:  # the provider sends each browser back to its replica
            if replica.home == home:
                env["ENCLAVE_PUBLIC_URL"] = replica.url
        return env


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with run_server_in_thread() as server:
        url = f"http://localhost:{server.server_port}"
        people = {
            "carol": {"name": "Carol Builder", "email": "carol@bank.test", "groups": ["mpd-ai"]},
            "erin": {"name": "Erin Admin", "email": "erin@bank.test", "groups": ["ai-platform"]},
        }
        for sub, claims in people.items():
            httpx.put(f"{url}/users/{sub}", json=claims).raise_for_status()
        yield url


@pytest.fixture(scope="module")
def cluster(provider: str) -> Iterator[Cluster]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (apt-get install redis-server haproxy)")
    with IdentityCluster(provider) as running:
        yield running


def sign_in_with_provider(browser: Browser, url: str, sub: str) -> Page:
    """Sign ``sub`` in at ``url`` through the provider's form; the page where it ends."""
    context = browser.new_context(base_url=url, viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto("/login")
    page.get_by_role("link", name="Sign in with Bank Login").click()
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(re.compile(f"^{re.escape(url)}/"), timeout=30_000)
    return page


def sign_in_with_key(browser: Browser, url: str, key: str) -> tuple[Page, Problems]:
    context = browser.new_context(base_url=url, viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems = Problems()
    problems.watch(page)
    page.goto("/admin")
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(f"{url}/admin", timeout=30_000)
    return page, problems


def user_named(url: str, name: str) -> dict[str, object]:
    answer = httpx.get(
        f"{url}/api/admin/users", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    )
    answer.raise_for_status()
    (user,) = [user for user in answer.json()["data"] if user["name"] == name]
    return dict(user)


def person(people: Locator, name: str) -> Locator:
    return people.get_by_role("row").filter(has_text=name)


def test_people_are_listed_and_enabled_and_disabled(browser: Browser, cluster: Cluster) -> None:
    first = cluster.replicas[0].url
    waiting = sign_in_with_provider(browser, first, "carol")
    expect(waiting.get_by_role("alert")).to_contain_text("waits for an admin")
    waiting.context.close()
    admin = sign_in_with_provider(browser, first, "erin")
    expect(admin.get_by_role("banner").get_by_text("Erin Admin")).to_be_visible()
    admin.context.close()

    page, problems = sign_in_with_key(browser, first, ADMIN_KEY)
    people = page.get_by_role("region", name="People").get_by_role("table", name="People")
    carol, erin = person(people, "Carol Builder"), person(people, "Erin Admin")
    for cell in ("carol@bank.test", "mpd-ai", "no", "monetary-policy: builder", "disabled"):
        expect(carol.get_by_role("cell", name=cell, exact=True)).to_be_visible()
    for cell in ("erin@bank.test", "ai-platform", "yes", "monetary-policy: admin", "active"):
        expect(erin.get_by_role("cell", name=cell, exact=True)).to_be_visible()
    status = page.get_by_role("region", name="People").get_by_role("status")

    # Carol waited for approval: enabling her lets her in.
    carol.get_by_role("button", name="Enable Carol Builder").click()
    expect(status).to_have_text("Carol Builder enabled.")
    expect(carol.get_by_role("cell", name="active", exact=True)).to_be_visible()
    assert user_named(first, "Carol Builder")["disabled"] is False

    # Disabling asks first, in the row; Keep leaves her as she was.
    carol.get_by_role("button", name="Disable Carol Builder").click()
    expect(carol).to_contain_text("Disable Carol Builder?")
    expect(carol.get_by_role("button", name="Keep")).to_be_focused()
    carol.get_by_role("button", name="Keep").click()
    expect(carol.get_by_role("button", name="Disable Carol Builder")).to_be_visible()
    assert user_named(first, "Carol Builder")["disabled"] is False

    carol.get_by_role("button", name="Disable Carol Builder").click()
    carol.get_by_role("button", name="Yes, disable").click()
    expect(status).to_have_text("Carol Builder disabled.")
    expect(carol.get_by_role("cell", name="disabled", exact=True)).to_be_visible()
    assert user_named(first, "Carol Builder")["disabled"] is True
    # Erin was not touched.
    assert user_named(first, "Erin Admin")["disabled"] is False
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.mouse.move(0, 0)  # no hover on a button in the picture
    page.get_by_role("region", name="People").screenshot(
        path=str(SHOTS / "admin-people.png"), animations="disabled"
    )

    carol.get_by_role("button", name="Enable Carol Builder").click()
    expect(status).to_have_text("Carol Builder enabled.")
    expect(carol.get_by_role("cell", name="active", exact=True)).to_be_visible()
    assert user_named(first, "Carol Builder")["disabled"] is False

    problems.assert_none()
    page.context.close()


def test_replicas_show_which_one_served_the_page(browser: Browser, cluster: Cluster) -> None:
    first, second = cluster.replicas
    page, problems = sign_in_with_key(browser, first.url, ADMIN_KEY)

    def check(served: str, other: str) -> None:
        table = page.get_by_role("region", name="Replicas").get_by_role("table", name="Replicas")
        expect(table.get_by_role("row")).to_have_count(3)  # the header and two replicas
        this = table.get_by_role("row").filter(has_text=served)
        that = table.get_by_role("row").filter(has_text=other)
        expect(this).to_contain_text("(this replica)")
        expect(that).not_to_contain_text("this replica")
        for row in (this, that):
            expect(row.get_by_role("cell", name="live", exact=True)).to_be_visible()

    check(first.replica_id, second.replica_id)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("region", name="Replicas").screenshot(
        path=str(SHOTS / "admin-replicas.png"), animations="disabled"
    )
    # The session lives in the shared database: the other replica serves the same admin.
    page.goto(f"{second.url}/admin")
    check(second.replica_id, first.replica_id)
    problems.assert_none()
    page.context.close()


def test_a_single_server_without_an_identity_provider_says_so(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with running_mock_upstream(models=("echo",)) as upstream:
        config = f"""
default_model: echo
providers:
  - name: mock
    type: openai
    base_url: http://127.0.0.1:{upstream.port}/v1
    models: [echo]
"""
        key = "ek-browser-single-admin-key-0123456789"
        server = start_server(tmp_path_factory.mktemp("single"), config, ENCLAVE_ADMIN_KEY=key)
        try:
            page, problems = sign_in_with_key(browser, server.url, key)
            people = page.get_by_role("region", name="People")
            expect(people.get_by_role("cell")).to_have_text(
                "No one has signed in with the identity provider yet. See docs/identity.md."
            )
            replicas = page.get_by_role("region", name="Replicas")
            expect(replicas.get_by_role("cell")).to_contain_text("A single server")
            problems.assert_none()
            page.context.close()
        finally:
            stop_server(server.process)
