"""Reciprocal rank fusion and the similarity threshold, on a scripted store."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from enclave.knowledge.retrieval import Retrieved, reciprocal_rank_fusion, retrieve
from enclave.knowledge.store import ChunkRow, Filters, Hit, VectorStore
from enclave.knowledge.store.terms import plan_terms, query_terms

DIM = 4


class ScriptedStore(VectorStore):
    """Returns preset rankings; similarities come from the chunks' vectors."""

    dimension = DIM

    def __init__(
        self, vectors: dict[int, list[float]], lexical: list[int], dense: list[int]
    ) -> None:
        self.vectors = {i: np.asarray(v, dtype=np.float32) for i, v in vectors.items()}
        self.lexical_order, self.dense_order = lexical, dense
        self.calls: list[tuple[str, int]] = []
        self.similarity_requests: list[list[int]] = []

    def _cosine(self, chunk_id: int, vector: np.ndarray) -> float:
        stored = self.vectors[chunk_id]  # the query is taken as unit-length, as stores may
        return float(stored @ vector / np.linalg.norm(stored))

    def lexical(
        self, kb_ids: Sequence[int], query: str, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        self.calls.append(("lexical", k))
        return [Hit(i, 10.0 - rank) for rank, i in enumerate(self.lexical_order[:k])]

    def dense(
        self, kb_ids: Sequence[int], vector: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        self.calls.append(("dense", k))
        return [Hit(i, self._cosine(i, vector)) for i in self.dense_order[:k]]

    def similarities(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        self.similarity_requests.append(list(chunk_ids))
        return {i: self._cosine(i, vector) for i in chunk_ids if i in self.vectors}

    def get(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRow]:
        return {
            i: ChunkRow(kb_id=1, document_id=1, ordinal=i, text=f"chunk {i}", id=i)
            for i in chunk_ids
            if i in self.vectors
        }

    def add(self, chunks: Sequence[ChunkRow], vectors: np.ndarray) -> list[int]:
        raise NotImplementedError

    def publish(self, kb_id: int, document_id: int) -> int:
        raise NotImplementedError

    def discard_hidden(self, kb_id: int, document_id: int) -> int:
        raise NotImplementedError

    def delete_document(self, kb_id: int, document_id: int) -> int:
        raise NotImplementedError

    def delete_base(self, kb_id: int) -> int:
        raise NotImplementedError

    def chunks(
        self, kb_id: int, document_id: int, *, offset: int = 0, limit: int = 100
    ) -> list[ChunkRow]:
        raise NotImplementedError

    def count(self, kb_id: int, document_id: int | None = None) -> int:
        return len(self.vectors)

    def close(self) -> None:
        pass


QUERY = np.array([1, 0, 0, 0], dtype=np.float32)
# Cosine to QUERY: 1 -> 1.0, 2 -> 0.8, 3 -> 0.6, 4 -> 0.0, 5 -> 0.1
VECTORS = {
    1: [1, 0, 0, 0],
    2: [0.8, 0.6, 0, 0],
    3: [0.6, 0.8, 0, 0],
    4: [0, 1, 0, 0],
    5: [0.1, 0, 0.995, 0],
}


def ids(found: list[Retrieved]) -> list[int]:
    return [item.chunk.id for item in found]


# -- reciprocal rank fusion --------------------------------------------------------


def test_rrf_sums_reciprocal_ranks() -> None:
    bm25 = [Hit(10, 9.0), Hit(20, 5.0), Hit(30, 1.0)]
    dense = [Hit(30, 0.9), Hit(40, 0.8), Hit(10, 0.7)]

    fused = dict(reciprocal_rank_fusion([bm25, dense], k=60))

    assert fused[10] == pytest.approx(1 / 61 + 1 / 63)
    assert fused[30] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[20] == pytest.approx(1 / 62)
    assert fused[40] == pytest.approx(1 / 62)


def test_rrf_orders_best_first_and_breaks_ties_deterministically() -> None:
    bm25 = [Hit(10, 9.0), Hit(20, 5.0), Hit(30, 1.0)]
    dense = [Hit(30, 0.9), Hit(40, 0.8), Hit(10, 0.7)]

    fused = reciprocal_rank_fusion([bm25, dense])

    # 10 and 30 tie (1st + 3rd each), as do 20 and 40 (2nd once): lower id first.
    assert [chunk_id for chunk_id, _ in fused] == [10, 30, 20, 40]
    scores = [score for _, score in fused]
    assert scores == sorted(scores, reverse=True)


def test_rrf_prefers_agreement_over_one_top_rank() -> None:
    bm25 = [Hit(1, 1.0), Hit(2, 0.9)]
    dense = [Hit(3, 1.0), Hit(2, 0.9)]

    fused = reciprocal_rank_fusion([bm25, dense])

    assert fused[0][0] == 2  # second in both beats first in one


def test_rrf_constant_and_edge_cases() -> None:
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []
    assert reciprocal_rank_fusion([[Hit(1, 0.5)]], k=0) == [(1, 1.0)]
    # A chunk listed twice in one ranking counts once, at its better rank.
    assert reciprocal_rank_fusion([[Hit(1, 2.0), Hit(1, 1.0)]], k=0) == [(1, 1.0)]


# -- retrieve: hybrid ----------------------------------------------------------------


def test_hybrid_fuses_and_reports_each_method() -> None:
    store = ScriptedStore(VECTORS, lexical=[3, 2], dense=[1, 2, 3])

    found = retrieve(store, [1], "q", QUERY, top_k=5, threshold=0.0)

    # 3 (ranks 1 and 3) edges out 2 (ranks 2 and 2): 1/61 + 1/63 > 2/62.
    assert ids(found) == [3, 2, 1]
    two = found[1]
    assert two.score == pytest.approx(1 / 62 + 1 / 62)
    assert (two.bm25_rank, two.bm25_score) == (2, 9.0)
    assert two.dense_rank == 2 and two.dense_score == pytest.approx(0.8)
    assert two.similarity == pytest.approx(0.8)
    one = found[2]
    assert one.bm25_rank is None and one.bm25_score is None
    assert one.dense_rank == 1 and one.similarity == pytest.approx(1.0)
    assert store.calls == [("lexical", 50), ("dense", 50)]


def test_bm25_only_hits_get_their_similarity_from_the_store() -> None:
    store = ScriptedStore(VECTORS, lexical=[5, 3], dense=[1])

    found = retrieve(store, [1], "q", QUERY, threshold=0.0)

    assert store.similarity_requests == [[5, 3]]
    by_id = {item.chunk.id: item for item in found}
    assert by_id[5].similarity == pytest.approx(0.1, abs=1e-3)
    assert by_id[5].dense_rank is None and by_id[5].bm25_rank == 1


def test_threshold_drops_weak_chunks_whichever_method_found_them() -> None:
    # BM25 ranks 4 and 5 first, but neither is similar to the question.
    store = ScriptedStore(VECTORS, lexical=[4, 5, 2], dense=[1, 2, 3])

    found = retrieve(store, [1], "q", QUERY, top_k=3, threshold=0.5)

    assert set(ids(found)) == {1, 2, 3}
    assert all(item.similarity >= 0.5 for item in found)


def test_nothing_relevant_means_nothing_returned() -> None:
    store = ScriptedStore(VECTORS, lexical=[4, 5], dense=[5, 4])

    assert retrieve(store, [1], "q", QUERY, threshold=0.3) == []


def test_weak_chunks_do_not_take_top_k_places() -> None:
    store = ScriptedStore(VECTORS, lexical=[4, 5, 3], dense=[4, 5, 3])

    found = retrieve(store, [1], "q", QUERY, top_k=1, threshold=0.5)

    assert ids(found) == [3]  # ranked third, but the only one above the threshold


def test_threshold_is_inclusive_and_minus_one_keeps_everything() -> None:
    store = ScriptedStore(VECTORS, lexical=[], dense=[1, 2, 3, 4])

    assert ids(retrieve(store, [1], "q", QUERY, threshold=1.0, mode="dense")) == [1]
    assert ids(retrieve(store, [1], "q", QUERY, threshold=-1.0, mode="dense")) == [1, 2, 3, 4]


def test_top_k_limits_and_candidates_widen_the_pool() -> None:
    store = ScriptedStore(VECTORS, lexical=[1, 2, 3], dense=[1, 2, 3])

    found = retrieve(store, [1], "q", QUERY, top_k=2, threshold=0.0, candidates=10)

    assert ids(found) == [1, 2]
    assert store.calls == [("lexical", 10), ("dense", 10)]
    retrieve(store, [1], "q", QUERY, top_k=20, candidates=5)
    assert store.calls[-2:] == [("lexical", 20), ("dense", 20)]  # never fewer than top_k


def test_query_vector_is_normalised() -> None:
    store = ScriptedStore(VECTORS, lexical=[3], dense=[1])

    found = retrieve(store, [1], "q", QUERY * 7, threshold=0.5)

    assert {item.chunk.id: round(item.similarity, 3) for item in found} == {1: 1.0, 3: 0.6}


# -- retrieve: single methods ---------------------------------------------------------


def test_bm25_mode_uses_only_the_lexical_ranking() -> None:
    store = ScriptedStore(VECTORS, lexical=[3, 4, 2], dense=[1])

    found = retrieve(store, [1], "q", QUERY, mode="bm25", threshold=0.5)

    assert ids(found) == [3, 2]  # 4 is below the threshold
    assert found[0].score == 10.0 and found[0].bm25_score == 10.0
    assert found[0].dense_rank is None
    assert [call for call, _ in store.calls] == ["lexical"]


def test_dense_mode_uses_only_the_dense_ranking() -> None:
    store = ScriptedStore(VECTORS, lexical=[4], dense=[1, 2, 4])

    found = retrieve(store, [1], "q", QUERY, mode="dense", threshold=0.5)

    assert ids(found) == [1, 2]
    assert found[1].score == pytest.approx(0.8) == found[1].similarity
    assert found[1].bm25_rank is None
    assert [call for call, _ in store.calls] == ["dense"]
    assert store.similarity_requests == []


def test_no_bases_or_no_places_returns_nothing() -> None:
    store = ScriptedStore(VECTORS, lexical=[1], dense=[1])

    assert retrieve(store, [], "q", QUERY) == []
    assert retrieve(store, [1], "q", QUERY, top_k=0) == []
    assert store.calls == []


def test_unknown_mode_is_refused() -> None:
    store = ScriptedStore(VECTORS, lexical=[1], dense=[1])

    with pytest.raises(ValueError, match="mode"):
        retrieve(store, [1], "q", QUERY, mode="fuzzy")  # type: ignore[arg-type]


# -- search terms ------------------------------------------------------------------------


def test_query_terms_are_plain_words() -> None:
    assert query_terms('What is "NEAR(foo*, -bar)" AND the_Baz?') == ["near", "foo", "bar", "baz"]
    assert query_terms("the of and a I") == []
    assert query_terms("café Café CAFÉ 東京") == ["café", "東京"]
    assert len(query_terms(" ".join(f"word{i}" for i in range(100)))) == 32


def test_plan_terms_is_exact_within_the_budget() -> None:
    plan = plan_terms({"rare": 3, "common": 90, "absent": 0}, total=100, budget=1000)

    assert plan is not None and plan.terms == ("rare", "common") and not plan.require_all


def test_plan_terms_drops_the_most_frequent_terms_first() -> None:
    frequency = {"everywhere": 9000, "often": 3000, "sometimes": 800, "rare": 5}

    plan = plan_terms(frequency, total=10_000, budget=1000)

    assert plan is not None and plan.terms == ("rare", "sometimes")


def test_plan_terms_requires_all_common_terms_or_gives_up() -> None:
    plan = plan_terms({"often": 3000, "also": 2000}, total=10_000, budget=1000)
    assert plan is not None and plan.require_all and set(plan.terms) == {"often", "also"}

    assert plan_terms({"often": 3000}, total=10_000, budget=1000) is None
    assert plan_terms({"everywhere": 9000, "often": 3000}, total=10_000, budget=1000) is None
    assert plan_terms({"absent": 0}, total=10_000, budget=1000) is None
