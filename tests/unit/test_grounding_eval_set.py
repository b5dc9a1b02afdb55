"""The grounding evaluation set: hand labels that point at real text, in the documented shape."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent.parent / "data" / "grounding"
CORPUS = DATA / "corpus"
TYPES = {"number", "date", "person", "organisation", "place", "yesno", "open"}
MAX_BYTES = 500 * 1024


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


@pytest.fixture(scope="module")
def labels() -> dict[str, Any]:
    return json.loads(_read(DATA / "questions.json"))


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {path.name: _read(path) for path in sorted(CORPUS.glob("*.md"))}


def _all_items(labels: dict[str, Any]) -> list[dict[str, Any]]:
    return [*labels["answerable"], *labels["near_miss"], *labels["contradictions"]]


def test_top_level_sections(labels: dict[str, Any]) -> None:
    assert set(labels) == {"answerable", "near_miss", "contradictions"}


def test_counts_meet_the_minimums(labels: dict[str, Any]) -> None:
    assert len(labels["answerable"]) >= 60
    assert len(labels["near_miss"]) >= 15
    assert len(labels["contradictions"]) >= 20


def test_every_type_among_contradictions(labels: dict[str, Any]) -> None:
    counts = Counter(item["type"] for item in labels["contradictions"])
    assert set(counts) == TYPES
    assert all(count >= 2 for count in counts.values()), counts


def test_ids_are_unique_and_prefixed(labels: dict[str, Any]) -> None:
    ids = [item["id"] for item in _all_items(labels)]
    assert len(ids) == len(set(ids))
    for prefix, section in (("a", "answerable"), ("n", "near_miss"), ("c", "contradictions")):
        assert all(re.fullmatch(prefix + r"\d{2,}", item["id"]) for item in labels[section])


def test_item_shapes(labels: dict[str, Any]) -> None:
    answer_keys = {"id", "question", "type", "answers", "evidence"}
    for item in labels["answerable"]:
        assert set(item) == answer_keys, item["id"]
        assert set(item["evidence"]) == {"document", "passage"}, item["id"]
    for item in labels["near_miss"]:
        assert set(item) == {"id", "question", "type", "topic_document", "why"}, item["id"]
        assert item["why"].strip(), item["id"]
    for item in labels["contradictions"]:
        assert set(item) == answer_keys | {"planted"}, item["id"]
        assert set(item["planted"]) == {"document", "value", "passage"}, item["id"]
    for item in _all_items(labels):
        assert item["type"] in TYPES, item["id"]
        assert item["question"].strip(), item["id"]
    for item in [*labels["answerable"], *labels["contradictions"]]:
        answers = item["answers"]
        assert answers and all(isinstance(a, str) and a.strip() for a in answers), item["id"]
        if item["type"] == "yesno":
            assert answers in (["yes"], ["no"]), item["id"]


def test_referenced_files_exist(labels: dict[str, Any], documents: dict[str, str]) -> None:
    for item in [*labels["answerable"], *labels["contradictions"]]:
        assert item["evidence"]["document"] in documents, item["id"]
    for item in labels["near_miss"]:
        assert item["topic_document"] in documents, item["id"]
    for item in labels["contradictions"]:
        planted = DATA / item["planted"]["document"]
        assert planted.parent == DATA / "planted" and planted.is_file(), item["id"]


def test_passages_are_exact_substrings(labels: dict[str, Any], documents: dict[str, str]) -> None:
    for item in [*labels["answerable"], *labels["contradictions"]]:
        evidence = item["evidence"]
        assert evidence["passage"] in documents[evidence["document"]], item["id"]
    for item in labels["contradictions"]:
        planted = item["planted"]
        assert planted["passage"] in _read(DATA / planted["document"]), item["id"]


def test_answers_occur_in_the_evidence(labels: dict[str, Any]) -> None:
    for item in [*labels["answerable"], *labels["contradictions"]]:
        if item["type"] == "yesno":
            continue
        passage = _collapse(item["evidence"]["passage"])
        assert any(_collapse(answer) in passage for answer in item["answers"]), item["id"]


def test_planted_passages_carry_a_different_value(labels: dict[str, Any]) -> None:
    for item in labels["contradictions"]:
        planted = item["planted"]
        if item["type"] == "yesno":
            assert planted["value"] in ("yes", "no") and [planted["value"]] != item["answers"]
            continue
        passage = _collapse(planted["passage"])
        assert _collapse(planted["value"]) in passage, item["id"]
        assert not any(_collapse(answer) in passage for answer in item["answers"]), item["id"]


def test_planted_files_are_short_titled_markdown(labels: dict[str, Any]) -> None:
    for item in labels["contradictions"]:
        text = _read(DATA / item["planted"]["document"])
        assert text.startswith("# "), item["id"]
        assert len(text.encode("utf-8")) < 2048, item["id"]


def test_near_misses_do_not_repeat_answerable_questions(labels: dict[str, Any]) -> None:
    answerable = {_collapse(item["question"]) for item in labels["answerable"]}
    for item in labels["near_miss"]:
        assert _collapse(item["question"]) not in answerable, item["id"]


def test_corpus_documents_are_titled_utf8_and_sized(documents: dict[str, str]) -> None:
    assert 12 <= len(documents) <= 25
    for name, text in documents.items():
        assert not text.startswith("\ufeff"), name
        assert text.startswith("# "), name
        assert 5 * 1024 <= len(text.encode("utf-8")) <= 40 * 1024, name


def test_whole_set_is_small() -> None:
    files = [path for path in DATA.rglob("*") if path.is_file()]
    for path in files:
        path.read_bytes().decode("utf-8")
    assert sum(path.stat().st_size for path in files) < MAX_BYTES
