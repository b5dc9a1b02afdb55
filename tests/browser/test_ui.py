"""The Web UI in a real headless chromium against a real ``enclave serve``.

Each test signs in through the login form in a fresh browser context and
drives the pages by their accessible names (the UI contract): the cookie
flags, streaming and Stop on the embedded model, an upload that gets indexed
and a cited answer, a confirmed app action that reaches the example's HR API,
the admin gate, hostile model output shown as text, and a phone-width layout.
Every wait is bounded. The tests save screenshots in ``build/screenshots/``
(ignored by git, so ``make test`` leaves the tree clean); ``make screenshots``
copies them over the ones ``docs/ui.md`` shows.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import (
    PHONE,
    ROOT,
    XSS_REPLY,
    OpenPage,
    browser_missing,
    hr_vacancy_titles,
)

_missing = browser_missing()
if _missing and not os.environ.get("CI"):
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, expect  # noqa: E402

from tests.e2e.conftest import Server  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.browser]

ANSWER_S = 120  # the longest wait for a model's answer
ANSWER_MS = ANSWER_S * 1000

SHOTS = ROOT / "build" / "screenshots"
# File stem -> caption, as docs/ui.md shows them (docs/ui/<stem>.png).
SCREENSHOTS = {
    "login": "Sign in with an API key",
    "chat": "Chat with a cited answer",
    "knowledge": "Knowledge: uploads, documents and search",
    "apps": "The app store",
    "app": "An app's detail page with its YAML and test results",
    "admin": "Admin: providers, keys, usage and the audit log",
}

LEAVE = """# Leave policy

## Parental leave

Employees receive 480 days of parental leave per child. The days can be shared
between both parents.

## Annual leave

