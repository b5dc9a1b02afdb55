"""Retrieval quality: recall@k, nDCG@k and when a chunk answers a labelled passage.

Labels name a passage, not a chunk: ``{"document": "federalist-51.md",
"passage": "If men were angels, no government would be necessary."}``, where
the passage is an exact substring of the document. Chunk boundaries move
whenever chunking changes, so a retrieved chunk counts as relevant when it
comes from the labelled document and shares a substantial contiguous stretch
with the passage (:func:`is_relevant`). Several chunks can match one label
(chunks overlap); :func:`relevance_flags` counts only the first of them, so
recall cannot pass 1 and a duplicate scores nothing in nDCG, as a duplicate
search result should.

The metrics are the usual ones, with binary gains by default:

- ``recall_at_k``: relevant hits in the top ``k`` over all relevant labels.
- ``ndcg_at_k``: DCG of the top ``k`` (gain / log2(rank + 1), ranks from 1)
  over the DCG of the ideal ranking of ``k`` results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

__all__ = [
    "MIN_SHARED_FRACTION",
    "LabelledPassage",
    "is_relevant",
    "ndcg_at_k",
    "recall_at_k",
    "relevance_flags",
    "shared_length",
]

# A chunk must share a contiguous stretch of at least this fraction of the
# shorter of (passage, chunk) with the passage.
MIN_SHARED_FRACTION = 0.6


@dataclass(frozen=True, slots=True)
class LabelledPassage:
    """A passage that answers a question: an exact substring of ``document``."""

    document: str
    passage: str

    @classmethod
    def from_mapping(cls, data: Mapping[str, str]) -> LabelledPassage:
        return cls(document=data["document"], passage=data["passage"])


def recall_at_k(ranked: Sequence[bool], total_relevant: int, k: int) -> float:
    """The share of the ``total_relevant`` labels found in the first ``k`` results.

    ``ranked[i]`` says whether result ``i`` (best first) is a relevant hit.
    Hits beyond ``total_relevant`` (a duplicate not filtered out, see
    :func:`relevance_flags`) are not counted, so the result is at most 1.
    With nothing relevant there is nothing to recall: 0.0.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    if total_relevant <= 0:
        return 0.0
    hits = sum(1 for hit in ranked[:k] if hit)
    return min(hits, total_relevant) / total_relevant


def _dcg(gains: Sequence[float]) -> float:
    return sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))


def ndcg_at_k(
    ranked_relevance: Sequence[float], k: int, ideal: Sequence[float] | None = None
) -> float:
    """Normalised discounted cumulative gain of the first ``k`` results.

    ``ranked_relevance[i]`` is result ``i``'s gain (1.0 or 0.0 for binary
    relevance). ``ideal`` holds the gains of every relevant item, e.g.
    ``[1.0] * total_relevant``; the ideal ranking puts the best ``k`` of them
    first. Without it the ranked gains themselves are the ideal, which only
    measures ordering: pass ``ideal`` to also penalise what was not retrieved.
    0.0 when the ideal gain is 0 (nothing relevant).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    best = sorted(ranked_relevance if ideal is None else ideal, reverse=True)[:k]
    ideal_dcg = _dcg(best)
    if ideal_dcg <= 0:
        return 0.0
    return _dcg(ranked_relevance[:k]) / ideal_dcg


def _squeezed(text: str) -> str:
    return " ".join(text.split())


def shared_length(chunk_text: str, passage: str) -> int:
    """Length of the longest stretch the two texts share, whitespace runs as one space."""
    chunk, wanted = _squeezed(chunk_text), _squeezed(passage)
    if wanted in chunk:
        return len(wanted)
    if chunk in wanted:
        return len(chunk)
    match = SequenceMatcher(None, chunk, wanted, autojunk=False).find_longest_match(
        0, len(chunk), 0, len(wanted)
    )
    return match.size


def is_relevant(chunk_text: str, document: str, label: LabelledPassage) -> bool:
    """Whether a chunk of ``document`` answers the labelled passage.

    It must come from the label's document and share with the passage a
    contiguous stretch (whitespace runs compared as one space) of at least
    ``MIN_SHARED_FRACTION`` of the shorter of the two: most of the passage
    when the chunk holds it, most of the chunk when the passage is the longer.
    A chunk cut through the middle of a short passage, or one that only
    shares a common phrase ("of the United States") with a long one, is not.
    """
    if document != label.document:
        return False
    chunk_length = len(_squeezed(chunk_text))
    passage_length = len(_squeezed(label.passage))
    needed = MIN_SHARED_FRACTION * min(chunk_length, passage_length)
    return needed > 0 and shared_length(chunk_text, label.passage) >= needed


def relevance_flags(
    results: Sequence[tuple[str, str]], labels: Sequence[LabelledPassage]
) -> list[bool]:
    """Per result ``(document, chunk_text)``, best first: is it the first hit on some label?

    A result counts when it is relevant to a label that no earlier result
    matched; later chunks matching the same label (overlapping chunks) are
    ``False``. Feed the flags to :func:`recall_at_k` with ``len(labels)`` and
    to :func:`ndcg_at_k` with ``ideal=[1.0] * len(labels)``.
    """
    found: set[int] = set()
    flags: list[bool] = []
    for document, text in results:
        hit = next(
            (
                index
                for index, label in enumerate(labels)
                if index not in found and is_relevant(text, document, label)
            ),
            None,
        )
        if hit is not None:
            found.add(hit)
        flags.append(hit is not None)
    return flags
