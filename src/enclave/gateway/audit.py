"""The audit log: one tamper-evident entry per gateway request, written off the request path.

``AuditLog.append`` queues an ``AuditRecord`` and returns at once; a background
thread (``storage.batch_writer``) writes the queue in batches, each batch in
one transaction. Entries record who asked for what, how the request was
classified and why, where it was sent and how it ended. Detector findings are
stored as type and count only, never the matched values; prompt and response
text are stored only for workspaces that opt in.

Hash chain. Each entry gets ``seq`` (1, 2, 3, ... assigned by the writer) and

    hash = sha256_hex(prev_hash + canonical_json([seq, entry]))

where ``prev_hash`` is the previous entry's hash (64 zeros for the first) and
``canonical_json`` is ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8, with times as ISO 8601 UTC strings
(``2026-11-01T10:00:00.000000Z``). The ``payload`` column holds
``canonical_json(entry)`` verbatim; ``time``, ``workspace``, ``key_id`` and
``outcome`` are copied out of it into indexed columns. ``verify_chain`` streams
the table in ``seq`` order, recomputes every hash and names the first entry
that was edited (hash mismatch, or an indexed column that disagrees with the
hashed entry), deleted (a gap in ``seq``) or moved (``prev_hash`` does not
match the entry before). ``export_jsonl`` writes lines that carry ``seq``,
``prev_hash``, ``hash`` and ``entry``, so anyone can check an export with the
formula above.

Limits. The chain proves that what is there is unchanged, not that nothing
was cut off the end: deleting the newest entries leaves a valid, shorter
chain. So after every batch the writer rewrites a small head file
(``$ENCLAVE_HOME/audit.head``: ``{"seq": ..., "hash": ...}``, via a temporary
file and ``os.replace``), and ``verify_chain`` compares the log's end with it.
Someone who can rewrite both the database and the head file can still forge a
consistent history; copy the head hash elsewhere (or export regularly) if that
matters. The head file also keeps a restart honest: if the log ends before the
head, the writer continues after the head, leaving a gap that verification
reports. To start a new log on purpose, archive and remove both the database
table and the head file.

Only one writing process per database is supported: the writer keeps the last
``seq`` and hash in memory (reading them from the database when it starts),
so two servers on one database would fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.storage.batch_writer import BatchWriter
from enclave.storage.models import AuditEntryRow

if TYPE_CHECKING:
    from enclave.settings import Settings

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Core inserts: the ORM's per-row bookkeeping would double the writer's CPU time.
AUDIT_TABLE = AuditEntryRow.metadata.tables["audit_log"]
# Rows fetched per round trip when streaming the table.
STREAM_BATCH = 5000


def audit_head_path(settings: Settings) -> Path:
    """Where the server keeps the audit log's head file."""
    return settings.home / "audit.head"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What happened to one request. ``time`` is timezone-aware (UTC)."""

    time: datetime
    key_id: int | None
    workspace: str
    endpoint: str
    requested_model: str
    classification: str
    reasons: tuple[str, ...]
    provider: str | None
    location: str | None
    outcome: str  # "ok", "denied", "error", "cancelled", "rate_limited"
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    error_code: str | None = None
    findings: tuple[tuple[str, int], ...] = ()  # detector type and count, never values
    prompt_text: str | None = None  # only when the workspace opts in
    response_text: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of ``verify_chain``.

    ``entries`` counts the entries read (up to and including the first bad
    one); ``first_bad`` is the seq of the first bad entry; ``reason`` is a
    sentence for people. ``head_hash`` is the hash of the last entry that
    checked out, and ``notes`` holds caveats that do not fail verification
    (no head file, say).
    """

    ok: bool
    entries: int
    first_bad: int | None
    reason: str
    head_hash: str | None = None
    notes: tuple[str, ...] = field(default=())


def canonical_json(value: Any) -> str:
    """The one JSON spelling that entries are stored in (and hashed over, as stored).

    orjson with sorted keys, for speed on the write path; values it refuses
    (lone surrogates, huge integers) fall back to the standard library.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    # Lone surrogates (valid in JSON input, invalid in UTF-8) would fail every write.
    return text.encode("utf-8", "replace").decode("utf-8")


def entry_hash(prev_hash: str, seq: int, payload: str) -> str:
    """``sha256(prev_hash + canonical_json([seq, entry]))`` from the stored payload text."""
    # Byte-for-byte canonical_json([seq, entry]) when payload is canonical_json(entry).
    return hashlib.sha256(f"{prev_hash}[{seq},{payload}]".encode()).hexdigest()


def iso_utc(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``, the form used in entries."""
    return _as_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_utc(value: datetime) -> datetime:
    # A naive time is taken as UTC rather than failing the batch it is in.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _entry(record: AuditRecord) -> dict[str, Any]:
    latency = float(record.latency_ms)
    return {
        "time": iso_utc(record.time),
        "key_id": None if record.key_id is None else int(record.key_id),
        # Truncated to the indexed columns' widths, so that column and entry agree.
        "workspace": str(record.workspace)[:64],
        "endpoint": record.endpoint,
        "requested_model": record.requested_model,
        "classification": record.classification,
        "reasons": [str(reason) for reason in record.reasons],
        "provider": record.provider,
        "location": record.location,
        "outcome": str(record.outcome)[:16],
        "status": int(record.status),
        "prompt_tokens": int(record.prompt_tokens),
        "completion_tokens": int(record.completion_tokens),
        "latency_ms": round(latency, 3) if math.isfinite(latency) else None,
        "error_code": record.error_code,
        "findings": [{"type": str(kind), "count": int(count)} for kind, count in record.findings],
        "prompt_text": record.prompt_text,
        "response_text": record.response_text,
    }


