"""The audit log: one tamper-evident entry per gateway request, durable before the answer ends.

One background thread (``storage.batch_writer``) writes everything, each
batch in one transaction. Entries record who asked for what, how the request
was classified and why, where it was sent and how it ended. Detector findings
are stored as type and count only, never the matched values; prompt and
response text are stored only for workspaces that opt in.

Nothing answered unlogged. The gateway awaits two commits per request:

* ``intend(record)`` when the request is routed, before anything is sent to a
  provider: an *intent*, the entry as it would read had the request been
  interrupted, goes into the unchained ``audit_intents`` table;
* ``commit(record, usage)`` when it ends, before the client gets the last
  byte of the body or a stream's ``[DONE]``: the chained entry and the
  request's usage row, in the transaction that also deletes the intent.

Both wait for the batch holding them (group commit: whatever queued while the
previous batch was being written shares one transaction). If the database
cannot commit, they raise ``CommitFailed`` and the gateway answers 503 (or
ends a stream with an error event instead of ``[DONE]``); the entry stays
queued and is written when the database is back, with the outcome its
``fallback`` gives (``error``, ``audit_unavailable``). ``start`` turns every
intent left from the previous run (``kill -9``, power cut) into a chained
entry with outcome ``interrupted``, deleting the intents in the same
transaction. ``append`` still queues an entry without waiting, for events
that answer nobody (egress decisions, app actions).

What a commit means on disk: on SQLite (WAL, ``synchronous=NORMAL``) a commit
is in the WAL file when ``commit`` returns, so it survives the process being
killed (``kill -9``, OOM) at any moment; a power cut or kernel crash can lose
the commits since the last WAL checkpoint's fsync (the WAL is fsynced at each
checkpoint, not at each commit). Set ``PRAGMA synchronous=FULL`` in the
database for power-cut durability at one fsync per batch. On Postgres,
durability is ``synchronous_commit`` (on by default: WAL flushed at commit).

Hash chain. Each entry gets ``seq`` (1, 2, 3, ... assigned by the writer) and

    hash = sha256_hex(prev_hash + canonical_json([seq, entry]))

where ``prev_hash`` is the previous entry's hash (64 zeros for the first) and
``canonical_json`` is ``json.dumps(..., sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8, with times as ISO 8601 UTC strings
(``2026-11-01T10:00:00.000000Z``). The ``payload`` column holds
``canonical_json(entry)`` verbatim; ``time``, ``workspace``, ``key_id`` and
``outcome`` are copied out of it into indexed columns. The chain alone shows
that what is there is consistent, not that nobody rewrote it: the formula has
no secret, so anyone who can write the database can recompute it.

Signatures. What makes rewriting detectable is an Ed25519 key that is not in
the database (``audit_keys.py``). A signed record states "the chain had hash
H at entry N": ``{seq, hash, time, key_id, kind, adopted_from, signature}``,
the signature covering ``CHECKPOINT_DOMAIN + canonical_json(the other
fields)``. As H commits to every entry up to N, no entry up to N can change
(nor be inserted, deleted or moved) without breaking it. There are two kinds:

* the head (``$ENCLAVE_HOME/audit.head``, ``kind: "head"``), rewritten and
  signed after every batch (temporary file, fsync, ``os.replace``); it covers
  every committed entry, including those after the last checkpoint;
* checkpoints (``$ENCLAVE_HOME/audit.checkpoints``, one per line, appended and
  fsynced, never rewritten): on the first batch after a start, every
  ``audit.checkpoint_interval_s`` seconds or ``audit.checkpoint_entries``
  entries, and on ``close``. Each is also logged at INFO, so log shipping
  keeps a copy off the machine. They narrow an edit down to the entries
  between two checkpoints, and they keep the evidence when the head is gone.

Neither lives in the database: an attacker with database access only cannot
touch them, and one who can also write the files cannot sign. What no local
mechanism stops is replacing the head and checkpoints with older, validly
signed copies after deleting the newest entries; only copies kept elsewhere
(exports, shipped logs) catch that. ``docs/operations.md`` says what to keep.

``verify_chain`` streams the table in ``seq`` order, recomputes every hash and
names what is wrong: an entry edited (hash mismatch, or an indexed column
that disagrees with the hashed entry), deleted (a gap in ``seq``), moved
(``prev_hash`` does not match the entry before), a range rewritten with the
chain recomputed (it no longer reaches a signed hash), a tail deleted (the
log ends before the head or a checkpoint), entries appended without the key
(after the signed head), and a head or checkpoint that is missing, unsigned,
signed by a key it does not trust, or older than another. ``export_jsonl``
writes the head, the checkpoints and the entries, and ``verify_export`` checks
such a file with public keys only.

Restarts. The head also keeps a restart honest: if the log ends before the
head, the writer continues after the head, leaving a gap that verification
reports. If the log goes past the signed head (the process died between a
commit and the head's rewrite, or the log predates signing, or rows were
inserted while the server was stopped), the writer signs those entries in an
``adopted`` checkpoint, logs an error, and ``verify`` names them in a note. To
start a new log on purpose, archive and remove the table's rows, the head file
and the checkpoint file.

Replicas (``cluster.replicas: true``, Postgres). Several servers append to
one chain: each batch locks the single row of ``audit_chain_head`` (``SELECT
... FOR UPDATE``), reads the newest entry, chains its records after it and
stores the signed head in that row, all in the batch's transaction, so
appends are serialised in Postgres while group commit keeps them few. Every
replica signs with the same key (``audit.signing_key`` is required). The
signed head and the checkpoints live in the database (``audit_chain_head``,
``audit_checkpoints``) rather than in one replica's files, and each
checkpoint is also logged at INFO for log shipping; ``verify_chain(...,
shared=True)`` reads them there. Each intent names its replica; when a
replica stops heartbeating (``cluster.py``), another one chains its intents as
``interrupted`` (``sweep``), deleting them under the same lock, so an intent is
chained once whoever sweeps it. A replica paused longer than
``cluster.member_timeout_s`` mid-request would get its request recorded twice
(``interrupted`` by a sweeper, then its own outcome); keep the timeout well
above the longest pause.

Without ``cluster.replicas`` only one writing process per database is
supported: the writer keeps the last ``seq`` and hash in memory (reading them
from the database when it starts), so two servers on one database would fork
the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time as clock
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from enclave.errors import ConfigError
from enclave.gateway.audit_keys import AuditSigner, TrustedKeys, check_signature
from enclave.gateway.usage import UsageRecord, insert_usage
from enclave.storage.batch_writer import BatchWriter, describe_failure
from enclave.storage.models import (
    AuditChainHeadRow,
    AuditCheckpointRow,
    AuditEntryRow,
    AuditIntentRow,
)

if TYPE_CHECKING:
    from enclave.settings import Settings

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Core inserts: the ORM's per-row bookkeeping would double the writer's CPU time.
AUDIT_TABLE = AuditEntryRow.metadata.tables["audit_log"]
INTENT_TABLE = AuditIntentRow.metadata.tables["audit_intents"]
HEAD_TABLE = AuditChainHeadRow.metadata.tables["audit_chain_head"]
CHECKPOINT_TABLE = AuditCheckpointRow.metadata.tables["audit_checkpoints"]
# The longest the signed head trails the newest commit (while the server runs).
HEAD_LAG_S = 0.05
# The outcome of an entry recovered from an intent: the request was in flight.
INTERRUPTED = "interrupted"
# Rows fetched per round trip when streaming the table.
STREAM_BATCH = 5000
# Prefixed to what a head or checkpoint signature covers, so it signs nothing else.
CHECKPOINT_DOMAIN = b"enclave-audit-checkpoint-v1\n"
EXPORT_FORMAT = "enclave-audit-export-1"


def audit_head_path(settings: Settings) -> Path:
    """Where the server keeps the audit log's head file."""
    return settings.home / "audit.head"


