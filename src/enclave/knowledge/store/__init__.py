"""Chunk stores, chosen by the database URL: SQLite + sqlite-vec or Postgres + pgvector.

The knowledge store lives in the application's own database, so one
``database_url`` picks both. :func:`open_store` is the only place that knows
the backends; everything else sees a :class:`VectorStore`.
"""

from __future__ import annotations

from .base import ChunkRow, Filters, Hit, VectorStore

__all__ = ["ChunkRow", "Filters", "Hit", "VectorStore", "open_store"]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+")


def open_store(database_url: str, dimension: int) -> VectorStore:
    """The store for ``database_url`` (``sqlite:///path`` or ``postgresql://...``)."""
    if database_url.startswith("sqlite:///"):
        from .sqlite import SQLiteStore

        path = database_url.removeprefix("sqlite:///").split("?", 1)[0]
        if not path or path == ":memory:":
            raise ValueError(
                "the knowledge store needs a SQLite database file, not an in-memory database"
            )
        return SQLiteStore(path, dimension)
    if database_url.startswith(_POSTGRES_SCHEMES):
        from .postgres import PostgresStore

        return PostgresStore(database_url, dimension)
    scheme = database_url.split(":", 1)[0] or database_url
    raise ValueError(
        f"no knowledge store for database URL scheme {scheme!r}: "
        "use sqlite:///path/to/file.db or postgresql://user:password@host/database"
    )
