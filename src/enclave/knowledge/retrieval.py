"""Hybrid retrieval: BM25 and dense rankings fused by reciprocal rank, then a threshold.

The two rankings complement each other: BM25 finds the rare exact term (a
product code, a name) that an embedding blurs, dense search finds the
paraphrase that shares no word with the question. Reciprocal rank fusion
(Cormack et al., 2009) merges them using ranks only, since BM25 scores and
cosine similarities are on unrelated scales: a chunk scores
``sum(1 / (k + rank))`` over the rankings it appears in.

Ranks say nothing about relevance, though: the best chunk of an unrelated
knowledge base is still ranked first. So the threshold applies to one
absolute number, the cosine similarity between the question and the chunk,
computed for every fused candidate (a BM25-only candidate's similarity comes
from the store). A chunk below the threshold is dropped whichever ranking
found it, and a question that nothing in the bases is about gets no chunks
at all, rather than the least bad ones: a threshold that holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from enclave.knowledge.store.base import ChunkRow, Filters, Hit, VectorStore

Mode = Literal["hybrid", "bm25", "dense"]

RRF_K = 60  # the constant from the RRF paper; it damps the weight of the very top ranks


@dataclass(frozen=True, slots=True)
class Retrieved:
    """One retrieved chunk, with how each method ranked and scored it."""

    chunk: ChunkRow
    score: float  # fused reciprocal-rank score (hybrid), or the single method's score
    similarity: float  # cosine similarity to the query; the threshold applies to this
    bm25_rank: int | None  # 1-based rank in the BM25 list, None if absent
    bm25_score: float | None
    dense_rank: int | None
    dense_score: float | None


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]], k: int = RRF_K
) -> list[tuple[int, float]]:
    """Fuse rankings (best first) into ``(chunk_id, score)``, best first.

    A chunk's score is ``sum(1 / (k + rank))`` over the rankings that hold it,
    ranks from 1. Ties go to the chunk with the better single rank, then to
    the lower id, so the order is deterministic.
    """
    scores: dict[int, float] = {}
    best: dict[int, int] = {}
    for ranking in rankings:
        seen: set[int] = set()
        for rank, hit in enumerate(ranking, start=1):
            if hit.chunk_id in seen:  # a duplicate in one ranking counts once, at its best
                continue
            seen.add(hit.chunk_id)
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            best[hit.chunk_id] = min(best.get(hit.chunk_id, rank), rank)
    return sorted(scores.items(), key=lambda item: (-item[1], best[item[0]], item[0]))


def retrieve(
    store: VectorStore,
    kb_ids: Sequence[int],
    query: str,
    vector: np.ndarray,
    *,
    top_k: int = 5,
    threshold: float = 0.3,
    mode: Mode = "hybrid",
    candidates: int = 50,
    filters: Filters | None = None,
) -> list[Retrieved]:
    """The best ``top_k`` published chunks for a question, none below ``threshold``.

    ``vector`` is the question's embedding. In ``hybrid`` mode the top
    ``candidates`` of BM25 and of dense search are fused by reciprocal rank;
    ``bm25`` and ``dense`` use one ranking and its own score. In every mode a
    chunk is kept only if its cosine similarity to ``vector`` is at least
    ``threshold``, so fewer than ``top_k`` chunks (or none) may come back.
    A threshold of ``-1`` keeps everything.
    """
    if mode not in get_args(Mode):
        raise ValueError(f"unknown retrieval mode {mode!r}: use hybrid, bm25 or dense")
    if not kb_ids or top_k <= 0:
        return []
    query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(query_vector))
    if norm > 0:
        query_vector = query_vector / norm
    pool = max(candidates, top_k)
    lexical = store.lexical(kb_ids, query, pool, filters) if mode != "dense" else []
    dense = store.dense(kb_ids, query_vector, pool, filters) if mode != "bm25" else []

    similarity = {hit.chunk_id: hit.score for hit in dense}
    missing = [hit.chunk_id for hit in lexical if hit.chunk_id not in similarity]
    if missing:
        similarity.update(store.similarities(missing, query_vector))

    if mode == "hybrid":
        fused = reciprocal_rank_fusion([lexical, dense])
    else:
        fused = [(hit.chunk_id, hit.score) for hit in (lexical if mode == "bm25" else dense)]
    kept = [
        (chunk_id, score)
        for chunk_id, score in fused
        if similarity.get(chunk_id, -np.inf) >= threshold
    ][:top_k]
    if not kept:
        return []

    bm25 = {hit.chunk_id: (rank, hit.score) for rank, hit in enumerate(lexical, start=1)}
    nearest = {hit.chunk_id: (rank, hit.score) for rank, hit in enumerate(dense, start=1)}
    rows = store.get([chunk_id for chunk_id, _ in kept])
    results = []
    for chunk_id, score in kept:
        chunk = rows.get(chunk_id)
        if chunk is None:  # deleted since the search
            continue
        bm25_rank, bm25_score = bm25.get(chunk_id, (None, None))
        dense_rank, dense_score = nearest.get(chunk_id, (None, None))
        results.append(
            Retrieved(
                chunk=chunk,
                score=score,
                similarity=similarity[chunk_id],
                bm25_rank=bm25_rank,
                bm25_score=bm25_score,
                dense_rank=dense_rank,
                dense_score=dense_score,
            )
        )
    return results
