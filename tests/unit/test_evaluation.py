"""Retrieval metrics against hand-computed values, and the relevance rule for chunks."""

from __future__ import annotations

import math

import pytest

from enclave.knowledge.evaluation import (
    LabelledPassage,
    is_relevant,
    ndcg_at_k,
    recall_at_k,
    relevance_flags,
)

LOG2_3 = math.log2(3)  # the discount at rank 2
LOG2_5 = math.log2(5)  # the discount at rank 4


# --- recall@k -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranked", "total", "k", "expected"),
    [
        ([False, True, False, True], 2, 1, 0.0),
        ([False, True, False, True], 2, 2, 0.5),
        ([False, True, False, True], 2, 4, 1.0),
        ([False, True, False, True], 3, 4, 2 / 3),
        ([False, True, False, True], 3, 10, 2 / 3),  # k past the end of the list
        ([True, True, True], 2, 3, 1.0),  # more hits than labels: capped at 1
        ([], 2, 5, 0.0),
        ([True], 0, 1, 0.0),  # nothing to recall
    ],
)
def test_recall_at_k(ranked: list[bool], total: int, k: int, expected: float) -> None:
    assert recall_at_k(ranked, total, k) == pytest.approx(expected)


def test_metrics_reject_k_below_one() -> None:
    with pytest.raises(ValueError):
        recall_at_k([True], 1, 0)
    with pytest.raises(ValueError):
        ndcg_at_k([1.0], 0)


# --- nDCG@k ------------------------------------------------------------------------


def test_ndcg_of_hits_at_ranks_two_and_four_out_of_two() -> None:
    dcg = 1 / LOG2_3 + 1 / LOG2_5  # 0.6309 + 0.4307
    ideal = 1 + 1 / LOG2_3  # both hits at ranks 1 and 2
    assert ndcg_at_k([0, 1, 0, 1], 4, ideal=[1.0, 1.0]) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([0, 1, 0, 1], 4, ideal=[1.0, 1.0]) == pytest.approx(0.650921, abs=1e-6)


def test_ndcg_perfect_ranking_is_one_and_no_hits_is_zero() -> None:
    assert ndcg_at_k([1, 1, 0], 3, ideal=[1.0, 1.0]) == pytest.approx(1.0)
    assert ndcg_at_k([0, 0, 0], 3, ideal=[1.0, 1.0]) == 0.0
    assert ndcg_at_k([0, 0], 2) == 0.0  # nothing relevant anywhere


def test_ndcg_ideal_is_cut_at_k() -> None:
    # Three relevant items, but only two slots: two hits on top are perfect.
    assert ndcg_at_k([1, 1], 2, ideal=[1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # One hit of three relevant, at rank 1 of k = 2.
    assert ndcg_at_k([1, 0], 2, ideal=[1.0] * 3) == pytest.approx(1 / (1 + 1 / LOG2_3))


def test_ndcg_without_ideal_measures_only_the_order() -> None:
    assert ndcg_at_k([0, 1], 2) == pytest.approx(1 / LOG2_3)
    assert ndcg_at_k([1, 0], 2) == pytest.approx(1.0)


def test_ndcg_with_graded_gains() -> None:
    dcg = 3 + 2 / LOG2_3
    ideal = 3 + 3 / LOG2_3 + 2 / 2  # gains 3, 3, 2 at ranks 1 to 3
    assert ndcg_at_k([3, 2, 0], 3, ideal=[2, 3, 3]) == pytest.approx(dcg / ideal)
    assert ndcg_at_k([3, 2, 0], 3, ideal=[2, 3, 3]) == pytest.approx(0.723233, abs=1e-6)


# --- is_relevant --------------------------------------------------------------------

PASSAGE = "If men were angels, no government would be necessary."
LABEL = LabelledPassage("federalist-51.md", PASSAGE)


def test_a_chunk_holding_the_passage_is_relevant_only_in_its_document() -> None:
    chunk = "It may be a reflection on human nature. " + PASSAGE + " If angels were to govern men."
    assert is_relevant(chunk, "federalist-51.md", LABEL)
    assert not is_relevant(chunk, "federalist-10.md", LABEL)


def test_whitespace_differences_do_not_matter() -> None:
    chunk = "Text before.\nIf men were angels, no\ngovernment would be   necessary.\nAfter."
    assert is_relevant(chunk, "federalist-51.md", LABEL)


def test_a_chunk_cut_through_the_passage_needs_most_of_it() -> None:
    # The passage is 53 characters; 60% is 32.
    most = "Before the passage. " + PASSAGE[:40]  # 40 shared characters
    some = PASSAGE[-20:] + " And then a long stretch of other text follows."  # 20 shared
    assert is_relevant(most, "federalist-51.md", LABEL)
    assert not is_relevant(some, "federalist-51.md", LABEL)


def test_a_chunk_inside_a_longer_passage_is_relevant() -> None:
    long_label = LabelledPassage("doc.md", "Alpha beta gamma. " * 20 + "The end.")
    assert is_relevant("gamma. Alpha beta gamma. Alpha beta", "doc.md", long_label)
    # Sharing a common phrase is not enough when the chunk is mostly other text.
    assert not is_relevant("Alpha beta, said the clerk, and left the room.", "doc.md", long_label)


def test_empty_texts_are_never_relevant() -> None:
    assert not is_relevant("", "federalist-51.md", LABEL)
    assert not is_relevant("text", "doc.md", LabelledPassage("doc.md", "  "))


# --- relevance_flags ------------------------------------------------------------------


def test_relevance_flags_count_each_label_once() -> None:
    labels = [
        LabelledPassage("a.md", "The Senate shall have the sole Power to try all Impeachments."),
        LabelledPassage(
            "a.md",
            "The House of Representatives shall choose their Speaker and other Officers; "
            "and shall have the sole Power of Impeachment.",
        ),
    ]
    results = [
        ("b.md", "The Senate shall have the sole Power to try all Impeachments."),  # wrong file
        ("a.md", "When sitting. The Senate shall have the sole Power to try all Impeachments."),
        ("a.md", "The Senate shall have the sole Power to try all Impeachments. When"),  # again
        ("a.md", "Unrelated text about the Treasury and its public Money."),
        ("a.md", "Representatives shall choose their Speaker and other Officers; and shall have"),
    ]
    flags = relevance_flags(results, labels)
    assert flags == [False, True, False, False, True]
    assert recall_at_k(flags, len(labels), 3) == 0.5
    assert recall_at_k(flags, len(labels), 5) == 1.0
    expected = (1 / LOG2_3 + 1 / math.log2(6)) / (1 + 1 / LOG2_3)
    assert ndcg_at_k([float(f) for f in flags], 5, ideal=[1.0, 1.0]) == pytest.approx(expected)
