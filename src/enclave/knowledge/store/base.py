"""The contract every chunk store keeps (SQLite + sqlite-vec, Postgres + pgvector).

A store holds chunks with their text, source location and a unit-length
embedding, and answers two kinds of search: lexical (BM25) and dense
(cosine). It knows nothing about workspaces or classes; the knowledge
service resolves those and passes knowledge-base ids.

Chunks are added *hidden* and become searchable only when their document
is published, so a half-ingested document is never retrieved and a changed
document is swapped for its new version in one step.

Methods are synchronous and thread-safe; async callers use
``asyncio.to_thread``. ``tests/integration/test_vector_store.py`` runs the
same contract suite against every implementation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk as stored: its text and exactly where it came from.

    ``text`` is ``markdown[char_start:char_end]`` of the document's extracted
    Markdown, so a citation can point at the exact passage.
    """

    kb_id: int
    document_id: int
    ordinal: int  # position of the chunk in its document, from 0
    text: str
    heading_path: tuple[str, ...] = ()
    page_start: int | None = None
    page_end: int | None = None
    char_start: int = 0
    char_end: int = 0
    id: int = 0  # assigned by the store

    def location(self) -> dict[str, Any]:
        """Where the chunk sits in its document, as the API shows it."""
        return {
            "page_start": self.page_start,
            "page_end": self.page_end,
            "heading_path": list(self.heading_path),
            "char_start": self.char_start,
            "char_end": self.char_end,
        }


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``score``: BM25 (higher is better) or cosine similarity."""

    chunk_id: int
    score: float


@dataclass(frozen=True, slots=True)
class Filters:
    """Restrictions on a search, applied inside the query (before ranking), so a chunk
    filtered out never takes a top-k place. ``document_ids=None`` means every document;
    ``excluded_document_ids`` are never searched (documents restricted to groups the
    reader is not in)."""

    document_ids: frozenset[int] | None = None
    excluded_document_ids: frozenset[int] = frozenset()


class VectorStore(ABC):
    """Chunks, BM25 and vectors for every knowledge base of one deployment."""

    dimension: int

    @abstractmethod
    def add(self, chunks: Sequence[ChunkRow], vectors: np.ndarray) -> list[int]:
        """Store hidden chunks with their unit-length float32 vectors; return their ids."""

    @abstractmethod
    def publish(self, kb_id: int, document_id: int) -> int:
        """Swap a document's hidden chunks in for its published ones, in one transaction.

        The previously published chunks of the document (an older version) are
        deleted and the hidden ones become searchable; returns how many are now
        published. Hidden chunks with the same ordinal are published once (the
        first added): an ingestion job taken over by another replica writes the
        batch it cannot know was stored again, and a document keeps each chunk once.
        """

    @abstractmethod
    def discard_hidden(self, kb_id: int, document_id: int) -> int:
        """Delete a document's hidden chunks (an interrupted ingestion); return how many."""

    @abstractmethod
    def delete_document(self, kb_id: int, document_id: int) -> int:
        """Remove a document's chunks, hidden or not; return how many."""

    @abstractmethod
    def delete_base(self, kb_id: int) -> int:
        """Remove every chunk of a knowledge base; return how many."""

    @abstractmethod
    def lexical(
        self, kb_ids: Sequence[int], query: str, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        """BM25 search over published chunks, best first. Free text in, no syntax errors."""

    @abstractmethod
    def dense(
        self, kb_ids: Sequence[int], vector: np.ndarray, k: int, filters: Filters | None = None
    ) -> list[Hit]:
        """Nearest published chunks by cosine similarity, best first."""

    @abstractmethod
    def similarities(self, chunk_ids: Sequence[int], vector: np.ndarray) -> dict[int, float]:
        """Cosine similarity of each given chunk to ``vector``."""

    @abstractmethod
    def get(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRow]:
        """The chunks with these ids (missing ids are left out)."""

    @abstractmethod
    def chunks(
        self, kb_id: int, document_id: int, *, offset: int = 0, limit: int = 100
    ) -> list[ChunkRow]:
        """A document's chunks in order, for browsing."""

    @abstractmethod
    def count(self, kb_id: int, document_id: int | None = None) -> int:
        """Published chunks in a base, or in one of its documents."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
