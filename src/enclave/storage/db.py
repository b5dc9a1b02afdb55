"""Engine, sessions and migrations.

``open_database`` creates the engine for a URL and brings the schema to the
newest Alembic revision, so a fresh ``ENCLAVE_HOME`` and an old one both start
on the current schema. SQLite gets WAL mode and a busy timeout so the server
and the CLI can use the same file at once. It runs on ``pysqlite3`` (a
SQLite build that can load extensions), the library the knowledge store
uses for sqlite-vec on the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pysqlite3.dbapi2 as sqlite3
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # WAL with NORMAL sync cannot corrupt; a power cut may lose the last commit.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> None:
    """Upgrade the database behind ``engine`` to the newest revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    """Create the engine, migrate it, and return it with a session factory."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # The same SQLite library as the knowledge store (which loads sqlite-vec):
        # two SQLite copies on one file in one process can corrupt it.
        options["module"] = sqlite3
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