def _entry_or_placeholder(record: AuditRecord) -> tuple[dict[str, Any], str]:
    """The entry and its payload; a record that cannot be encoded becomes a placeholder.

    One malformed record must not wedge the writer (it would be retried
    forever), nor vanish: the placeholder keeps its place in the chain.
    """
    try:
        entry = _entry(record)
        return entry, canonical_json(entry)
    except Exception as exc:
        log.error("audit log: a record could not be encoded (%s)", type(exc).__name__)
        entry = {
            "time": iso_utc(datetime.now(UTC)),
            "key_id": None,
            "workspace": "",
            "outcome": "unrecordable",
            "error": type(exc).__name__,
        }
        return entry, canonical_json(entry)


def _read_head(path: Path) -> tuple[int, str] | None:
    """The head file's (seq, hash); None if there is none. ValueError if unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the head file {path} is unreadable ({type(exc).__name__})") from exc
    seq = data.get("seq") if isinstance(data, dict) else None
    digest = data.get("hash") if isinstance(data, dict) else None
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise ValueError(f"the head file {path} is unreadable (no seq and hash)")
    return seq, digest


def _write_head(path: Path, seq: int, digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(canonical_json({"seq": seq, "hash": digest}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


class AuditLog:
    """Appends ``AuditRecord``s to the hash-chained ``audit_log`` table in batches."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        flush_interval: float = 0.25,
        max_batch: int = 1000,
        head_file: Path | None = None,
    ) -> None:
        self._sessions = sessions
        self.head_file = head_file
        # (seq, hash) of the last entry written; None means "read it from the database".
        self._tail: tuple[int, str] | None = None
        # What the tail will be if the batch in flight commits; see _write_batch.
        self._attempt: tuple[int, str] | None = None
        self._writer: BatchWriter[AuditRecord] = BatchWriter(
            "audit log", self._write_batch, flush_interval=flush_interval, max_batch=max_batch
        )

    def start(self) -> None:
        """Start the background writer thread."""
        self._writer.start()

    def append(self, record: AuditRecord) -> None:
        """Queue an entry. O(1), thread-safe, never waits for the database, never raises."""
        self._writer.put(record)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every entry appended so far is committed (and the head file updated)."""
        self._writer.flush(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and stop the writer thread."""
        self._writer.close(timeout)

    def _load_tail(self, session: Session) -> tuple[int, str]:
        last = session.execute(
            select(AuditEntryRow.seq, AuditEntryRow.hash)
            .order_by(AuditEntryRow.seq.desc())
            .limit(1)
        ).first()
        tail = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
        if self.head_file is None:
            return tail
        try:
            head = _read_head(self.head_file)
        except ValueError as exc:
            log.error("audit log: %s; continuing from the database", exc)
            return tail
        if head is not None and head[0] > tail[0]:
            # Keep the evidence: continuing after the head leaves a gap that verify reports.
            log.error(
                "audit log: the database ends at entry %d but the head file records %d; "
                "entries were deleted. Continuing after %d; run `enclave audit verify`.",
                tail[0],
                head[0],
                head[0],
            )
            return head
        return tail

    def _write_batch(self, batch: list[AuditRecord]) -> None:
        with self._sessions() as session:
            if self._tail is None:
                self._tail = self._load_tail(session)
                if self._attempt is not None and self._tail == self._attempt:
                    # The last attempt committed although it reported an error.
                    self._attempt = None
                    self._update_head()
                    return
            seq, prev_hash = self._tail
            rows = []
            for record in batch:
                seq += 1
                entry, payload = _entry_or_placeholder(record)
                digest = entry_hash(prev_hash, seq, payload)
                rows.append(
                    {
                        "seq": seq,
                        "time": datetime.fromisoformat(entry["time"]),
                        "workspace": entry["workspace"],
                        "key_id": entry["key_id"],
                        "outcome": entry["outcome"],
                        "payload": payload,
                        "prev_hash": prev_hash,
                        "hash": digest,
                    }
                )
                prev_hash = digest
            self._attempt = (seq, prev_hash)
            try:
                session.execute(insert(AUDIT_TABLE), rows)
                session.commit()
            except BaseException:
                self._tail = None  # re-read before the retry: the commit may have landed
                raise
        self._tail, self._attempt = self._attempt, None
        self._update_head()

    def _update_head(self) -> None:
        if self.head_file is None or self._tail is None:
            return
        try:
            _write_head(self.head_file, *self._tail)
        except OSError as exc:
            # The entries are committed; the next batch rewrites the head.
            log.error("audit log: could not write the head file %s (%s)", self.head_file, exc)


