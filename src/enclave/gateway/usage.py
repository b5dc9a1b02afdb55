"""The usage ledger: tokens (and seconds of audio) spent per request, reported by day.

A gateway request's usage is committed with its audit entry, in the audit
log's transaction (``AuditLog.commit``, see ``gateway/audit.py``), before the
client sees the end of the answer: a budget cannot be beaten by crashing the
server after the answer went out. ``insert_usage`` is what both writers run.
``UsageLedger.record`` queues one ``UsageRecord`` for other callers and
returns at once; a background thread (``storage.batch_writer``) inserts the
queue in batches. Each row stores its UTC ``day`` next to its time, so ``report``
groups with a plain ``GROUP BY day`` that means the same on SQLite and
Postgres, with no dialect-specific date functions and no local time zones.

``tokens_since`` sums tokens per workspace and per key, which the server uses
to seed token budgets after a restart. Only one writing process per database
is assumed, like the audit log, though here two would merely both add rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.storage.batch_writer import BatchWriter
from enclave.storage.models import UsageRow

# Core inserts: the ORM's per-row bookkeeping would double the writer's CPU time.
USAGE_TABLE = UsageRow.metadata.tables["usage"]
# How long a report waits for pending records before giving up on a stuck database.
FLUSH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Tokens one request spent. ``time`` is timezone-aware (UTC)."""

    time: datetime
    key_id: int | None
    workspace: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float = 0.0  # audio transcribed or translated


@dataclass(frozen=True)
class UsageLine:
    """Requests, tokens and audio seconds for one UTC day, workspace, key, provider, model."""

    day: date
    workspace: str
    key_id: int | None
    provider: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used by ``GET /api/usage`` and ``enclave usage --json``."""
        return {
            "day": self.day.isoformat(),
            "workspace": self.workspace,
            "key_id": self.key_id,
            "provider": self.provider,
            "model": self.model,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "audio_seconds": round(self.audio_seconds, 3),
        }


def _as_utc(value: datetime) -> datetime:
    # A naive time is taken as UTC rather than failing the batch it is in.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _row(record: UsageRecord) -> dict[str, Any]:
    when = _as_utc(record.time)
    return {
        "time": when,
        "day": when.date(),
        "key_id": record.key_id,
        # Cut to the column widths: Postgres would refuse the whole batch otherwise.
        "workspace": str(record.workspace)[:64],
        "provider": str(record.provider)[:64],
        "model": str(record.model)[:255],
        "prompt_tokens": max(int(record.prompt_tokens), 0),
        "completion_tokens": max(int(record.completion_tokens), 0),
        "audio_seconds": max(float(record.audio_seconds), 0.0),
    }


def _fold(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sum a batch's rows per day, key, workspace, provider and model (one row each)."""
    folded: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        group = (row["day"], row["key_id"], row["workspace"], row["provider"], row["model"])
        total = folded.get(group)
        if total is None:
            folded[group] = {**row, "requests": 1}
        else:
            total["time"] = max(total["time"], row["time"])
            total["prompt_tokens"] += row["prompt_tokens"]
            total["completion_tokens"] += row["completion_tokens"]
            total["audio_seconds"] += row["audio_seconds"]
            total["requests"] += 1
    return list(folded.values())


def insert_usage(session: Session, records: list[UsageRecord]) -> None:
    """Insert ``records`` (summed per day, key and model) in ``session``; the caller commits."""
    if records:
        session.execute(insert(USAGE_TABLE), _fold([_row(record) for record in records]))


class UsageLedger:
    """Records tokens per request in batches and reports them by day."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        flush_interval: float = 0.25,
        max_batch: int = 1000,
    ) -> None:
        self._sessions = sessions
        self._writer: BatchWriter[UsageRecord] = BatchWriter(
            "usage ledger", self._write_batch, flush_interval=flush_interval, max_batch=max_batch
        )

    def start(self) -> None:
        """Start the background writer thread."""
        self._writer.start()

    def record(self, record: UsageRecord) -> None:
        """Queue one request's usage. O(1), thread-safe, never raises."""
        self._writer.put(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything recorded so far is committed."""
        self._writer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the writer thread."""
        self._writer.close(timeout)

    def _write_batch(self, batch: list[UsageRecord]) -> None:
        with self._sessions() as session:
            insert_usage(session, batch)
            session.commit()

    def report(
        self,
        *,
        since: date | None = None,
        until: date | None = None,
        workspace: str | None = None,
        key_id: int | None = None,
    ) -> list[UsageLine]:
        """Totals per UTC day, workspace, key, provider and model; ``until`` is inclusive.

        Writes pending records first (waiting up to ``FLUSH_TIMEOUT`` seconds, then
        ``TimeoutError``), so the report includes every request so far.
        """
        self.flush(FLUSH_TIMEOUT)
        columns = (
            UsageRow.day,
            UsageRow.workspace,
            UsageRow.key_id,
            UsageRow.provider,
            UsageRow.model,
        )
        statement = select(
            *columns,
            func.sum(UsageRow.requests).label("requests"),
            func.sum(UsageRow.prompt_tokens).label("prompt_tokens"),
            func.sum(UsageRow.completion_tokens).label("completion_tokens"),
            func.sum(UsageRow.audio_seconds).label("audio_seconds"),
        ).group_by(*columns)
        if since is not None:
            statement = statement.where(UsageRow.day >= since)
        if until is not None:
            statement = statement.where(UsageRow.day <= until)
        if workspace is not None:
            statement = statement.where(UsageRow.workspace == workspace)
        if key_id is not None:
            statement = statement.where(UsageRow.key_id == key_id)
        with self._sessions() as session:
            lines = [
                UsageLine(
                    day=row.day,
                    workspace=row.workspace,
                    key_id=row.key_id,
                    provider=row.provider,
                    model=row.model,
                    requests=int(row.requests),
                    prompt_tokens=int(row.prompt_tokens or 0),
                    completion_tokens=int(row.completion_tokens or 0),
                    audio_seconds=float(row.audio_seconds or 0.0),
                )
                for row in session.execute(statement)
            ]
        # Sorted here: databases disagree on where NULL keys go.
        lines.sort(
            key=lambda line: (
                line.day,
                line.workspace,
                line.key_id is not None,
                line.key_id or 0,
                line.provider,
                line.model,
            )
        )
        return lines

    def tokens_since(self, since: datetime) -> dict[tuple[str, str], int]:
        """Tokens spent since ``since``: ``{("workspace", name): n, ("key", str(id)): n}``."""
        self.flush(FLUSH_TIMEOUT)
        tokens = func.sum(UsageRow.prompt_tokens + UsageRow.completion_tokens)
        after = UsageRow.time >= _as_utc(since)
        totals: dict[tuple[str, str], int] = {}
        with self._sessions() as session:
            for name, total in session.execute(
                select(UsageRow.workspace, tokens).where(after).group_by(UsageRow.workspace)
            ):
                totals[("workspace", name)] = int(total or 0)
            for key_id, total in session.execute(
                select(UsageRow.key_id, tokens)
                .where(after, UsageRow.key_id.is_not(None))
                .group_by(UsageRow.key_id)
            ):
                totals[("key", str(key_id))] = int(total or 0)
        return totals
