"""Chunks in SQLite: FTS5 for BM25, sqlite-vec for the vectors, numpy for dense search.

Everything lives in the application's own database file, in tables prefixed
``knowledge_``: the chunk rows, an FTS5 index over their text and heading
path (external content, kept in step by triggers, Porter stemming), a
``vec0`` table with each chunk's float32 embedding (rowid = chunk id) and a
version counter per knowledge base.

Dense search does not use ``vec0``'s own KNN. Its brute-force scan runs at
64-82 ms for 100k x 384 vectors on our machines (the wheel has no SIMD),
while a numpy matrix-vector product over the same vectors takes 7-12 ms,
and hybrid retrieval must stay within 50 ms at p95 for 100k chunks. So
``vec0`` is the durable copy and the store keeps, per knowledge base, an
in-memory matrix of its *published* vectors with their chunk and document
ids: loaded on the first search (about 0.4 s for 100k vectors, read from
``vec0``'s own blocks), appended to on publish, tombstoned on delete
(compacted when a quarter is dead). A search is one matrix-vector product and
an ``argpartition``; document filters are a mask. The matrices cost 4 bytes
per dimension per published chunk in memory: 150 MB for 100k x 384.

Lexical search is FTS5's ``bm25()`` over the question's words (see
:mod:`.terms`), with a budget on how many matching rows it may rank.

Other processes (the CLI, a second server) may write the same file, so every
publish or delete bumps the base's row in ``knowledge_versions`` and a
search first compares that number with its matrix's: a change made
elsewhere reloads the matrix, a change made here has already updated it.

Threads: one write connection behind a lock (transactions are ``BEGIN
IMMEDIATE``), one read connection per thread (WAL readers never block), and
a second lock for the matrices. Writers commit while holding the matrix
lock, so a search never sees a committed version its matrix lacks. Matrices
are append-only between compactions and a search works on a snapshot of
views, so the product itself runs outside the lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pysqlite3.dbapi2 as sqlite3
import sqlite_vec

from .base import ChunkRow, Filters, Hit, VectorStore
from .terms import plan_terms, query_terms
from .vectors import dimension_mismatch, unit_rows, unit_vector

_TABLES = (
    """CREATE TABLE IF NOT EXISTS knowledge_chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kb_id INTEGER NOT NULL,
        document_id INTEGER NOT NULL,
        ordinal INTEGER NOT NULL,
        text TEXT NOT NULL,
        heading_path TEXT NOT NULL DEFAULT '[]',
        page_start INTEGER,
        page_end INTEGER,
        char_start INTEGER NOT NULL DEFAULT 0,
        char_end INTEGER NOT NULL DEFAULT 0,
        published INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE INDEX IF NOT EXISTS knowledge_chunks_document
        ON knowledge_chunks (kb_id, document_id)""",
    # External content: the text is stored once, in knowledge_chunks.
    """CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_fts USING fts5(
        text, heading_path,
        content='knowledge_chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunks_fts_insert
    AFTER INSERT ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts (rowid, text, heading_path)
        VALUES (new.id, new.text, new.heading_path);
    END""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunks_fts_delete
    AFTER DELETE ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts (knowledge_fts, rowid, text, heading_path)
        VALUES ('delete', old.id, old.text, old.heading_path);
    END""",
    """CREATE TRIGGER IF NOT EXISTS knowledge_chunks_fts_update
    AFTER UPDATE OF text, heading_path ON knowledge_chunks BEGIN
        INSERT INTO knowledge_fts (knowledge_fts, rowid, text, heading_path)
        VALUES ('delete', old.id, old.text, old.heading_path);
        INSERT INTO knowledge_fts (rowid, text, heading_path)
        VALUES (new.id, new.text, new.heading_path);
    END""",
    # Bumped by every publish and delete; a search reloads a matrix whose version differs.
    """CREATE TABLE IF NOT EXISTS knowledge_versions (
        kb_id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
)

_CHUNK_COLUMNS = (
    "id, kb_id, document_id, ordinal, text, heading_path, "
    "page_start, page_end, char_start, char_end"
)
_IDS = "(SELECT value FROM json_each(?))"  # one parameter for any number of ids
_COMPACT_AT = 0.25  # share of tombstoned rows that triggers a compaction
# Matching rows one BM25 search may rank (~3 us each at 100k chunks): ~15 ms.
LEXICAL_BUDGET = 5000
_FREQUENCY_TTL_S = 300.0  # how long a frequent term's document count is trusted
_FREQUENCY_CACHE = 10_000


class _DenseIndex:
    """The published vectors of one knowledge base, searchable by matrix product.

    Rows ``[:size]`` are never rewritten in place: appends fill spare capacity
    (or copy into a larger array), deletes replace ``alive`` with a new mask,
    and compaction builds new arrays. A snapshot of views therefore stays
    valid while the index changes.
    """

    def __init__(
        self,
        version: int,
        ids: np.ndarray,
        documents: np.ndarray,
        vectors: np.ndarray,
    ) -> None:
        self.version = version
        self.dimension = vectors.shape[1]
        self.size = 0
        self.dead = 0
        self._allocate(max(1024, len(ids)))
        self.rows: dict[int, int] = {}
        self.append(ids, documents, vectors)

    def _allocate(self, capacity: int) -> None:
        self.vectors = np.zeros((capacity, self.dimension), dtype=np.float32)
        self.ids = np.zeros(capacity, dtype=np.int64)
        self.documents = np.zeros(capacity, dtype=np.int64)
        self.alive = np.ones(capacity, dtype=bool)

    def _grow(self, capacity: int) -> None:
        vectors, ids, documents, alive = self.vectors, self.ids, self.documents, self.alive
        self._allocate(capacity)
        n = self.size
        self.vectors[:n], self.ids[:n] = vectors[:n], ids[:n]
        self.documents[:n], self.alive[:n] = documents[:n], alive[:n]

    def append(self, ids: np.ndarray, documents: np.ndarray, vectors: np.ndarray) -> None:
        m = len(ids)
        if self.size + m > len(self.ids):
            self._grow(max(2 * len(self.ids), self.size + m))
        start, end = self.size, self.size + m
        self.vectors[start:end] = vectors
        self.ids[start:end] = ids
        self.documents[start:end] = documents
        self.alive[start:end] = True
        self.rows.update(zip(ids.tolist(), range(start, end), strict=True))
        self.size = end

    def remove(self, ids: Sequence[int]) -> None:
        rows = [row for row in (self.rows.pop(i, None) for i in ids) if row is not None]
        if not rows:
            return
        alive = self.alive.copy()
        alive[rows] = False
        self.alive = alive
        self.dead += len(rows)
        if self.dead > _COMPACT_AT * self.size:
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.alive[: self.size])
        vectors, ids, documents = self.vectors[keep], self.ids[keep], self.documents[keep]
        self.size = self.dead = 0
        self._allocate(max(1024, 2 * len(keep)))
        self.rows = {}
        self.append(ids, documents, vectors)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        n = self.size
        alive = self.alive[:n] if self.dead else None
        return self.vectors[:n], self.ids[:n], self.documents[:n], alive


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, largest first."""
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]
    return np.argsort(-scores, kind="stable")


class SQLiteStore(VectorStore):
    """The knowledge store inside the application's SQLite file."""

    def __init__(self, path: str | Path, dimension: int) -> None:
        if dimension <= 0:
            raise ValueError(f"embedding dimension must be positive, not {dimension}")
        self.path = str(path)
        self.dimension = dimension
        if self.path == ":memory:" or self.path.startswith("file:"):
            raise ValueError("the knowledge store needs a database file path")
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()  # the write connection and its transactions
        self._index_lock = threading.Lock()  # self._indexes; writers commit inside it
        self._indexes: dict[int, _DenseIndex] = {}
        self._frequencies: dict[str, tuple[int, float]] = {}  # frequent term -> (count, when)
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode = WAL")
        try:
            self._create_schema()
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------

    def _connect(self) -> Any:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA synchronous = NORMAL")
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """The write connection inside ``BEGIN IMMEDIATE``; commits unless already done."""
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if conn.in_transaction:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _create_schema(self) -> None:
        with self._write() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS knowledge_meta (key TEXT PRIMARY KEY, value TEXT)"
            )
            for statement in _TABLES:
                conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM knowledge_meta WHERE key = 'dimension'"
            ).fetchone()
            if row is not None and int(row[0]) != self.dimension:
                if conn.execute("SELECT EXISTS (SELECT 1 FROM knowledge_chunks)").fetchone()[0]:
                    raise dimension_mismatch(int(row[0]), self.dimension)
                conn.execute("DROP TABLE IF EXISTS knowledge_vectors")  # empty: re-dimension
            conn.execute(
                "INSERT OR REPLACE INTO knowledge_meta (key, value) VALUES ('dimension', ?)",
                (str(self.dimension),),
            )
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS knowledge_vectors USING vec0("
                f"embedding float[{self.dimension}] distance_metric=cosine)"
            )

    def close(self) -> None:
        # Under the write lock: a write still running in a worker thread (ingestion is
        # cancelled at shutdown, its thread is not) finishes before its connection goes.
        # Closing a connection under a running statement crashes the process.
        with self._write_lock:
            with self._index_lock:
                self._indexes.clear()
            with self._connections_lock:
                connections, self._connections = self._connections, []
            for conn in connections:
                conn.close()

    # -- writes --------------------------------------------------------------

    def add(self, chunks: Sequence[ChunkRow], vectors: np.ndarray) -> list[int]:
        matrix = unit_rows(vectors, len(chunks), self.dimension)
        if not chunks:
            return []
        with self._write() as conn:
            last = conn.execute(
                "SELECT max(coalesce((SELECT seq FROM sqlite_sequence "
                "WHERE name = 'knowledge_chunks'), 0), coalesce(max(id), 0)) "
                "FROM knowledge_chunks"
            ).fetchone()[0]
            ids = list(range(last + 1, last + 1 + len(chunks)))
            conn.executemany(
                "INSERT INTO knowledge_chunks (id, kb_id, document_id, ordinal, text, "
                "heading_path, page_start, page_end, char_start, char_end, published) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [
                    (
                        chunk_id,
                        c.kb_id,
                        c.document_id,
                        c.ordinal,
                        c.text,
                        json.dumps(list(c.heading_path), ensure_ascii=False),
                        c.page_start,
                        c.page_end,
                        c.char_start,
                        c.char_end,
                    )
                    for chunk_id, c in zip(ids, chunks, strict=True)
                ],
            )
            conn.executemany(
                "INSERT INTO knowledge_vectors (rowid, embedding) VALUES (?, ?)",
                zip(ids, (row.tobytes() for row in matrix), strict=True),
            )
        return ids

    def publish(self, kb_id: int, document_id: int) -> int:
        """Swap the document's hidden chunks in for its published ones.

        Without hidden chunks nothing changes (a repeated publish must not empty
        the document) and the number already published is returned. A hidden
        chunk added twice (the same ordinal) is published once.
        """
        with self._write() as conn:
            rows = self._rows(conn, "kb_id = ? AND document_id = ?", (kb_id, document_id))
            hidden = [chunk_id for chunk_id, published in rows if not published]
            old = [chunk_id for chunk_id, published in rows if published]
            if not hidden:
                return len(old)
            ordinals = conn.execute(
                f"SELECT id, ordinal FROM knowledge_chunks WHERE id IN {_IDS} ORDER BY id",
                (_json(hidden),),
            ).fetchall()
            # The first chunk of each ordinal wins; a repeat comes from a batch written again.
            first = {int(ordinal): int(chunk_id) for chunk_id, ordinal in reversed(ordinals)}
            hidden = sorted(first.values())
            repeated = sorted({int(row[0]) for row in ordinals} - set(hidden))
            self._remove(conn, old + repeated)
            conn.execute(
                f"UPDATE knowledge_chunks SET published = 1 WHERE id IN {_IDS}", (_json(hidden),)
            )
            self._commit_change(conn, kb_id, removed=old, added=hidden, document_id=document_id)
        return len(hidden)

    def discard_hidden(self, kb_id: int, document_id: int) -> int:
        with self._write() as conn:
            rows = self._rows(
                conn, "kb_id = ? AND document_id = ? AND published = 0", (kb_id, document_id)
            )
            self._remove(conn, [chunk_id for chunk_id, _ in rows])
        return len(rows)

    def delete_document(self, kb_id: int, document_id: int) -> int:
        with self._write() as conn:
            rows = self._rows(conn, "kb_id = ? AND document_id = ?", (kb_id, document_id))
            self._remove(conn, [chunk_id for chunk_id, _ in rows])
            published = [chunk_id for chunk_id, is_published in rows if is_published]
            if published:
                self._commit_change(conn, kb_id, removed=published)
        return len(rows)

    def delete_base(self, kb_id: int) -> int:
        with self._write() as conn:
            rows = self._rows(conn, "kb_id = ?", (kb_id,))
            self._remove(conn, [chunk_id for chunk_id, _ in rows])
            if any(published for _, published in rows):
                self._commit_change(conn, kb_id, drop=True)
        return len(rows)

    @staticmethod
    def _rows(conn: Any, where: str, params: tuple[int, ...]) -> list[tuple[int, int]]:
        """``(id, published)`` of the chunks ``where`` selects."""
        sql = f"SELECT id, published FROM knowledge_chunks WHERE {where} ORDER BY id"
        return [(int(r[0]), int(r[1])) for r in conn.execute(sql, params).fetchall()]

    @staticmethod
    def _remove(conn: Any, ids: Sequence[int]) -> None:
        """Delete chunks with their vectors (the FTS rows go by trigger)."""
        if not ids:
            return
        conn.executemany("DELETE FROM knowledge_vectors WHERE rowid = ?", [(i,) for i in ids])
        conn.execute(f"DELETE FROM knowledge_chunks WHERE id IN {_IDS}", (_json(ids),))

    def _commit_change(
        self,
        conn: Any,
        kb_id: int,
        *,
        removed: Sequence[int] = (),
        added: Sequence[int] = (),
        document_id: int = 0,
        drop: bool = False,
    ) -> None:
        """Commit a change to a base's published chunks and bring its matrix along.

        The matrix is updated in place only if it held the version just before
        this change; otherwise (or with ``drop``) it is dropped and the next
        search reloads it.
        """
        version = self._bump(conn, kb_id)
        vectors = None
        if added and kb_id in self._indexes:  # read without the lock: only a hint
            found, vectors = self._vectors(conn, added)
        with self._index_lock:
            conn.execute("COMMIT")
            index = self._indexes.get(kb_id)
            if index is None:
                return
            if drop or index.version != version - 1 or (added and vectors is None):
                del self._indexes[kb_id]
                return
            index.remove(removed)
            if vectors is not None:
                index.append(found, np.full(len(found), document_id, dtype=np.int64), vectors)
            index.version = version

    @staticmethod
    def _bump(conn: Any, kb_id: int) -> int:
        """Count a change to a base's published chunks; return the new version."""
        row = conn.execute(
            "INSERT INTO knowledge_versions (kb_id, version) VALUES (?, 1) "
            "ON CONFLICT (kb_id) DO UPDATE SET version = version + 1 RETURNING version",
            (kb_id,),
        ).fetchone()
        return int(row[0])

    # -- searches ------------------------------------------------------------

    def lexical(
        self, kb_ids: Sequence[int], query: str, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        terms = query_terms(query)
        documents = filters.document_ids if filters else None
        if not terms or not kb_ids or k <= 0 or (documents is not None and not documents):
            return []
        conn = self._reader()
        match = self._match_expression(conn, terms)
        if match is None:
            return []
        sql = (
            "SELECT c.id, bm25(knowledge_fts) AS rank FROM knowledge_fts "
            "JOIN knowledge_chunks AS c ON c.id = knowledge_fts.rowid "
            f"WHERE knowledge_fts MATCH ? AND c.published = 1 AND c.kb_id IN {_IDS}"
        )
        params: list[Any] = [match, _json(kb_ids)]
        if documents is not None:
            sql += f" AND c.document_id IN {_IDS}"
            params.append(_json(documents))
        if filters is not None and filters.excluded_document_ids:
            sql += f" AND c.document_id NOT IN {_IDS}"
            params.append(_json(filters.excluded_document_ids))
        sql += " ORDER BY rank, c.id LIMIT ?"
        params.append(k)
        rows = conn.execute(sql, params).fetchall()
        return [Hit(chunk_id=int(r[0]), score=-float(r[1])) for r in rows]

    def _match_expression(self, conn: Any, terms: list[str]) -> str | None:
        """The FTS5 query for ``terms``, cut down to what can be ranked in time.

        FTS5 computes BM25 for every matching row before sorting, about 3 us a
        row at 100k chunks: see :func:`.terms.plan_terms` for how terms are
        chosen to keep that within ``LEXICAL_BUDGET`` rows.
        """
        frequency = {term: self._document_frequency(conn, term) for term in terms}
        total = conn.execute("SELECT count(*) FROM knowledge_chunks").fetchone()[0]
        plan = plan_terms(frequency, total, LEXICAL_BUDGET)
        if plan is None:
            return None
        if not plan.require_all:
            return " OR ".join(f'"{term}"' for term in plan.terms)
        every = " AND ".join(f'"{term}"' for term in plan.terms)
        if _count(conn, every, LEXICAL_BUDGET + 1) > LEXICAL_BUDGET:
            return None  # only common words: leave the question to dense search
        return every

    def _document_frequency(self, conn: Any, term: str) -> int:
        """How many chunks hold ``term``; exact up to the budget, cached above it.

        Counting is a walk over the term's postings (~0.06 us each), cheap when
        stopped at the budget. Frequent terms are few and recur, so their
        exact counts are kept for a while (they only steer the plan above).
        """
        cached = self._frequencies.get(term)
        if cached is not None and time.monotonic() - cached[1] < _FREQUENCY_TTL_S:
            return cached[0]
        quoted = f'"{term}"'
        count = _count(conn, quoted, LEXICAL_BUDGET + 1)
        if count > LEXICAL_BUDGET:
            count = _count(conn, quoted)
            if len(self._frequencies) >= _FREQUENCY_CACHE:
                self._frequencies.clear()
            self._frequencies[term] = (count, time.monotonic())
        return count

    def dense(
        self, kb_ids: Sequence[int], vector: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        query = unit_vector(vector, self.dimension)
        documents = filters.document_ids if filters else None
        if not kb_ids or k <= 0 or (documents is not None and not documents):
            return []
        wanted = np.fromiter(documents, dtype=np.int64) if documents is not None else None
        excluded = filters.excluded_document_ids if filters else frozenset()
        unwanted = np.fromiter(excluded, dtype=np.int64) if excluded else None
        hits: list[Hit] = []
        for vectors, ids, docs, alive in self._snapshots(kb_ids):
            if not len(ids):
                continue
            scores = vectors @ query
            mask = alive
            if wanted is not None:
                in_filter = np.isin(docs, wanted)
                mask = in_filter if mask is None else mask & in_filter
            if unwanted is not None:
                allowed = ~np.isin(docs, unwanted)
                mask = allowed if mask is None else mask & allowed
            if mask is not None:
                scores = np.where(mask, scores, -np.inf)
            for i in _top(scores, k):
                if scores[i] == -np.inf:
                    break
                hits.append(Hit(chunk_id=int(ids[i]), score=float(scores[i])))
        hits.sort(key=lambda hit: (-hit.score, hit.chunk_id))
        return hits[:k]

    def _snapshots(
        self, kb_ids: Sequence[int]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
        conn = self._reader()
        with self._index_lock:
            versions = dict(
                conn.execute(
                    f"SELECT kb_id, version FROM knowledge_versions WHERE kb_id IN {_IDS}",
                    (_json(kb_ids),),
                ).fetchall()
            )
            snapshots = []
            for kb_id in dict.fromkeys(kb_ids):
                index = self._indexes.get(kb_id)
                if index is None or index.version != versions.get(kb_id, 0):
                    index = self._indexes[kb_id] = self._load(conn, kb_id)
                snapshots.append(index.snapshot())
        return snapshots

    def _load(self, conn: Any, kb_id: int) -> _DenseIndex:
        """Read a base's published vectors, with the version they match, in one snapshot."""
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT version FROM knowledge_versions WHERE kb_id = ?", (kb_id,)
            ).fetchone()
            loaded = self._read_vector_blocks(conn, kb_id) or self._read_vec0(conn, kb_id)
        finally:
            conn.execute("COMMIT")
        return _DenseIndex(int(row[0]) if row else 0, *loaded)

    def _read_vec0(self, conn: Any, kb_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, document ids, vectors)`` through ``vec0``: ~1.4 s for 100k vectors."""
        rows = conn.execute(
            "SELECT c.id, c.document_id, v.embedding FROM knowledge_chunks AS c "
            "JOIN knowledge_vectors AS v ON v.rowid = c.id "
            "WHERE c.kb_id = ? AND c.published = 1",
            (kb_id,),
        ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        documents = np.array([r[1] for r in rows], dtype=np.int64)
        return ids, documents, _unpack([r[2] for r in rows], self.dimension)

    def _read_vector_blocks(
        self, conn: Any, kb_id: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The same from the blocks ``vec0`` keeps its vectors in: ~0.2 s for 100k.

        sqlite-vec 0.1 stores vectors in blobs of ``chunk_size`` rows
        (``*_vector_chunks00``) and maps each rowid to a blob and an offset
        (``*_rowids``). Reading the blobs directly avoids a virtual-table call
        per vector, which dominates a cold start or a reload after another
        process changed the base. Those tables are sqlite-vec's internals, so
        the result is checked (every published chunk found, every vector of
        unit length, as ``add`` stored it) and ``None`` sends the caller back
        to the public ``vec0`` path.
        """
        try:
            rows = conn.execute(
                "SELECT c.id, c.document_id, r.chunk_id, r.chunk_offset "
                "FROM knowledge_chunks AS c "
                "LEFT JOIN knowledge_vectors_rowids AS r ON r.rowid = c.id "
                "WHERE c.kb_id = ? AND c.published = 1",
                (kb_id,),
            ).fetchall()
            if not rows or any(r[2] is None for r in rows):
                return None
            table = np.array(rows, dtype=np.int64)
            blocks = np.unique(table[:, 2])
            blobs = dict(
                conn.execute(
                    "SELECT rowid, vectors FROM knowledge_vectors_vector_chunks00 "
                    f"WHERE rowid IN {_IDS}",
                    (_json(blocks),),
                ).fetchall()
            )
            per_block = len(blobs[int(blocks[0])]) // (4 * self.dimension)
            matrix = np.concatenate(
                [_unpack([blobs[int(block)]], self.dimension * per_block) for block in blocks]
            ).reshape(-1, self.dimension)
            offsets = table[:, 3]
            if per_block == 0 or offsets.min() < 0 or offsets.max() >= per_block:
                return None
            vectors = matrix[np.searchsorted(blocks, table[:, 2]) * per_block + offsets]
        except (sqlite3.Error, KeyError, ValueError, IndexError):
            return None
        norms = np.linalg.norm(vectors, axis=1)
        if not np.all((np.abs(norms - 1) < 1e-3) | (norms == 0)):
            return None
        return table[:, 0].copy(), table[:, 1].copy(), vectors

    def similarities(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        query = unit_vector(vector, self.dimension)
        wanted = list(dict.fromkeys(int(i) for i in chunk_ids))
        found: dict[int, np.ndarray] = {}
        with self._index_lock:
            for index in self._indexes.values():
                for chunk_id in wanted:
                    row = index.rows.get(chunk_id)
                    if row is not None:
                        found[chunk_id] = index.vectors[row]
        missing = [i for i in wanted if i not in found]
        if missing:
            ids, vectors = self._vectors(self._reader(), missing)
            found.update(zip(ids.tolist(), vectors, strict=True))
        return {i: float(found[i] @ query) for i in wanted if i in found}

    def _vectors(self, conn: Any, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        rows = conn.execute(
            f"SELECT rowid, embedding FROM knowledge_vectors WHERE rowid IN {_IDS}",
            (_json(ids),),
        ).fetchall()
        found = np.array([r[0] for r in rows], dtype=np.int64)
        return found, _unpack([r[1] for r in rows], self.dimension)

    # -- reads ---------------------------------------------------------------

    def get(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not chunk_ids:
            return {}
        rows = (
            self._reader()
            .execute(
                f"SELECT {_CHUNK_COLUMNS} FROM knowledge_chunks WHERE id IN {_IDS}",
                (_json(chunk_ids),),
            )
            .fetchall()
        )
        return {int(r[0]): _chunk(r) for r in rows}

    def chunks(
        self, kb_id: int, document_id: int, *, offset: int = 0, limit: int = 100
    ) -> list[ChunkRow]:
        rows = (
            self._reader()
            .execute(
                f"SELECT {_CHUNK_COLUMNS} FROM knowledge_chunks "
                "WHERE kb_id = ? AND document_id = ? AND published = 1 "
                "ORDER BY ordinal, id LIMIT ? OFFSET ?",
                (kb_id, document_id, max(0, limit), max(0, offset)),
            )
            .fetchall()
        )
        return [_chunk(r) for r in rows]

    def count(self, kb_id: int, document_id: int | None = None) -> int:
        sql = "SELECT count(*) FROM knowledge_chunks WHERE kb_id = ? AND published = 1"
        params: tuple[int, ...] = (kb_id,)
        if document_id is not None:
            sql += " AND document_id = ?"
            params = (kb_id, document_id)
        return int(self._reader().execute(sql, params).fetchone()[0])


def _count(conn: Any, match: str, cap: int | None = None) -> int:
    """Rows matching an FTS5 query, counting at most ``cap``."""
    limit = "" if cap is None else f" LIMIT {int(cap)}"
    sql = f"SELECT count(*) FROM (SELECT 1 FROM knowledge_fts WHERE knowledge_fts MATCH ?{limit})"
    return int(conn.execute(sql, (match,)).fetchone()[0])


def _json(ids: Any) -> str:
    return json.dumps([int(i) for i in ids])


def _unpack(blobs: list[bytes], dimension: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dimension)


def _chunk(row: Sequence[Any]) -> ChunkRow:
    return ChunkRow(
        id=int(row[0]),
        kb_id=int(row[1]),
        document_id=int(row[2]),
        ordinal=int(row[3]),
        text=row[4],
        heading_path=tuple(json.loads(row[5])),
        page_start=row[6],
        page_end=row[7],
        char_start=int(row[8]),
        char_end=int(row[9]),
    )
