"""The retrieval evaluation corpus: small, UTF-8, and every label points at real text."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from enclave.knowledge.chunking import iter_chunks
from enclave.knowledge.evaluation import LabelledPassage, is_relevant

DATA = Path(__file__).parent.parent / "data" / "knowledge"
CORPUS = DATA / "corpus"
KINDS = ("keyword", "paraphrase", "mixed")


@pytest.fixture(scope="module")
def labels() -> dict[str, Any]:
    return json.loads((DATA / "questions.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {path.name: path.read_bytes().decode("utf-8") for path in sorted(CORPUS.iterdir())}


def test_corpus_files_are_utf8_markdown_without_bom(documents: dict[str, str]) -> None:
    assert len(documents) >= 30
    for name, text in documents.items():
        assert name.endswith(".md"), name
        assert not text.startswith("\ufeff"), name
        assert text.startswith("# ") and text.endswith("\n"), name


def test_corpus_is_small() -> None:
    total = sum(path.stat().st_size for path in CORPUS.iterdir())
    assert 100_000 <= total <= 250_000, total


def test_questions_are_well_formed_and_split_into_thirds(labels: dict[str, Any]) -> None:
    questions = labels["questions"]
    assert 50 <= len(questions) <= 80
    assert [q["id"] for q in questions] == [f"q{i:02d}" for i in range(1, len(questions) + 1)]
    assert len({q["question"] for q in questions}) == len(questions)
    kinds = Counter(q["kind"] for q in questions)
    assert set(kinds) == set(KINDS)
    for kind in KINDS:
        assert 0.25 <= kinds[kind] / len(questions) <= 0.42, kinds
    for question in questions:
        assert question["question"].strip().endswith("?"), question["id"]
        assert question["relevant"], question["id"]


def test_every_passage_is_an_exact_substring_of_its_document(
    labels: dict[str, Any], documents: dict[str, str]
) -> None:
    for question in labels["questions"]:
        for relevant in question["relevant"]:
            document, passage = relevant["document"], relevant["passage"]
            assert document in documents, (question["id"], document)
            assert passage == passage.strip() and len(passage) >= 20, question["id"]
            assert passage in documents[document], (question["id"], passage)


def test_every_passage_is_found_in_some_default_chunk(
    labels: dict[str, Any], documents: dict[str, str]
) -> None:
    chunks = {name: [c.text for c in iter_chunks(text)] for name, text in documents.items()}
    for question in labels["questions"]:
        for relevant in question["relevant"]:
            label = LabelledPassage.from_mapping(relevant)
            assert any(is_relevant(text, label.document, label) for text in chunks[label.document])


def test_unanswerable_questions(labels: dict[str, Any], documents: dict[str, str]) -> None:
    unanswerable = labels["unanswerable"]
    assert 8 <= len(unanswerable) <= 10
    answerable = {q["question"] for q in labels["questions"]}
    corpus = "\n".join(documents.values()).lower()
    for question in unanswerable:
        assert question.endswith("?") and question not in answerable
    # The subjects they ask about are absent from the corpus.
    for subject in ("australia", "ibuprofen", "photosynthesis", "banana", "fifa"):
        assert subject not in corpus