def _stream(session: Session, since: datetime | None = None) -> Iterator[Any]:
    table = AuditEntryRow
    statement = select(
        table.seq,
        table.time,
        table.workspace,
        table.key_id,
        table.outcome,
        table.payload,
        table.prev_hash,
        table.hash,
    ).order_by(table.seq)
    if since is not None:
        statement = statement.where(table.time >= _as_utc(since))
    yield from session.execute(statement.execution_options(yield_per=STREAM_BATCH))


def _column_mismatch(row: Any) -> str | None:
    """The first indexed column that disagrees with the hashed entry, if any."""
    try:
        entry = orjson.loads(row.payload)  # several times faster than json on long logs
    except orjson.JSONDecodeError:
        return "payload"
    if not isinstance(entry, dict):
        return "payload"
    if entry.get("time") != iso_utc(row.time):
        return "time"
    for column in ("workspace", "key_id", "outcome"):
        if entry.get(column) != getattr(row, column):
            return column
    return None


def verify_chain(sessions: sessionmaker[Session], head_file: Path | None = None) -> VerifyResult:
    """Recompute the chain in seq order and name the first bad entry.

    Streams the table, so memory stays flat however long the log is. With
    ``head_file``, also checks that the log still reaches the recorded head.
    """
    notes: list[str] = []
    head: tuple[int, str] | None = None
    if head_file is not None:
        # Read before the table: the writer commits before it moves the head,
        # so every entry the head names is already visible to the query below.
        try:
            head = _read_head(head_file)
        except ValueError as exc:
            return VerifyResult(False, 0, None, str(exc))
    entries, last_seq, last_hash = 0, 0, GENESIS_HASH
    hash_at_head: str | None = None

    def bad(seq: int, reason: str) -> VerifyResult:
        return VerifyResult(False, entries, seq, reason, last_hash if entries else None)

    with sessions() as session:
        for row in _stream(session):
            entries += 1
            seq = row.seq
            if seq != last_seq + 1:
                if seq - last_seq == 2:
                    missing = f"entry {last_seq + 1} is missing"
                else:
                    missing = f"entries {last_seq + 1} to {seq - 1} are missing"
                if last_seq == 0:
                    return bad(1, f"{missing} (the log starts at seq {seq})")
                return bad(last_seq + 1, f"{missing} (seq {last_seq} is followed by {seq})")
            if row.prev_hash != last_hash:
                if last_seq == 0:
                    reason = (
                        f"entry {seq} is out of order (it is first but does not start the chain)"
                    )
                else:
                    reason = (
                        f"entry {seq} is out of order (prev_hash does not match entry "
                        f"{last_seq}, or entry {last_seq} was rewritten)"
                    )
                return bad(seq, reason)
            if entry_hash(row.prev_hash, seq, row.payload) != row.hash:
                return bad(seq, f"entry {seq} was edited (hash mismatch)")
            column = _column_mismatch(row)
            if column is not None:
                return bad(
                    seq,
                    f"entry {seq} was edited (column '{column}' does not match the hashed entry)",
                )
            if head is not None and seq == head[0]:
                hash_at_head = row.hash
            last_seq, last_hash = seq, row.hash
    if head is not None:
        head_seq, head_hash = head
        if last_seq < head_seq:
            return VerifyResult(
                False,
                entries,
                last_seq + 1,
                f"the log ends at {last_seq} but the head file records {head_seq} entries "
                "(tail deleted)",
                last_hash if entries else None,
            )
        if head_seq > 0 and hash_at_head != head_hash:
            return VerifyResult(
                False,
                entries,
                head_seq,
                f"entry {head_seq} does not match the head file (the tail was rewritten)",
                last_hash,
            )
    elif head_file is not None and entries:
        notes.append(f"no head file at {head_file}: deleting the newest entries would go unnoticed")
    elif head_file is None:
        notes.append("no head file given: deleting the newest entries would go unnoticed")
    return VerifyResult(
        True,
        entries,
        None,
        f"{entries} entries, chain intact",
        last_hash if entries else None,
        tuple(notes),
    )


def export_jsonl(
    sessions: sessionmaker[Session], out: TextIO, since: datetime | None = None
) -> int:
    """Write entries (``time >= since``) as JSON Lines; return the number written.

    Each line is ``{"entry": {...}, "hash": ..., "prev_hash": ..., "seq": ...}``
    in canonical form, so ``hash`` can be rechecked from the line alone. Split
    on ``\\n`` only: entries may contain other Unicode line separators.
    """
    count = 0
    with sessions() as session:
        for row in _stream(session, since):
            # The stored text goes out byte for byte as it was hashed; text that is
            # not JSON (only a tampered row) goes out as a string, so the line parses.
            entry = row.payload
            try:
                json.loads(entry)
            except ValueError:
                entry = json.dumps(entry, ensure_ascii=False)
            out.write(
                f'{{"entry":{entry},"hash":{json.dumps(row.hash)},'
                f'"prev_hash":{json.dumps(row.prev_hash)},"seq":{row.seq}}}\n'
            )
            count += 1
    return count
