"""The Alembic migrations build exactly the tables the ORM models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from enclave.storage.db import open_database
from enclave.storage.models import Base


def test_migrations_match_the_models(tmp_path: Path) -> None:
    engine, _ = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": False, "compare_server_default": False}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    # Timestamps filled by server defaults are nullable in the migrations; the models
    # always set them. Everything else (tables, columns, indexes) must match.
    def timestamp_nullability(diff: object) -> bool:
        return (
            isinstance(diff, list)
            and len(diff) == 1
            and diff[0][0] == "modify_nullable"
            and diff[0][3].endswith("_at")
        )

    assert [d for d in differences if not timestamp_nullability(d)] == []