Every employee gets 25 days of annual leave per year.
"""
CANTEEN = "The canteen serves lunch from 11:30 to 13:30 on weekdays.\n"


# ------------------------------------------------------------------ helpers
def shoot(page: Page, name: str) -> None:
    assert name in SCREENSHOTS
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


def messages(page: Page) -> Locator:
    return page.get_by_role("log", name="Messages")


def last_assistant(page: Page) -> Locator:
    return messages(page).locator("article.message.assistant").last


def new_chat(page: Page, model: str | None = None) -> None:
    page.get_by_role("button", name="New chat").click()
    expect(messages(page).locator("article.message")).to_have_count(0)
    if model is not None:
        page.get_by_label("Model", exact=True).select_option(model)


def send(page: Page, text: str) -> Locator:
    """Send a message; return the assistant message that answers it."""
    before = messages(page).locator("article.message.assistant").count()
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_role("button", name="Send").click()
    expect(messages(page).locator("article.message.user").last).to_contain_text(text)
    expect(messages(page).locator("article.message.assistant")).to_have_count(before + 1)
    return last_assistant(page)


# The text a message shows, without its header (who wrote it, which model).
SHOWN_TEXT = """(article) => {
    const copy = article.cloneNode(true);
    copy.querySelectorAll('header').forEach((meta) => meta.remove());
    return copy.textContent.trim();
}"""


def shown_text(message: Locator) -> str:
    return str(message.evaluate(SHOWN_TEXT))


def wait_done(message: Locator, timeout_ms: int = ANSWER_MS) -> None:
    expect(message).not_to_have_attribute("aria-busy", "true", timeout=timeout_ms)


def wait_streaming_with_text(page: Page, timeout_ms: int = ANSWER_MS) -> str:
    """Wait until the last assistant message is still busy and already shows text."""
    handle = page.wait_for_function(
        f"""() => {{
            const all = document.querySelectorAll('[role=log] article.message.assistant');
            const last = all[all.length - 1];
            if (!last || last.getAttribute('aria-busy') !== 'true') return null;
            const text = ({SHOWN_TEXT})(last);
            return text.length > 0 ? text : null;
        }}""",
        timeout=timeout_ms,
        polling=50,
    )
    return str(handle.json_value())


def conversations(page: Page) -> list[dict[str, Any]]:
    answer = page.request.get("/api/conversations")
    assert answer.ok, answer.text()
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def latest_conversation(page: Page) -> dict[str, Any]:
    newest = conversations(page)[0]
    answer = page.request.get(f"/api/conversations/{newest['id']}")
    assert answer.ok, answer.text()
    conversation: dict[str, Any] = answer.json()
    return conversation


def box(locator: Locator) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not displayed"
    return {side: float(found[side]) for side in ("x", "y", "width", "height")}


def no_horizontal_scroll(page: Page) -> None:
    sizes = page.evaluate("() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert sizes[0] <= sizes[1], f"{page.url}: content {sizes[0]} px wide in a {sizes[1]} px page"


# -------------------------------------------------------------------- tests
def test_sign_in_sets_a_strict_http_only_session_cookie(
    browser: Browser, ui_server: Server
) -> None:
    context = browser.new_context(base_url=ui_server.url, viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        first = page.goto("/knowledge")
        assert first is not None
        expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)knowledge$"))
        headers = first.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert page.locator("html").get_attribute("lang") == "en"
        key = page.get_by_label("API key", exact=True)
        expect(key).to_have_attribute("type", "password")
        shoot(page, "login")

        key.fill("ek-not-a-real-key-0123456789")
        with page.expect_response(lambda r: r.url.endswith("/ui/login")) as wrong:
            page.get_by_role("button", name="Sign in").click()
        assert wrong.value.status == 401
        expect(page.get_by_role("alert")).to_be_visible()
        assert not [c for c in context.cookies() if c["name"] == "enclave_session"]

        page.get_by_label("API key", exact=True).fill(ui_server.admin_key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/knowledge$"))
        [cookie] = [c for c in context.cookies() if c["name"] == "enclave_session"]
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/"
        assert len(cookie["value"]) >= 40
        # Scripts cannot read it.
        assert "enclave_session" not in page.evaluate("document.cookie")
        nav = page.get_by_role("navigation", name="Main")
        for link in ("Chat", "Knowledge", "Apps", "Admin"):
            expect(nav.get_by_role("link", name=link, exact=True)).to_be_visible()

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r"/login"))
        page.goto("/")
        expect(page).to_have_url(re.compile(r"/login\?next="))
        # The old cookie is dead on the server too.
        stale = httpx.get(
            f"{ui_server.url}/api/me", cookies={"enclave_session": cookie["value"]}, timeout=10
        )
        assert stale.status_code == 401
    finally:
        context.close()


def test_a_chat_streams_tokens_and_stop_keeps_the_partial_answer(signed_in: OpenPage) -> None:
    page, problems = signed_in()
    # Only models that chat are offered: the embedding model would answer with an error.
    offered = page.get_by_label("Model", exact=True).locator("option")
    expect(offered.filter(has_text="smollm2-135m")).to_have_count(1)
    assert "all-minilm-l6-v2" not in offered.all_inner_texts()
    new_chat(page, "smollm2-135m")
    message = send(page, "Tell me a very long story about a dragon who learns to bake bread.")
    first = wait_streaming_with_text(page)
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    # More text arrives while the message is still busy: it streams.
    grown = page.wait_for_function(
        f"""(first) => {{
            const all = document.querySelectorAll('[role=log] article.message.assistant');
            const last = all[all.length - 1];
            return last.getAttribute('aria-busy') === 'true'
                && ({SHOWN_TEXT})(last).length > first.length;
        }}""",
        arg=first,
        timeout=ANSWER_MS,
        polling=50,
    )
    assert grown.json_value()

    page.get_by_role("button", name="Stop").click()
    expect(message).to_contain_text("Stopped", timeout=10_000)
    wait_done(message, 10_000)
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    partial = shown_text(message)
    assert len(partial.replace("Stopped", "").strip()) > len(first)
    time.sleep(1.0)
    assert shown_text(message) == partial, "text kept arriving after Stop"

    # The server kept the partial answer, marked cancelled.
    deadline = time.monotonic() + 15
    while True:
        stored = latest_conversation(page)["messages"]
        if stored and stored[-1]["role"] == "assistant":
            break
        assert time.monotonic() < deadline, f"no assistant message stored: {stored}"
        time.sleep(0.2)
    assert stored[-2]["role"] == "user"
    assert stored[-1]["extra"].get("cancelled") is True
    assert stored[-1]["content"].strip()

    problems.assert_none()


def test_an_uploaded_document_is_indexed_searched_and_cited(
    signed_in: OpenPage, tmp_path: Path
) -> None:
    page, problems = signed_in(path="/knowledge")
    page.get_by_label("New knowledge base name", exact=True).fill("ui-handbook")
    page.get_by_role("button", name="Create").click()
    base = page.get_by_role("link", name="ui-handbook", exact=True).or_(
        page.get_by_role("button", name="ui-handbook", exact=True)
    )
    expect(base.first).to_be_visible()
    base.first.click()
    zone = page.get_by_role("region", name="Upload documents")
    expect(zone).to_be_visible()
    # "Choose files" once: the label is the control, the native input (which would
    # say "Choose Files" again) is visually hidden.
    expect(zone.get_by_text("Choose files", exact=True)).to_be_visible()
    native = box(zone.locator("#choose-files"))
    # No model transcribes here, so the audio transcript control is not offered.
    expect(zone.get_by_text("Add audio transcript", exact=True)).to_be_hidden()
    assert native["width"] <= 1 and native["height"] <= 1, native

    leave = tmp_path / "leave.md"
    leave.write_text(LEAVE)
    zone.get_by_label("Choose files", exact=True).set_input_files(str(leave))
    # A second file by drag and drop.
    transfer = page.evaluate_handle(
        """(text) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], 'canteen.txt', {type: 'text/plain'}));
            return dt;
        }""",
        CANTEEN,
    )
    zone.dispatch_event("dragenter", {"dataTransfer": transfer})
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    zone.dispatch_event("drop", {"dataTransfer": transfer})

    uploads = page.get_by_role("list", name="Uploads")
    for name in ("leave.md", "canteen.txt"):
        row = uploads.get_by_role("listitem").filter(has_text=name)
        expect(row).to_be_visible()
        expect(row.locator("progress")).to_have_count(1)
        expect(row).to_contain_text("indexed", timeout=ANSWER_MS)
        expect(row).not_to_contain_text("failed")
    documents = page.get_by_role("table", name="Documents")
    expect(documents).to_contain_text("leave.md", timeout=15_000)
    expect(documents).to_contain_text("canteen.txt")

    documents.get_by_role("row").filter(has_text="leave.md").get_by_role(
        "button", name="Chunks"
    ).click()
    expect(page.get_by_text("480 days of parental leave").first).to_be_visible()

    page.get_by_label("Query", exact=True).fill("How many days of parental leave?")
    page.get_by_role("button", name="Search").click()
    results = page.get_by_role("list", name="Results")
    expect(results.get_by_role("listitem").first).to_contain_text("480 days")
    expect(results.get_by_role("listitem").first).to_contain_text(re.compile(r"\d\.\d{3}"))
    shoot(page, "knowledge")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Chat").click()
    new_chat(page, "smollm2-135m")
    page.get_by_role("group", name="Knowledge").get_by_label("ui-handbook", exact=True).check()
    message = send(page, "How many days of parental leave per child?")
    wait_done(message)
    # The model picks which passages it cites, so the numbers and documents vary
    # between runs (the answer is sampled); whichever chip comes first must open
    # a verbatim sentence of the document it names.
    citation = message.get_by_role("button", name=re.compile(r"^Citation \d+: ")).first
    expect(citation).to_be_visible()
    label = citation.get_attribute("aria-label") or ""
    cited_label = re.match(r"^Citation (\d+): .*?(leave\.md|canteen\.txt)", label)
    assert cited_label, f"a citation of an unknown document: {label!r}"
    number, document = int(cited_label.group(1)), cited_label.group(2)
    expect(citation).to_have_text(f"[{number}]")
    shoot(page, "chat")

    citation.click()
    dialog = page.get_by_role("dialog", name=f"Citation {number}")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(document)
    # No bare fused score ("Score 0.033"): relevance, explained.
    expect(dialog).not_to_contain_text("Score")
    expect(dialog).to_contain_text(re.compile(r"Relevance\s*\d+% similar to the question"))
    cited = latest_conversation(page)["messages"][-1]["extra"]["citations"]
    [quote] = [c["quote"] for c in cited if c["number"] == number]
    source = {"leave.md": LEAVE, "canteen.txt": CANTEEN}[document]
    assert " ".join(quote.split()) in " ".join(source.split())
    expect(dialog).to_contain_text(quote)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    citation.click()
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    problems.assert_none()


def test_a_failed_document_can_be_removed(signed_in: OpenPage, tmp_path: Path) -> None:
    page, problems = signed_in(path="/knowledge")
    page.get_by_label("New knowledge base name", exact=True).fill("ui-broken")
    page.get_by_role("button", name="Create").click()
    base = page.get_by_role("link", name="ui-broken", exact=True).or_(
        page.get_by_role("button", name="ui-broken", exact=True)
    )
    base.first.click()
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a PDF")
    zone = page.get_by_role("region", name="Upload documents")
    zone.get_by_label("Choose files", exact=True).set_input_files(str(broken))
    documents = page.get_by_role("table", name="Documents")
    row = documents.get_by_role("row").filter(has_text="broken.pdf")
    expect(row).to_contain_text("failed", timeout=ANSWER_MS)
    row.get_by_role("button", name="Remove broken.pdf").click()
    expect(documents.get_by_role("row").filter(has_text="broken.pdf")).to_have_count(0)
    listed = page.request.get("/api/knowledge/ui-broken/documents")
    assert listed.ok and listed.json()["data"] == []
    problems.assert_none()


def test_a_pending_app_action_runs_only_after_confirm(
    signed_in: OpenPage, hr_app: str, hr_api: str
) -> None:
    page, problems = signed_in(path=f"/apps/{hr_app}")
    expect(page.get_by_role("heading", name=hr_app).first).to_be_visible()
    definition = page.get_by_label("App YAML", exact=True)
    expect(definition).to_contain_text("kind: App")
    # The avatar's data URI is folded, and the image is shown beside the definition.
    expect(definition).to_contain_text(
        re.compile(r"avatar: data:image/png;base64,\S{16}… \(\d+ KiB")
    )
    assert max(len(word) for word in definition.inner_text().split()) < 120
    pictured = page.get_by_role("region", name="Definition").get_by_role(
        "img", name=f"{hr_app} avatar"
    )
    expect(pictured).to_be_visible()
    expect(page.get_by_role("heading", name="Test results")).to_be_visible()
    results = page.get_by_role("table").filter(has_text="capital needs no API")
    expect(results.get_by_role("row")).to_have_count(5)  # a header and the example's 4 tests
    expect(results).to_contain_text("passed")
    shoot(page, "app")
    page.get_by_role("link", name="Chat with this app").click()
    page.wait_for_url(re.compile(r"model=app(/|%2F)hr-assistant"))
    expect(page.get_by_label("Model", exact=True)).to_have_value(f"app/{hr_app}")

    message = send(page, "Create a new vacancy titled Nurse.")
    card = page.get_by_role("group", name="Pending action")
    expect(card).to_be_visible(timeout=ANSWER_MS)
    expect(card).to_contain_text("Nurse")
    expect(card).to_contain_text(re.compile(r"createVacancy|POST /vacancies"))
    wait_done(message)
    assert "Nurse" not in hr_vacancy_titles(hr_api), "written before confirmation"

    card.get_by_role("button", name="Confirm").click()
    expect(card).to_contain_text("Confirmed", timeout=ANSWER_MS)
    expect(card.get_by_role("button", name="Confirm")).to_have_count(0)
    deadline = time.monotonic() + 10
    while "Nurse" not in hr_vacancy_titles(hr_api):
        assert time.monotonic() < deadline, "the confirmed action never reached the HR API"
        time.sleep(0.2)
    assert hr_vacancy_titles(hr_api).count("Nurse") == 1
    problems.assert_none()


def test_admin_is_for_admins_only(signed_in: OpenPage, user_key: str) -> None:
    page, problems = signed_in(key=user_key)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Chat", exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Admin", exact=True)).to_have_count(0)
    expect(page.get_by_role("banner")).to_contain_text("browser-user")
    answer = page.goto("/admin")
    assert answer is not None and answer.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Admins only")
    for path in ("/api/admin/workspaces", "/api/admin/audit", "/api/keys"):
        assert page.request.get(path).status == 403, path
    problems.assert_none()


def test_the_admin_page_and_the_app_store(signed_in: OpenPage, hr_app: str) -> None:
    page, problems = signed_in(path="/admin")
    for section in ("Providers", "Workspaces and keys", "Usage", "Audit log"):
        expect(page.get_by_role("heading", level=2, name=section)).to_be_visible()
    providers = page.get_by_role("table").filter(has_text="local-embed").first
    expect(providers).to_contain_text("mock")
    page.get_by_role("button", name="Verify chain").click()
    expect(page.get_by_role("status", name="Verification")).to_contain_text(
        re.compile(r"^\s*Chain OK"), timeout=30_000
    )
    # At 1280 px the audit table fits its box: the Status column is inside, nothing scrolls.
    audit = page.locator("table.audit")
    expect(audit.locator("tbody tr").first).to_be_visible()
    status = box(audit.get_by_role("columnheader", name="Status"))
    scroller = box(audit.locator("xpath=.."))
    assert status["x"] + status["width"] <= scroller["x"] + scroller["width"] + 0.5, (
        status,
        scroller,
    )
    widths = audit.locator("xpath=..").evaluate("(el) => [el.scrollWidth, el.clientWidth]")
    assert widths[0] <= widths[1], f"the audit table scrolls sideways: {widths}"
    # The usage chart's date labels do not overlap.
    labels = page.locator(".usage-chart text.axis-label[text-anchor=middle]")
    shown = [box(label) for label in labels.all() if label.is_visible()]
    assert len(shown) >= 4, shown  # a label a week, today's included
    for left, right in itertools.pairwise(shown):
        assert left["x"] + left["width"] <= right["x"], (left, right)
    no_horizontal_scroll(page)
    shoot(page, "admin")

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Apps").click()
    store = page.get_by_role("list", name="Apps")
    card = store.locator("article").filter(has_text=hr_app)
    expect(card.get_by_role("heading", level=2, name=hr_app)).to_be_visible()
    expect(card.get_by_role("img", name=f"{hr_app} avatar")).to_be_visible()
    shoot(page, "apps")
    card.get_by_role("link", name="Open").click()
    page.wait_for_url(re.compile(rf"/apps/{hr_app}$"))
    problems.assert_none()


def test_hostile_model_output_is_shown_as_text_and_never_runs(signed_in: OpenPage) -> None:
    page, problems = signed_in()
    new_chat(page, "xss-bot")
    message = send(page, "Show me the formatting test.")
    wait_done(message, 30_000)
    expect(message).not_to_contain_text("Stopped")  # it ran to its end

    def check() -> None:
        reply = last_assistant(page)
        expect(reply).to_contain_text("<script>window.__xss = 1</script>")
        expect(reply).to_contain_text('<img src=x onerror="window.__xss = 2">')
        expect(reply.locator("strong")).to_have_text("bold")
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert messages(page).locator("img, script, iframe, object").count() == 0
        handlers = page.evaluate(
            """() => [...document.querySelectorAll('[role=log] *')]
                .flatMap(e => [...e.attributes].map(a => a.name))
                .filter(n => n.startsWith('on'))"""
        )
        assert handlers == []

    check()
    # The stored message renders the same way when the conversation is reopened.
    conversation = latest_conversation(page)
    assert conversation["messages"][-1]["content"] == XSS_REPLY
    page.goto(f"/?c={conversation['id']}")
    expect(last_assistant(page)).to_contain_text("bold")
    check()
    problems.assert_none()


def test_conversations_can_be_renamed_and_deleted(signed_in: OpenPage) -> None:
    page, problems = signed_in()
    new_chat(page, "xss-bot")
    wait_done(send(page, "A conversation to rename."), 30_000)
    listing = page.get_by_role("list", name="Conversations")
    item = listing.get_by_role("listitem").filter(has_text="A conversation to rename.")
    expect(item).to_have_count(1)

    item.get_by_role("button", name="Rename").click()
    page.get_by_label("Conversation title", exact=True).fill("Renamed by the browser test")
    page.get_by_role("button", name="Save").click()
    renamed = listing.get_by_role("listitem").filter(has_text="Renamed by the browser test")
    expect(renamed).to_have_count(1)
    assert conversations(page)[0]["title"] == "Renamed by the browser test"

    renamed.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Delete conversation?")).to_be_visible()
    page.get_by_role("button", name="Yes, delete").click()
    # The confirmation replaced the item's text; the list is redrawn once the delete is done.
    expect(page.get_by_text("Delete conversation?")).to_have_count(0)
    expect(listing).not_to_contain_text("Renamed by the browser test")
    assert "Renamed by the browser test" not in [c["title"] for c in conversations(page)]
    problems.assert_none()


def test_a_phone_sized_page_never_scrolls_sideways(signed_in: OpenPage) -> None:
    page, problems = signed_in(viewport=PHONE)
    expect(page.get_by_label("Message", exact=True)).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    no_horizontal_scroll(page)
    page.goto("/knowledge")
    expect(page.get_by_label("New knowledge base name", exact=True)).to_be_visible()
    no_horizontal_scroll(page)
    problems.assert_none()
