"""Database rows. They stay in ``storage/``: services turn them into domain objects.

The schema is portable SQL (no SQLite-only types) because Postgres follows.
Every change to it goes through an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite keeps no zone, so values are converted to UTC on the way in and
    marked UTC on the way out; Postgres (``timestamptz``) round-trips as is.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # First characters of the key, for people to recognise it in listings.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key; keys are 256-bit random, so no salt or KDF is needed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditEntryRow(Base):
    """One entry of the hash-chained audit log (``gateway/audit.py``); append only.

    ``payload`` is the canonical JSON of the entry and is what the hash covers;
    the other columns copy fields out of it for filtering and are checked
    against it by ``verify_chain``.
    """

    __tablename__ = "audit_log"

    # Assigned by the single writer, not by the database: the hash covers it.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    workspace: Mapped[str] = mapped_column(String(64))
    # No foreign key: entries outlive keys, and an audit write must never fail on one.
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class UsageRow(Base):
    """Tokens spent by one request (``gateway/usage.py``); append only."""

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # The UTC day of ``time``, stored so reports group portably (no SQL date functions).
    day: Mapped[date] = mapped_column(Date, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    workspace: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(255))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    # Requests folded into this row: a batch stores one row per day, key and model.
    requests: Mapped[int] = mapped_column(Integer, server_default="1")