def audit_checkpoint_path(settings: Settings) -> Path:
    """Where the server appends the audit log's signed checkpoints."""
    return settings.home / "audit.checkpoints"


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
    intent: str | None = None  # the intent this entry completes (deleted with its insert)
    user_id: int | None = None  # the person behind the key (auth/users.py); None: a service


@dataclass(frozen=True, slots=True)
class _Intent:
    """An intent to insert: the entry, encoded, as it reads if the request never ends."""

    id: str
    time: datetime
    payload: str
    replica: str | None = None


@dataclass(frozen=True, slots=True)
class _Interrupted:
    """An intent left from an earlier run, to chain (as stored) and delete."""

    id: str
    payload: str


_Item = AuditRecord | _Intent | _Interrupted | UsageRecord


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of ``verify_chain`` or ``verify_export``.

    ``entries`` counts the entries read (up to and including the first bad
    one); ``first_bad`` is the seq of the first bad entry (of the first that
    may be bad, when a signed hash narrows it to a range); ``reason`` is a
    sentence for people. ``head_hash`` is the hash of the last entry that
    checked out, and ``notes`` holds caveats that do not fail verification.
    ``checkpoints`` counts the signed records checked (head included) and
    ``key_ids`` names the keys that signed them.
    """

    ok: bool
    entries: int
    first_bad: int | None
    reason: str
    head_hash: str | None = None
    notes: tuple[str, ...] = field(default=())
    checkpoints: int = 0
    key_ids: tuple[str, ...] = field(default=())


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
        "user_id": None if record.user_id is None else int(record.user_id),
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


def _interrupted_entry(item: _Interrupted) -> tuple[dict[str, Any], str]:
    """The stored intent as the entry, or a placeholder if it is not one (edited by hand)."""
    try:
        entry = json.loads(item.payload)
        if isinstance(entry, dict) and entry.get("outcome") == INTERRUPTED:
            datetime.fromisoformat(entry["time"])
            str(entry["workspace"])
            return entry, item.payload
    except (ValueError, KeyError, TypeError):
        pass
    log.error("audit log: intent %s is not a readable entry", item.id[:32])
    entry = {
        "time": iso_utc(datetime.now(UTC)),
        "key_id": None,
        "workspace": "",
        "outcome": INTERRUPTED,
        "error": "unreadable intent",
    }
    return entry, canonical_json(entry)


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


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the chain had ``hash`` at entry ``seq`` (the head or a checkpoint).

    ``kind`` is ``head``, ``start``, ``periodic``, ``shutdown`` or ``adopted``;
    ``adopted_from`` (adopted only) is the last entry that was covered by a
    signature before this one, so entries after it were signed late.
    """

    seq: int
    hash: str
    time: str
    key_id: str
    kind: str
    adopted_from: int | None = None
    signature: str = ""

    def signed_fields(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "time": self.time,
            "key_id": self.key_id,
            "kind": self.kind,
            "adopted_from": self.adopted_from,
        }

    def message(self) -> bytes:
        return CHECKPOINT_DOMAIN + canonical_json(self.signed_fields()).encode()

    def to_dict(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": self.signature}

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def sign(
        cls,
        signer: AuditSigner,
        seq: int,
        digest: str,
        kind: str,
        adopted_from: int | None = None,
    ) -> Checkpoint:
        unsigned = cls(seq, digest, iso_utc(datetime.now(UTC)), signer.key_id, kind, adopted_from)
        return cls(**{**unsigned.signed_fields(), "signature": signer.sign(unsigned.message())})

    @classmethod
    def parse(cls, data: Any) -> Checkpoint:
        """From its JSON object; ValueError naming what is missing."""
        if not isinstance(data, dict):
            raise ValueError("is not a JSON object")
        seq, digest, adopted = data.get("seq"), data.get("hash"), data.get("adopted_from")
        if type(seq) is not int or seq < 0 or not isinstance(digest, str):
            raise ValueError("has no seq and hash")
        if adopted is not None and type(adopted) is not int:
            raise ValueError("has a malformed adopted_from")
        texts = {name: data.get(name) for name in ("time", "key_id", "kind", "signature")}
        if not all(isinstance(value, str) and value for value in texts.values()):
            raise ValueError("is not signed (no time, key_id, kind or signature)")
        return cls(seq, digest, adopted_from=adopted, **texts)  # type: ignore[arg-type]

    def problem(self, keys: TrustedKeys) -> str | None:
        """Why this record cannot be trusted, or None."""
        public_key = keys.get(self.key_id)
        if public_key is None:
            return (
                f"is signed by key {self.key_id}, which is not trusted "
                "(give its public key: --public-key, or audit.trusted_public_keys)"
            )
        if not check_signature(public_key, self.signature, self.message()):
            return "has a signature that does not verify (it was written without the signing key)"
        return None

    def describe(self) -> str:
        what = "the signed head" if self.kind == "head" else "the checkpoint"
        return f"{what} for entry {self.seq} (signed {self.time} by key {self.key_id})"


def _read_head_record(path: Path) -> Any:
    """The head file's JSON; None if there is none. ValueError if unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"the head file {path} is unreadable ({type(exc).__name__})") from exc


def _read_head(path: Path) -> tuple[int, str] | None:
    """The head file's (seq, hash), signed or not; None if none. ValueError if unreadable."""
    data = _read_head_record(path)
    if data is None:
        return None
    seq = data.get("seq") if isinstance(data, dict) else None
    digest = data.get("hash") if isinstance(data, dict) else None
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise ValueError(f"the head file {path} is unreadable (no seq and hash)")
    return seq, digest


def _read_signed_head(path: Path) -> Checkpoint | None:
    """The head as a signed record; None if there is none. ValueError if unreadable or unsigned."""
    data = _read_head_record(path)
    if data is None:
        return None
    try:
        return Checkpoint.parse(data)
    except ValueError as exc:
        raise ValueError(f"the head file {path} {exc}") from None


def _parse_stored(text: str | None, what: str) -> Checkpoint | None:
    """A signed record stored in the database; None (logged) if absent or unreadable."""
    if text is None:
        return None
    try:
        return Checkpoint.parse(json.loads(text))
    except ValueError as exc:
        log.error("audit log: %s in the database is unreadable (%s)", what, exc)
        return None


def _read_shared_head(sessions: sessionmaker[Session]) -> Any:
    """The shared chain's signed head as stored (JSON), or None. ValueError if unreadable."""
    with sessions() as session:
        text = session.scalar(select(HEAD_TABLE.c.signed).where(HEAD_TABLE.c.id == 1))
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError("the signed head in audit_chain_head is not JSON") from exc


def _shared_checkpoints(sessions: sessionmaker[Session]) -> Iterator[tuple[int, Checkpoint | str]]:
    """(row id, checkpoint) from ``audit_checkpoints`` in seq order, or what is wrong."""
    with sessions() as session:
        rows = session.execute(
            select(CHECKPOINT_TABLE.c.id, CHECKPOINT_TABLE.c.record).order_by(
                CHECKPOINT_TABLE.c.seq, CHECKPOINT_TABLE.c.id
            )
        ).all()
    for row in rows:
        try:
            yield row.id, Checkpoint.parse(json.loads(row.record))
        except ValueError as exc:
            yield row.id, str(exc) if "JSON" not in type(exc).__name__ else "is not JSON"


def _write_file_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _write_head(path: Path, seq: int, digest: str) -> None:
    _write_file_atomically(path, canonical_json({"seq": seq, "hash": digest}) + "\n")


def _append_line(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def read_checkpoints(path: Path) -> Iterator[tuple[int, Checkpoint | str]]:
    """(line number, checkpoint) per line, or (line number, what is wrong with it).

    A last line without its newline is a write in progress (or cut by a crash)
    and is skipped. A missing file yields nothing.
    """
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace", newline="\n") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                return
            if not line.strip():
                continue
            try:
                yield number, Checkpoint.parse(json.loads(line))
            except ValueError as exc:
                yield number, str(exc) if "JSON" not in type(exc).__name__ else "is not JSON"


def _last_checkpoint(path: Path) -> Checkpoint | None:
    """The last complete, well-formed line of the checkpoint file (read from the end)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            start = max(0, end - 64 * 1024)
            handle.seek(start)
            tail = handle.read()
    except FileNotFoundError:
        return None
    lines = tail.split(b"\n")
    # Everything after the last newline is an unfinished line.
    for line in reversed(lines[:-1]):
        if not line.strip():
            continue
        try:
            return Checkpoint.parse(json.loads(line))
        except ValueError:
            log.error("audit log: the last line of %s is not a signed checkpoint", path)
            return None
    return None


class AuditLog:
    """Appends ``AuditRecord``s to the hash-chained ``audit_log`` table in batches.

    With a ``signer``, the head file is signed after every batch and signed
    checkpoints are appended to ``checkpoint_file`` (see the module docstring).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        flush_interval: float = 0.25,
        max_batch: int = 1000,
        head_file: Path | None = None,
        signer: AuditSigner | None = None,
        checkpoint_file: Path | None = None,
        checkpoint_interval_s: float = 60.0,
        checkpoint_entries: int = 1000,
        trusted_keys: TrustedKeys | None = None,
        shared: bool = False,
        replica: str | None = None,
        live_replicas: Callable[[], list[str]] | None = None,
    ) -> None:
        self._sessions = sessions
        # Replicas: one chain locked in the database (see the module docstring).
        self.shared = shared
        self.replica = replica
        self._live_replicas = live_replicas
        # Intents of dead replicas queued by sweep() and not yet chained.
        self._sweeping: set[str] = set()
        self._sweep_lock = threading.Lock()
        if shared and signer is None:
            raise ConfigError("a shared audit chain needs a signing key")
        self.head_file = head_file
        self.signer = signer
        self.checkpoint_file = checkpoint_file
        # Public keys verify() trusts: the signer's and earlier ones.
        self.trusted_keys: TrustedKeys = dict(trusted_keys or {})
        if signer is not None:
            self.trusted_keys[signer.key_id] = signer.public_key
        self._checkpoint_interval = checkpoint_interval_s
        self._checkpoint_entries = checkpoint_entries
        # (seq, hash) of the last entry written; None means "read it from the database".
        self._tail: tuple[int, str] | None = None
        # What the tail will be if the batch in flight commits; see _write_batch.
        self._attempt: tuple[int, str] | None = None
        # The last checkpoint written or found, and when this process wrote one (monotonic).
        self._last_checkpoint: Checkpoint | None = None
        self._last_checkpoint_at: float | None = None
        self._series_opened = False
        self._signing = threading.Lock()  # close() may sign while a late batch still runs
        self._head_at: tuple[int, str] | None = None  # the tail the head file last recorded
        # The head is signed on its own thread once the batch's waiters are woken:
        # durability does not wait for it (see _sign_heads).
        self._head_wake = threading.Condition()
        self._head_stop = False
        self._head_thread: threading.Thread | None = None
        self._writer: BatchWriter[_Item] = BatchWriter(
            "audit log",
            self._write_batch,
            flush_interval=flush_interval,
            max_batch=max_batch,
            after_write=self._head_moved,
        )

    @classmethod
    def from_settings(
        cls,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        replica: str | None = None,
        live_replicas: Callable[[], list[str]] | None = None,
    ) -> AuditLog:
        """The server's log: head and checkpoints under ``home``, signed with the configured key.

        Creates ``<home>/audit-signing-key.pem`` when no key is configured and
        none exists yet. ConfigError when the key cannot be read. With
        ``cluster.replicas`` the chain is shared (head and checkpoints in the
        database) and the key must be configured: every replica signs with it.
        """
        from enclave.gateway.audit_keys import load_public_key_files, signer_from_settings

        shared = settings.cluster.replicas
        if shared and settings.audit.signing_key is None:
            raise ConfigError(
                "cluster.replicas needs audit.signing_key: every replica signs the one audit "
                "chain with the same key (create it with `enclave audit keygen`)"
            )
        signer = signer_from_settings(settings, create=True)
        return cls(
            sessions,
            head_file=None if shared else audit_head_path(settings),
            signer=signer,
            checkpoint_file=None if shared else audit_checkpoint_path(settings),
            checkpoint_interval_s=settings.audit.checkpoint_interval_s,
            checkpoint_entries=settings.audit.checkpoint_entries,
            trusted_keys=load_public_key_files(settings.audit.trusted_public_keys),
            shared=shared,
            replica=replica,
            live_replicas=live_replicas,
        )

    def start(self) -> None:
        """Chain the intents left by the last run as ``interrupted``, then start the writer.

        Also reads the tail and opens the signed series now rather than at the
        first request, so that entries a crash left past the signed head (their
        commit landed, the head's rewrite did not) are adopted at start-up.
        """
        if self.shared:
            self.sweep()
            self._writer.start()
            return
        self._recover_intents()
        if self._tail is None:
            try:
                self._write_batch([])  # loads the tail and adopts what needs it
                self._update_head()
            except Exception as exc:  # the first batch tries again
                log.error("audit log: could not read the tail (%s)", describe_failure(exc))
        if self._head_thread is None and self.head_file is not None:
            self._head_thread = threading.Thread(
                target=self._sign_heads, name="audit head", daemon=True
            )
            self._head_thread.start()
        self._writer.start()

    def append(self, record: AuditRecord) -> None:
        """Queue an entry. O(1), thread-safe, never waits for the database, never raises."""
        self._writer.put(record)

    async def intend(self, record: AuditRecord) -> str:
        """Commit an intent for a request about to be forwarded; return its id.

        ``record`` is what is known so far; the entry stored is it with outcome
        ``interrupted``. Raises ``CommitFailed`` when it cannot be committed.
        """
        intent_id = uuid.uuid4().hex
        entry, payload = _entry_or_placeholder(
            replace(record, outcome=INTERRUPTED, status=0, intent=None)
        )
        await self._writer.commit(
            _Intent(intent_id, datetime.fromisoformat(entry["time"]), payload, self.replica)
        )
        return intent_id

    async def commit(
        self,
        record: AuditRecord,
        usage: UsageRecord | None = None,
        *,
        fallback: AuditRecord | None = None,
    ) -> None:
        """Commit a request's entry (completing ``record.intent``) and its usage, together.

        Returns once they are committed. Raises ``CommitFailed`` when that fails;
        they stay queued and are retried, the entry replaced by ``fallback``.
        """
        items: tuple[_Item, ...] = (record,) if usage is None else (usage, record)
        await self._writer.commit(*items, fallback=fallback)

    def _recover_intents(self) -> None:
        try:
            with self._sessions() as session:
                rows = session.execute(
                    select(INTENT_TABLE.c.id, INTENT_TABLE.c.payload).order_by(
                        INTENT_TABLE.c.time, INTENT_TABLE.c.id
                    )
                ).all()
        except Exception as exc:
            log.error("audit log: could not read the intents (%s)", describe_failure(exc))
            return
        if not rows:
            return
        for row in rows:
            self._writer.put(_Interrupted(row.id, row.payload))
        log.warning(
            "audit log: %d request(s) were in flight when the server last stopped; "
            "recording them as interrupted",
            len(rows),
        )
        try:
            self._writer.flush()
        except Exception as exc:  # they stay queued: the writer thread retries them
            log.error("audit log: could not record the interrupted requests (%s)", exc)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every entry appended so far is committed (and the head file updated)."""
        self._writer.flush(timeout)
        self._update_head()

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the writer thread and sign a ``shutdown`` checkpoint of the head."""
        self._writer.close(timeout)
        thread = self._head_thread
        if thread is not None:
            with self._head_wake:
                self._head_stop = True
                self._head_wake.notify()
            thread.join(timeout)
        self._update_head()
        if self.shared:
            self._shared_shutdown_checkpoint()
            return
        if self.signer is None or self._tail is None or self._tail[0] == 0:
            return
        last = self._last_checkpoint
        if last is not None and last.seq == self._tail[0] and last.key_id == self.signer.key_id:
            return
        with self._signing:
            try:
                self._checkpoint("shutdown")
            except OSError as exc:
                log.error("audit log: could not write the shutdown checkpoint (%s)", exc)

    def _shared_shutdown_checkpoint(self) -> None:
        """A ``shutdown`` checkpoint of the shared chain's newest entry, if this replica wrote."""
        if self.signer is None or self._tail is None or self._tail[0] == 0:
            return
        try:
            with self._sessions.begin() as session:
                session.execute(
                    select(HEAD_TABLE.c.id).where(HEAD_TABLE.c.id == 1).with_for_update()
                )
                last = session.execute(
                    select(AuditEntryRow.seq, AuditEntryRow.hash)
                    .order_by(AuditEntryRow.seq.desc())
                    .limit(1)
                ).first()
                if last is None:
                    return
                checkpoint = Checkpoint.sign(self.signer, last.seq, last.hash, "shutdown")
                session.execute(
                    insert(CHECKPOINT_TABLE).values(seq=checkpoint.seq, record=checkpoint.to_json())
                )
            log.info("audit checkpoint %s", checkpoint.to_json())
        except Exception as exc:
            log.error("audit log: could not write the shutdown checkpoint (%s)", exc)

    def verify(self) -> VerifyResult:
        """``verify_chain`` with this log's files and keys (unsigned if it has no signer)."""
        if self.shared:
            return verify_chain(self._sessions, keys=self.trusted_keys, shared=True)
        return verify_chain(
            self._sessions,
            self.head_file,
            checkpoint_file=self.checkpoint_file,
            keys=self.trusted_keys if self.signer is not None else None,
        )

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

    def sweep(self) -> int:
        """Queue the intents of replicas that stopped heartbeating as ``interrupted`` entries.

        Shared chains only; called at start and after every heartbeat. Returns
        how many were queued. The writer chains each one only if its intent is
        still there under the head's lock, so two replicas sweeping the same
        dead replica chain it once.
        """
        if not self.shared:
            return 0
        live = set(self._live_replicas() if self._live_replicas else [])
        if self.replica is not None:
            live.add(self.replica)
        try:
            with self._sessions() as session:
                rows = session.execute(
                    select(INTENT_TABLE.c.id, INTENT_TABLE.c.payload, INTENT_TABLE.c.replica)
                    .order_by(INTENT_TABLE.c.time, INTENT_TABLE.c.id)
                    .limit(10_000)
                ).all()
        except Exception as exc:
            log.error("audit log: could not read the intents (%s)", describe_failure(exc))
            return 0
        queued = 0
        with self._sweep_lock:
            for row in rows:
                if row.replica in live or row.id in self._sweeping:
                    continue
                self._sweeping.add(row.id)
                self._writer.put(_Interrupted(row.id, row.payload))
                queued += 1
        if queued:
            log.warning(
                "audit log: %d request(s) were in flight on replicas that stopped; "
                "recording them as interrupted",
                queued,
            )
        return queued

    @staticmethod
    def _split(
        batch: list[_Item],
    ) -> tuple[list[dict[str, Any]], list[UsageRecord], list[AuditRecord | _Interrupted]]:
        intents: list[dict[str, Any]] = []
        usage: list[UsageRecord] = []
        records: list[AuditRecord | _Interrupted] = []
        for item in batch:
            if isinstance(item, _Intent):
                intents.append(
                    {
                        "id": item.id,
                        "time": item.time,
                        "payload": item.payload,
                        "replica": item.replica,
                    }
                )
            elif isinstance(item, UsageRecord):
                usage.append(item)
            else:
                records.append(item)
        return intents, usage, records

    @staticmethod
    def _chain(
        records: list[AuditRecord | _Interrupted], tail: tuple[int, str]
    ) -> tuple[list[dict[str, Any]], list[str], tuple[int, str]]:
        """Rows for ``records`` chained after ``tail``, the intents they complete, the new tail."""
        seq, prev_hash = tail
        rows: list[dict[str, Any]] = []
        completed: list[str] = []
        for record in records:
            seq += 1
            if isinstance(record, _Interrupted):
                entry, payload = _interrupted_entry(record)
                completed.append(record.id)
            else:
                entry, payload = _entry_or_placeholder(record)
                if record.intent is not None:
                    completed.append(record.intent)
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
        return rows, completed, (seq, prev_hash)

    def _write_shared_batch(self, batch: list[_Item]) -> None:
        """One batch of a shared chain: lock the head row, chain after the newest entry,
        sign the head (and a checkpoint when due) in the same transaction."""
        assert self.signer is not None
        intents, usage, records = self._split(batch)
        checkpoint: Checkpoint | None = None
        with self._sessions() as session:
            if self._attempt is not None:
                # The last attempt reported an error: did it commit anyway? Its first
                # entry's hash is unique to it (it covers everything before).
                first_seq, first_hash = self._attempt
                landed = session.scalar(
                    select(AuditEntryRow.hash).where(AuditEntryRow.seq == first_seq)
                )
                self._attempt = None
                if landed == first_hash:
                    self._done_sweeping(records)
                    return
            head_row = session.execute(
                select(HEAD_TABLE.c.signed).where(HEAD_TABLE.c.id == 1).with_for_update()
            ).first()
            if head_row is None:  # the migration inserts it; someone deleted it
                session.execute(insert(HEAD_TABLE).values(id=1, signed=None))
            head = _parse_stored(head_row.signed if head_row else None, "the signed head")
            last = session.execute(
                select(AuditEntryRow.seq, AuditEntryRow.hash)
                .order_by(AuditEntryRow.seq.desc())
                .limit(1)
            ).first()
            tail: tuple[int, str] = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
            if head is not None and head.seq > tail[0]:
                log.error(
                    "audit log: the database ends at entry %d but the signed head records %d; "
                    "entries were deleted. Continuing after %d; run `enclave audit verify`.",
                    tail[0],
                    head.seq,
                    head.seq,
                )
                tail = (head.seq, head.hash)
            covered = head.seq if head is not None else 0
            adopted: Checkpoint | None = None
            if tail[0] > covered:
                # Entries no signed head covers: written before the chain was shared.
                adopted = Checkpoint.sign(self.signer, tail[0], tail[1], "adopted", covered)
                session.execute(
                    insert(CHECKPOINT_TABLE).values(seq=adopted.seq, record=adopted.to_json())
                )
            swept = [record.id for record in records if isinstance(record, _Interrupted)]
            if swept:
                present = set(
                    session.scalars(select(INTENT_TABLE.c.id).where(INTENT_TABLE.c.id.in_(swept)))
                )
                records = [
                    record
                    for record in records
                    if not isinstance(record, _Interrupted) or record.id in present
                ]
            rows, completed, new_tail = self._chain(records, tail)
            if intents:
                session.execute(insert(INTENT_TABLE), intents)
            if rows:
                session.execute(insert(AUDIT_TABLE), rows)
                self._attempt = (rows[0]["seq"], rows[0]["hash"])
            if completed:
                session.execute(delete(INTENT_TABLE).where(INTENT_TABLE.c.id.in_(completed)))
            insert_usage(session, usage)
            if rows or adopted is not None or head is None:
                if self._shared_checkpoint_due(new_tail[0]):
                    kind = "periodic" if self._last_checkpoint_at is not None else "start"
                    checkpoint = Checkpoint.sign(self.signer, *new_tail, kind)
                    session.execute(
                        insert(CHECKPOINT_TABLE).values(
                            seq=checkpoint.seq, record=checkpoint.to_json()
                        )
                    )
                signed_head = Checkpoint.sign(self.signer, *new_tail, "head")
                session.execute(
                    update(HEAD_TABLE)
                    .where(HEAD_TABLE.c.id == 1)
                    .values(signed=signed_head.to_json())
                )
            session.commit()
        self._attempt = None
        self._tail = new_tail
        self._done_sweeping(records)
        if adopted is not None:
            log.error(
                "audit log: entries %d to %d were not covered by the shared signed head "
                "(written before the chain was shared); signed them now",
                covered + 1,
                adopted.seq,
            )
        if checkpoint is not None:
            self._last_checkpoint = checkpoint
            self._last_checkpoint_at = clock.monotonic()
            log.info("audit checkpoint %s", checkpoint.to_json())

    def _done_sweeping(self, records: list[AuditRecord | _Interrupted]) -> None:
        if not self._sweeping:
            return
        with self._sweep_lock:
            for record in records:
                if isinstance(record, _Interrupted):
                    self._sweeping.discard(record.id)

    def _shared_checkpoint_due(self, seq: int) -> bool:
        last = self._last_checkpoint
        if last is None or self._last_checkpoint_at is None:
            return True
        return (
            seq - last.seq >= self._checkpoint_entries
            or clock.monotonic() - self._last_checkpoint_at >= self._checkpoint_interval
        )

    def _write_batch(self, batch: list[_Item]) -> None:
        if self.shared:
            self._write_shared_batch(batch)
            return
        intents, usage, records = self._split(batch)
        with self._sessions() as session:
            if self._tail is None:
                self._tail = self._load_tail(session)
                if self._attempt is not None and self._tail == self._attempt:
                    # The last attempt committed although it reported an error
                    # (its intents and usage with it, in the same transaction).
                    self._attempt = None
                    return
                if not self._series_opened:
                    try:
                        self._open_series()
                    except OSError as exc:  # tried again on the next batch
                        log.error("audit log: could not write a checkpoint (%s)", exc)
            rows, completed, attempt = self._chain(records, self._tail)
            self._attempt = attempt if rows else None
            try:
                if intents:
                    session.execute(insert(INTENT_TABLE), intents)
                if rows:
                    session.execute(insert(AUDIT_TABLE), rows)
                if completed:
                    session.execute(delete(INTENT_TABLE).where(INTENT_TABLE.c.id.in_(completed)))
                insert_usage(session, usage)
                session.commit()
            except BaseException:
                self._tail = None  # re-read before the retry: the commit may have landed
                raise
        if self._attempt is not None:
            self._tail, self._attempt = self._attempt, None
        # The head is rewritten by the writer (after_write) once the waiters are woken.

    def _update_head(self) -> None:
        """Sign (or write) the head for the newest committed entry, if it has moved."""
        with self._signing:
            tail = self._tail
            if self.head_file is None or tail is None or tail == self._head_at:
                return
            self._head_at = tail
            try:
                if self.signer is None:
                    _write_head(self.head_file, *tail)
                elif self._checkpoint_due():
                    kind = "periodic" if self._last_checkpoint_at is not None else "start"
                    self._checkpoint(kind)  # also rewrites the head
                else:
                    self._sign_head()
            except OSError as exc:
                # The entries are committed; the next batch rewrites the head.
                self._head_at = None
                log.error("audit log: could not write the head file %s (%s)", self.head_file, exc)

    def _head_moved(self) -> None:
        """After each batch (on the writer thread): wake the head's thread, or sign inline."""
        if self._head_thread is None:
            self._update_head()
            return
        with self._head_wake:
            self._head_wake.notify()

    def _sign_heads(self) -> None:
        """The head's thread: signs the newest tail whenever it moves, until close.

        Off the writer thread, so a batch's commit never waits for the previous
        head's fsync, and at most every ``HEAD_LAG_S``: one head covers every
        batch in between, and the thread takes the GIL from requests rarely.
        """
        while True:
            with self._head_wake:
                while self._tail == self._head_at and not self._head_stop:
                    self._head_wake.wait()
                if self._head_stop:
                    return
            self._update_head()
            clock.sleep(HEAD_LAG_S)

    # Signing. Callers hold self._signing (or run before the writer thread starts).

    def _open_series(self) -> None:
        """On the first batch: find the last checkpoint, keep the old head, adopt stray entries."""
        if self.signer is None or self._tail is None:
            self._series_opened = True
            return
        last = _last_checkpoint(self.checkpoint_file) if self.checkpoint_file else None
        head: Checkpoint | None = None
        if self.head_file is not None:
            try:
                head = _read_signed_head(self.head_file)
            except ValueError:
                head = None  # unsigned (written before signing) or unreadable
        if (
            head is not None
            and self.checkpoint_file is not None
            and (last is None or head.seq > last.seq)
        ):
            # The next head overwrites this one: keep its signature as evidence.
            _append_line(self.checkpoint_file, head.to_json())
            last = head
        self._last_checkpoint = last
        covered = max(head.seq if head else 0, last.seq if last else 0)
        if self._tail[0] > covered:
            log.error(
                "audit log: entries %d to %d are not covered by a signed head (the server "
                "stopped between a commit and the head's update, the log predates signing, "
                "or they were inserted while it was stopped); signing them now. "
                "`enclave audit verify` lists them.",
                covered + 1,
                self._tail[0],
            )
            with self._signing:
                self._checkpoint("adopted", adopted_from=covered)
        self._series_opened = True

    def _checkpoint_due(self) -> bool:
        assert self.signer is not None and self._tail is not None
        last = self._last_checkpoint
        if last is None or last.key_id != self.signer.key_id or self._last_checkpoint_at is None:
            return True
        if self._tail[0] == last.seq:
            return False
        return (
            self._tail[0] - last.seq >= self._checkpoint_entries
            or clock.monotonic() - self._last_checkpoint_at >= self._checkpoint_interval
        )

    def _checkpoint(self, kind: str, adopted_from: int | None = None) -> None:
        """Append a signed checkpoint of the tail, then sign the head to match."""
        assert self.signer is not None and self._tail is not None
        checkpoint = Checkpoint.sign(self.signer, *self._tail, kind, adopted_from)
        if self.checkpoint_file is not None:
            _append_line(self.checkpoint_file, checkpoint.to_json())
        self._last_checkpoint = checkpoint
        self._last_checkpoint_at = clock.monotonic()
        log.info("audit checkpoint %s", checkpoint.to_json())
        self._sign_head()

    def _sign_head(self) -> None:
        assert self.signer is not None and self._tail is not None
        if self.head_file is not None:
            head = Checkpoint.sign(self.signer, *self._tail, "head")
            _write_file_atomically(self.head_file, head.to_json() + "\n")


def _stream(session: Session, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Any]:
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
    if first_seq > 1:
        statement = statement.where(table.seq >= first_seq)
    if last_seq is not None:
        statement = statement.where(table.seq <= last_seq)
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


class _ChainCheck:
    """Checks entries fed in seq order against the chain and the signed hashes ("anchors").

    ``feed`` returns a failed ``VerifyResult`` at the first problem, else None.
    """

    def __init__(
        self,
        anchors: dict[int, list[Checkpoint]],
        *,
        first_seq: int = 1,
        first_prev: str | None = GENESIS_HASH,
        keep_after: int | None = None,
    ) -> None:
        self.anchors = anchors
        self.entries = 0
        self.last_seq = first_seq - 1
        # None: take the first entry's prev_hash on trust (an export that starts later).
        self.last_hash = first_prev
        self.signed_through = first_seq - 1  # the last seq whose hash a signature vouched for
        # Hashes of entries after this seq, for a head that moves while the log is read.
        self.keep_after = keep_after
        self.after: dict[int, str] = {}

    def fail(self, first_bad: int | None, reason: str) -> VerifyResult:
        head = self.last_hash if self.entries and self.last_hash != GENESIS_HASH else None
        return VerifyResult(False, self.entries, first_bad, reason, head)

    def feed(
        self, seq: int, prev_hash: str, digest: str, payload: str, column: str | None = None
    ) -> VerifyResult | None:
        self.entries += 1
        last_seq = self.last_seq
        if seq != last_seq + 1:
            if seq <= last_seq:
                return self.fail(seq, f"entry {seq} is out of order (it follows entry {last_seq})")
            if seq - last_seq == 2:
                missing = f"entry {last_seq + 1} is missing"
            else:
                missing = f"entries {last_seq + 1} to {seq - 1} are missing"
            if self.entries == 1:
                return self.fail(last_seq + 1, f"{missing} (the log starts at seq {seq})")
            return self.fail(last_seq + 1, f"{missing} (seq {last_seq} is followed by {seq})")
        if self.last_hash is None:
            self.last_hash = prev_hash
        if prev_hash != self.last_hash:
            if self.entries == 1:
                reason = f"entry {seq} is out of order (it is first but does not start the chain)"
            else:
                reason = (
                    f"entry {seq} is out of order (prev_hash does not match entry "
                    f"{last_seq}, or entry {last_seq} was rewritten)"
                )
            return self.fail(seq, reason)
        if entry_hash(prev_hash, seq, payload) != digest:
            return self.fail(seq, f"entry {seq} was edited (hash mismatch)")
        if column is not None:
            return self.fail(
                seq, f"entry {seq} was edited (column '{column}' does not match the hashed entry)"
            )
        for anchor in self.anchors.get(seq, ()):
            if anchor.hash != digest:
                low = self.signed_through + 1
                span = f"entry {seq}" if low == seq else f"entries {low} to {seq}"
                return self.fail(
                    low,
                    f"{span} do not match {anchor.describe()}: an entry was edited, inserted, "
                    "deleted or moved and the chain recomputed without the signing key",
                )
            self.signed_through = seq
        if self.keep_after is not None and seq > self.keep_after:
            self.after[seq] = digest
        self.last_seq, self.last_hash = seq, digest
        return None


def _adopted_note(checkpoint: Checkpoint) -> str:
    first = (checkpoint.adopted_from or 0) + 1
    span = f"entry {first}" if first == checkpoint.seq else f"entries {first} to {checkpoint.seq}"
    return (
        f"{span} were signed only when the server started again ({checkpoint.time}): they were "
        "written just before a crash or before signing was set up, or inserted while the server "
        "was stopped"
    )


@dataclass
class _Signed:
    """The signed records read so far: anchors by seq, and what to report about them."""

    anchors: dict[int, list[Checkpoint]] = field(default_factory=lambda: defaultdict(list))
    count: int = 0
    last: Checkpoint | None = None  # the checkpoint with the highest seq
    key_ids: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    def add(self, checkpoint: Checkpoint, keys: TrustedKeys, where: str) -> str | None:
        """Take a checkpoint; or say why not (bad signature, out of order)."""
        problem = checkpoint.problem(keys)
        if problem is not None:
            return f"{where} ({checkpoint.describe()}) {problem}"
        if self.last is not None and checkpoint.seq < self.last.seq:
            return (
                f"{where} ({checkpoint.describe()}) goes back from entry {self.last.seq}: "
                "the checkpoints were reordered or edited"
            )
        self.anchors[checkpoint.seq].append(checkpoint)
        self.count += 1
        self.last = checkpoint
        self.key_ids.add(checkpoint.key_id)
        if checkpoint.adopted_from is not None:
            self.notes.append(_adopted_note(checkpoint))
        return None

    def add_head(self, head: Checkpoint, keys: TrustedKeys, where: str) -> str | None:
        problem = head.problem(keys)
        if problem is not None:
            return f"{where} {problem}"
        if self.last is not None and head.seq < self.last.seq:
            return (
                f"{where} records entry {head.seq}, older than {self.last.describe()}: it was "
                "replaced with an old copy (and newer entries were probably deleted)"
            )
        self.anchors[head.seq].append(head)
        self.count += 1
        self.key_ids.add(head.key_id)
        return None


def _ok(check: _ChainCheck, signed: _Signed, notes: Iterable[str], what: str) -> VerifyResult:
    entries = check.entries
    return VerifyResult(
        True,
        entries,
        None,
        f"{entries} entries, {what}",
        check.last_hash if entries and check.last_hash != GENESIS_HASH else None,
        tuple(notes),
        signed.count,
        tuple(sorted(signed.key_ids)),
    )


def verify_chain(
    sessions: sessionmaker[Session],
    head_file: Path | None = None,
    *,
    checkpoint_file: Path | None = None,
    keys: TrustedKeys | None = None,
    shared: bool = False,
) -> VerifyResult:
    """Recompute the chain in seq order and name the first thing that is wrong.

    Streams the table, so memory stays flat however long the log is. With
    ``keys`` (key id -> public key), the head file and the checkpoints must be
    signed by one of them and the log must match every signed hash; without,
    only the chain and the (unsigned) head are checked, which someone with
    write access to the database and the head file can forge. ``shared``: the
    chain of replicas, whose signed head and checkpoints are in the database
    (``head_file`` and ``checkpoint_file`` are not read; ``keys`` is needed).
    """
    if shared:
        if keys is None:
            return VerifyResult(False, 0, None, "a shared chain is checked with its public keys")
        return _verify_signed(
            sessions,
            keys,
            checkpoints=(
                (f"checkpoint {number} in audit_checkpoints", item)
                for number, item in _shared_checkpoints(sessions)
            ),
            need_checkpoint=("audit_checkpoints", "the checkpoints were"),
            read_head=lambda: _read_shared_head(sessions),
            head_name="the signed head in audit_chain_head",
        )
    if keys is None:
        return _verify_unsigned(sessions, head_file)
    return _verify_signed(
        sessions,
        keys,
        checkpoints=(
            (f"checkpoint line {number} of {checkpoint_file}", item)
            for number, item in (read_checkpoints(checkpoint_file) if checkpoint_file else ())
        ),
        need_checkpoint=(
            (str(checkpoint_file), "the checkpoint file was")
            if checkpoint_file is not None
            else None
        ),
        read_head=(lambda: _read_head_record(head_file)) if head_file is not None else None,
        head_name=f"the head file {head_file}",
    )


def _verify_signed(
    sessions: sessionmaker[Session],
    keys: TrustedKeys,
    *,
    checkpoints: Iterable[tuple[str, Checkpoint | str]],
    need_checkpoint: tuple[str, str] | None,
    read_head: Callable[[], Any] | None,
    head_name: str,
) -> VerifyResult:
    """``verify_chain`` with keys, wherever the checkpoints and the head are kept."""
    signed = _Signed()
    # Checkpoints, then the head, then the table: the writer commits entries, then appends
    # a checkpoint, then rewrites the head, so everything read first is covered by what
    # is read after it.
    for where, item in checkpoints:
        if isinstance(item, str):
            return VerifyResult(False, 0, None, f"{where} {item}")
        problem = signed.add(item, keys, where)
        if problem is not None:
            return VerifyResult(False, 0, None, problem)

    def signed_head() -> Checkpoint | None:
        record = read_head() if read_head is not None else None
        if record is None:
            return None
        try:
            return Checkpoint.parse(record)
        except ValueError as exc:
            raise ValueError(f"{head_name} {exc}") from None

    head: Checkpoint | None = None
    if read_head is not None:
        try:
            head = signed_head()
        except ValueError as exc:
            return VerifyResult(False, 0, None, str(exc))
        if head is not None:
            problem = signed.add_head(head, keys, head_name)
            if problem is not None:
                return VerifyResult(False, 0, None, problem)
    check = _ChainCheck(signed.anchors, keep_after=head.seq if head else 0)
    with sessions() as session:
        for row in _stream(session):
            failure = check.feed(
                row.seq, row.prev_hash, row.hash, row.payload, _column_mismatch(row)
            )
            if failure is not None:
                return failure
    last_seq = check.last_seq
    ends = [record for record in (head, signed.last) if record is not None]
    if ends:
        end = max(ends, key=lambda record: record.seq)
        if check.entries == 0 and end.seq > 0:
            return check.fail(
                1,
                f"the log is empty but {end.describe()} records {end.seq} entries "
                "(every entry was deleted)",
            )
        if last_seq < end.seq:
            return check.fail(
                last_seq + 1,
                f"the log ends at {last_seq} but {end.describe()} records {end.seq} entries "
                "(tail deleted)",
            )
    if check.entries:
        if read_head is None or head is None:
            return check.fail(
                None,
                f"{head_name} is missing while the log has {check.entries} "
                "entries (deleted, or replaced by an empty log's)",
            )
        if need_checkpoint is not None and signed.last is None:
            return check.fail(
                None,
                f"there is no signed checkpoint in {need_checkpoint[0]} while the log has "
                f"{check.entries} entries ({need_checkpoint[1]} deleted)",
            )
        if last_seq > head.seq:
            failure = _covered_by_a_newer_head(check, signed_head, keys, head)
            if failure is not None:
                return failure
    return _ok(check, signed, signed.notes, "chain intact, signed head and checkpoints match")


def _covered_by_a_newer_head(
    check: _ChainCheck,
    read_head: Callable[[], Checkpoint | None],
    keys: TrustedKeys,
    head: Checkpoint,
) -> VerifyResult | None:
    """Entries after the head read at the start: fine if the head has moved over them since."""
    try:
        newer = read_head()
    except ValueError:
        newer = None
    if (
        newer is not None
        and newer.seq >= check.last_seq
        and newer.problem(keys) is None
        and check.after.get(newer.seq, check.last_hash if newer.seq == check.last_seq else None)
        == newer.hash
    ):
        return None
    first = head.seq + 1
    span = (
        f"entry {first} is"
        if first == check.last_seq
        else f"entries {first} to {check.last_seq} are"
    )
    return check.fail(
        first,
        f"{span} not covered by {head.describe()}: they were added without the signing key",
    )


def _verify_unsigned(sessions: sessionmaker[Session], head_file: Path | None) -> VerifyResult:
    """The chain and a plain head file only; what verify did before logs were signed."""
    notes: list[str] = [
        "no public key given: anyone who can write the database and the head file can "
        "recompute the chain"
    ]
    head: tuple[int, str] | None = None
    if head_file is not None:
        # Read before the table: the writer commits before it moves the head,
        # so every entry the head names is already visible to the query below.
        try:
            head = _read_head(head_file)
        except ValueError as exc:
            return VerifyResult(False, 0, None, str(exc))
    check = _ChainCheck({})
    hash_at_head: str | None = None
    with sessions() as session:
        for row in _stream(session):
            failure = check.feed(
                row.seq, row.prev_hash, row.hash, row.payload, _column_mismatch(row)
            )
            if failure is not None:
                return failure
            if head is not None and row.seq == head[0]:
                hash_at_head = row.hash
    last_seq = check.last_seq
    if head is not None:
        head_seq, head_hash = head
        if last_seq < head_seq:
            return check.fail(
                last_seq + 1,
                f"the log ends at {last_seq} but the head file records {head_seq} entries "
                "(tail deleted)",
            )
        if head_seq > 0 and hash_at_head != head_hash:
            return check.fail(
                head_seq, f"entry {head_seq} does not match the head file (the tail was rewritten)"
            )
    elif head_file is not None and check.entries:
        notes.append(f"no head file at {head_file}: deleting the newest entries would go unnoticed")
    elif head_file is None:
        notes.append("no head file given: deleting the newest entries would go unnoticed")
    return _ok(check, _Signed(), notes, "chain intact")


def export_jsonl(
    sessions: sessionmaker[Session],
    out: TextIO,
    since: datetime | None = None,
    *,
    head_file: Path | None = None,
    checkpoint_file: Path | None = None,
    shared: bool = False,
) -> int:
    """Write the log as JSON Lines for ``verify_export``; return the number of entries written.

    Lines, in this order: ``{"export": {...}}`` (format, first_seq, head_seq);
    ``{"checkpoint": {...}}`` for each checkpoint from ``first_seq - 1`` on;
    ``{"head": {...}}``; then the entries, each
    ``{"entry": {...}, "hash": ..., "prev_hash": ..., "seq": ...}`` in
    canonical form, so ``hash`` can be rechecked from the line alone. Entries
    run from the first one at or after ``since`` (all without it) to the head,
    in seq order, so the export is one unbroken piece of the chain; entries
    after the head (being written, or added without the key) are left out.
    Without a head file every entry is written. Split on ``\\n`` only:
    entries may contain other Unicode line separators. ``shared``: the chain
    of replicas, whose head and checkpoints are read from the database.
    """
    checkpoints: list[Checkpoint] = []
    if shared:
        checkpoints = [
            item for _, item in _shared_checkpoints(sessions) if not isinstance(item, str)
        ]
    elif checkpoint_file is not None:
        checkpoints = [
            item for _, item in read_checkpoints(checkpoint_file) if not isinstance(item, str)
        ]
    head_record: Any = None
    try:
        if shared:
            head_record = _read_shared_head(sessions)
        elif head_file is not None:
            head_record = _read_head_record(head_file)
    except ValueError:
        head_record = None
    head_seq = head_record.get("seq") if isinstance(head_record, dict) else None
    with sessions() as session:
        first_seq = 1
        if since is not None:
            first = session.execute(
                select(func.min(AuditEntryRow.seq)).where(AuditEntryRow.time >= _as_utc(since))
            ).scalar()
            first_seq = first if first is not None else (head_seq or 0) + 1
        header = {"format": EXPORT_FORMAT, "first_seq": first_seq, "head_seq": head_seq}
        out.write(canonical_json({"export": header}) + "\n")
        for checkpoint in checkpoints:
            if checkpoint.seq >= first_seq - 1:
                out.write(canonical_json({"checkpoint": checkpoint.to_dict()}) + "\n")
        if head_record is not None:
            out.write(canonical_json({"head": head_record}) + "\n")
        count = 0
        for row in _stream(session, first_seq, head_seq if isinstance(head_seq, int) else None):
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


_ENTRY_LINE = re.compile(
    r'\{"entry":(?P<payload>.*),"hash":"(?P<hash>[0-9a-f]{64})",'
    r'"prev_hash":"(?P<prev>[0-9a-f]{64})","seq":(?P<seq>[0-9]+)\}',
    re.DOTALL,
)


def _entry_line(line: str) -> tuple[int, str, str, str] | None:
    """(seq, prev_hash, hash, payload as hashed) from an entry line; None if it is not one."""
    match = _ENTRY_LINE.fullmatch(line)
    if match is not None:
        return int(match["seq"]), match["prev"], match["hash"], match["payload"]
    try:  # not in the form export_jsonl writes: recheck what it says
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or "entry" not in data:
        return None
    seq, prev_hash, digest = data.get("seq"), data.get("prev_hash"), data.get("hash")
    if type(seq) is not int or not isinstance(prev_hash, str) or not isinstance(digest, str):
        return None
    return seq, prev_hash, digest, canonical_json(data["entry"])


def verify_export(lines: Iterable[str], keys: TrustedKeys) -> VerifyResult:
    """Check an ``export_jsonl`` file with public keys only: no server, no database.

    The export must carry a head signed by one of ``keys``; every entry must
    chain to the next and match each signed hash in its range, and the entries
    must reach the head exactly. An export that starts after entry 1 (made
    with ``since``) is checked from its first entry on.
    """
    signed = _Signed()
    header: dict[str, Any] = {}
    head: Checkpoint | None = None
    check: _ChainCheck | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith('{"entry":'):
            parsed = _entry_line(line)
            if parsed is None:
                return VerifyResult(False, 0, None, f"line {number} is not an export line")
            if head is None:
                return VerifyResult(
                    False, 0, None, "the export has no signed head before its entries"
                )
            if check is None:
                first_seq = header.get("first_seq")
                first_seq = first_seq if type(first_seq) is int and first_seq >= 1 else parsed[0]
                check = _ChainCheck(
                    signed.anchors,
                    first_seq=first_seq,
                    first_prev=GENESIS_HASH if first_seq == 1 else None,
                )
            seq, prev_hash, digest, payload = parsed
            failure = check.feed(seq, prev_hash, digest, payload)
            if failure is not None:
                return failure
            continue
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict) or len(data) != 1 or check is not None:
            return VerifyResult(False, 0, None, f"line {number} is not an export line")
        kind, value = next(iter(data.items()))
        try:
            if kind == "export" and isinstance(value, dict) and number == 1:
                header = value
                continue
            if kind == "checkpoint" and head is None:
                problem = signed.add(Checkpoint.parse(value), keys, f"line {number}")
            elif kind == "head" and head is None:
                head = Checkpoint.parse(value)
                problem = signed.add_head(head, keys, f"the head (line {number})")
            else:
                problem = f"line {number} is not an export line"
        except ValueError as exc:
            problem = f"line {number} ({kind}) {exc}"
        if problem is not None:
            return VerifyResult(False, 0, None, problem)
    if head is None:
        return VerifyResult(False, 0, None, "the export has no signed head")
    if check is None:
        first_seq = header.get("first_seq")
        if type(first_seq) is int and first_seq > head.seq:
            return _ok(_ChainCheck({}), signed, signed.notes, f"up to {head.describe()}")
        return VerifyResult(
            False, 0, 1, f"the export has no entries but {head.describe()} records {head.seq}"
        )
    if check.last_seq < head.seq:
        return check.fail(
            check.last_seq + 1,
            f"the export ends at {check.last_seq} but {head.describe()} records {head.seq} "
            "entries (entries cut off)",
        )
    if check.last_seq > head.seq:
        return check.fail(
            head.seq + 1,
            f"entries {head.seq + 1} to {check.last_seq} are not covered by {head.describe()}",
        )
    first = check.last_seq - check.entries + 1
    return _ok(
        check,
        signed,
        signed.notes,
        f"entries {first} to {check.last_seq}, chain intact, signed head and checkpoints match",
    )
