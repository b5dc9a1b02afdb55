"""Grounded answers in the chat page, in a real headless chromium against a real
``enclave serve``.

The embedded model answers grounded questions extractively (the sources' own
sentences, no model call), so what the server answers is decided in code and
each test first checks it through ``/v1/chat/completions``; then the page must
show it as a reader would want it: quoted sentences highlighted with their
citation chips, a disagreement side by side, a clarifying question whose
options ask the question again, and an abstention that says what the sources
do cover. Every wait is bounded; screenshots go to ``build/screenshots/``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import ROOT, OpenPage, browser_missing

_missing = browser_missing()
if _missing and not os.environ.get("CI"):
    pytest.skip(f"browser tests skipped: {_missing}", allow_module_level=True)

from playwright.sync_api import Locator, Page, expect  # noqa: E402

from tests.e2e.conftest import Server  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.browser]

MODEL = "smollm2-135m"  # embedded, so its grounded answers are extractive by default
ANSWER_MS = 120_000
SHOTS = ROOT / "build" / "screenshots"

CLUSTER = "The cluster has 12 GPUs and is hosted by Hetzner."
UPPSALA = "The Midsummer Fair is held in Uppsala."
LUND = "The Midsummer Fair is held in Lund."
DAILY = "The plant treats 2,000 cubic metres of water per day."
YEARLY = "The plant treats 700,000 cubic metres of water a year."
HOSTING = "The cluster is hosted by Hetzner in Falkenstein."

# Knowledge base -> its documents (name -> Markdown).
BASES = {
    "gr-cluster": {"cluster.md": f"# Cluster\n\n{CLUSTER}\n"},
    "gr-fair": {"uppsala.md": f"{UPPSALA}\n", "lund.md": f"{LUND}\n"},
    "gr-plant": {"daily.md": f"{DAILY}\n", "yearly.md": f"{YEARLY}\n"},
    "gr-hosting": {"hosting.md": f"{HOSTING}\n"},
}
GPUS = "How many GPUs does the cluster have?"
FAIR = "Where is the Midsummer Fair held?"
WATER = "How much water does the plant treat?"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bases(ui_server: Server) -> dict[str, dict[str, str]]:
    """The knowledge bases, created through the API with every document indexed."""
    with ui_server.http() as http:
        pending: list[tuple[str, int]] = []
        for name, documents in BASES.items():
            created = http.post("/api/knowledge", json={"name": name})
            assert created.status_code == 201, created.text
            for filename, text in documents.items():
                added = http.post(
                    f"/api/knowledge/{name}/documents",
                    files={"file": (filename, text.encode(), "text/markdown")},
                )
                assert added.status_code == 202, added.text
                pending.append((name, int(added.json()["data"][0]["document"]["id"])))
        deadline = time.monotonic() + 180
        for name, document_id in pending:
            while True:
                document = http.get(f"/api/knowledge/{name}/documents/{document_id}").json()
                if document["status"] == "indexed":
                    break
                assert document["status"] != "failed", document
                assert time.monotonic() < deadline, f"never indexed: {document}"
                time.sleep(0.1)
    return BASES


@pytest.fixture
def chat(signed_in: OpenPage, bases: dict[str, dict[str, str]]) -> Iterator[Page]:
    page, problems = signed_in()
    yield page
    problems.assert_none()


# ------------------------------------------------------------------ helpers
def ask_api(server: Server, base: str, question: str) -> dict[str, Any]:
    """The grounded answer the API gives, as the chat page will get it."""
    with server.http() as http:
        answer = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": question}],
                "enclave": {"knowledge": [base]},
            },
            timeout=120,
        )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def content(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, animations="disabled")


def messages(page: Page) -> Locator:
    return page.get_by_role("log", name="Messages")


def ask(page: Page, base: str, question: str) -> Locator:
    """A new chat with the embedded model and ``base`` attached; the finished answer."""
    page.get_by_role("button", name="New chat").click()
    expect(messages(page).locator("article.message")).to_have_count(0)
    page.get_by_label("Model", exact=True).select_option(MODEL)
    knowledge = page.get_by_role("group", name="Knowledge")
    for box in knowledge.get_by_role("checkbox").all():
        box.uncheck()
    knowledge.get_by_label(base, exact=True).check()
    page.get_by_label("Message", exact=True).fill(question)
    page.get_by_role("button", name="Send").click()
    expect(messages(page).locator("article.message.user").last).to_have_text(
        re.compile(re.escape(question))
    )
    # The first answer, also once follow-ups come below it.
    answer = messages(page).locator("article.message.assistant").first
    expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_MS)
    return answer


# -------------------------------------------------------------------- tests
def test_an_extractive_answer_reads_as_highlighted_quotes(ui_server: Server, chat: Page) -> None:
    body = ask_api(ui_server, "gr-cluster", GPUS)
    grounding = body["grounding"]
    assert grounding["answer_style"] == "extractive", grounding
    assert not grounding["abstained"] and grounding["clarify"] is None, grounding
    assert body["disagreement"] is None, body
    assert content(body) == f"{CLUSTER} [1]", content(body)
    [citation] = body["citations"]
    assert citation["quote"] == CLUSTER and citation["match"] == "extractive", citation

    answer = ask(chat, "gr-cluster", GPUS)
    extract = answer.locator(".extractive-answer")
    expect(extract).to_be_visible()
    expect(extract.get_by_text("Quoted from your sources", exact=True)).to_be_visible()
    expect(extract.locator("mark")).to_have_count(1)
    expect(extract.locator("mark")).to_have_text(CLUSTER)
    # Its chip sits on the quoted line, and opens the quote.
    line = extract.locator("blockquote.extract")
    chip = line.get_by_role("button", name="Citation 1: cluster.md")
    expect(chip).to_have_text("[1]")
    # The marker is a chip, not also text after the quote.
    assert line.inner_text().split() == [*CLUSTER.split(), "[1]"]
    expect(answer).not_to_have_class(re.compile(r"\babstained\b"))
    expect(answer.locator(".disagreement, .clarify-option, .unsupported-note")).to_have_count(0)
    shoot(chat, "grounded-extractive")
    chip.click()
    dialog = chat.get_by_role("dialog", name="Citation 1")
    expect(dialog).to_contain_text(CLUSTER)
    expect(dialog).to_contain_text("cluster.md")
    chat.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    # Reopened from the server's copy of the conversation, it reads the same.
    chat.reload()
    reopened = messages(chat).locator("article.message.assistant .extractive-answer mark")
    expect(reopened).to_have_text([CLUSTER])


def test_sources_that_disagree_are_shown_side_by_side(ui_server: Server, chat: Page) -> None:
    body = ask_api(ui_server, "gr-fair", FAIR)
    disagreement = body["disagreement"]
    assert disagreement is not None, body
    assert disagreement["kind"] == "place", disagreement
    sides = {
        frozenset(claim["quote"] for claim in disagreement[side])
        for side in ("supporting", "contradicting")
    }
    assert sides == {frozenset([UPPSALA]), frozenset([LUND])}, disagreement

    answer = ask(chat, "gr-fair", FAIR)
    section = answer.locator(".disagreement")
    expect(section).to_be_visible()
    expect(section.get_by_role("heading", level=3)).to_contain_text("Sources disagree")
    supporting = section.locator(".disagreement-column").filter(has_text="Supporting")
    contradicting = section.locator(".disagreement-column").filter(has_text="Contradicting")
    shown = {
        supporting.locator("blockquote").inner_text(),
        contradicting.locator("blockquote").inner_text(),
    }
    assert shown == {UPPSALA, LUND}, shown
    # A disagreement is not dressed up as one quoted answer.
    expect(answer.locator(".extractive-answer")).to_have_count(0)
    expect(answer).not_to_have_class(re.compile(r"\babstained\b"))
    shoot(chat, "grounded-disagreement")


def test_a_clarifying_question_offers_each_reading_as_a_button(
    ui_server: Server, chat: Page
) -> None:
    body = ask_api(ui_server, "gr-plant", WATER)
    clarify = body["grounding"]["clarify"]
    assert clarify is not None, body
    assert clarify["kind"] == "period", clarify
    offered = {option["label"]: option["quote"] for option in clarify["options"]}
    assert offered == {"daily": DAILY, "yearly": YEARLY}, offered

    answer = ask(chat, "gr-plant", WATER)
    expect(answer.locator(".clarify-question")).to_have_text(clarify["question"])
    options = answer.locator(".clarify-option")
    expect(options).to_have_count(2)
    for label, quote in offered.items():
        option = options.filter(has_text=label)
        expect(option).to_have_count(1)
        expect(option).to_contain_text(quote)
        expect(option).to_contain_text(re.compile(r"\[\d\]"))
        expect(option).to_be_enabled()
    expect(answer.locator(".extractive-answer")).to_have_count(0)
    shoot(chat, "grounded-clarify")

    # Choosing one asks the question again, made specific, in the same conversation.
    options.filter(has_text="daily").click()
    expect(options.filter(has_text="daily")).to_have_attribute("aria-pressed", "true")
    follow_up = f"{WATER} (daily)"
    expect(messages(chat).locator("article.message.user")).to_have_count(2)
    expect(
        messages(chat).locator("article.message.user").last.locator(".message-body")
    ).to_have_text(follow_up)
    expect(messages(chat).locator("article.message.assistant")).to_have_count(2)
    second = messages(chat).locator("article.message.assistant").last
    expect(second).to_have_attribute("aria-busy", "false", timeout=ANSWER_MS)
    expect(second).to_contain_text("2,000")
    expect(chat.get_by_label("Message", exact=True)).to_have_value("")


def test_the_chosen_reading_is_answered_for_that_period(ui_server: Server, chat: Page) -> None:
    """What the follow-up a clarify option sends gets back: the daily figure alone."""
    with ui_server.http() as http:
        first = ask_api(ui_server, "gr-plant", WATER)
        answer = http.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": WATER},
                    {"role": "assistant", "content": content(first)},
                    {"role": "user", "content": f"{WATER} (daily)"},
                ],
                "enclave": {"knowledge": ["gr-plant"]},
            },
            timeout=120,
        )
    body = answer.json()
    assert body["disagreement"] is None, f"the daily figure is not in dispute: {body}"
    assert body["grounding"]["clarify"] is None, body
    assert DAILY in content(body) and YEARLY not in content(body), content(body)

    ask(chat, "gr-plant", WATER).locator(".clarify-option").filter(has_text="daily").click()
    second = messages(chat).locator("article.message.assistant").nth(1)
    expect(second).to_have_attribute("aria-busy", "false", timeout=ANSWER_MS)
    expect(second.locator(".extractive-answer mark")).to_have_text([DAILY])
    expect(second.locator(".disagreement")).to_have_count(0)


def test_an_abstention_says_what_the_sources_do_cover(ui_server: Server, chat: Page) -> None:
    body = ask_api(ui_server, "gr-hosting", GPUS)
    grounding = body["grounding"]
    assert grounding["abstained"] is True and grounding["reason"] == "near_miss", grounding
    coverage = re.search(r"The sources mention .*$", content(body))
    assert coverage, content(body)

    answer = ask(chat, "gr-hosting", GPUS)
    expect(answer).to_have_class(re.compile(r"\babstained\b"))
    expect(answer.get_by_text("Not found", exact=True)).to_be_visible()
    expect(answer.locator(".abstain-coverage")).to_have_text(coverage.group(0))
    expect(answer.locator(".extractive-answer")).to_have_count(0)
    shoot(chat, "grounded-abstained")
