"""The hash-chained audit log: batching, restarts, tamper detection, export and the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from enclave.cli.main import app
from enclave.gateway.audit import (
    GENESIS_HASH,
    AuditLog,
    AuditRecord,
    VerifyResult,
    audit_checkpoint_path,
    audit_head_path,
    export_jsonl,
    verify_chain,
)
from enclave.gateway.audit_keys import AuditSigner, signer_from_settings
from enclave.settings import load_settings
from enclave.storage.db import open_database

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class Db:
    engine: Engine
    sessions: sessionmaker[Session]
    head: Path
    signer: AuditSigner
    checkpoints: Path

    def log(self, **options: Any) -> AuditLog:
        options.setdefault("flush_interval", 0.01)
        options.setdefault("signer", self.signer)
        return AuditLog(
            self.sessions, head_file=self.head, checkpoint_file=self.checkpoints, **options
        )

    def verify(self, **keys: Any) -> VerifyResult:
        """Verify with the signing key's public key, as the server and the CLI do."""
        return verify_chain(
            self.sessions,
            self.head,
            checkpoint_file=self.checkpoints,
            keys=keys or {self.signer.key_id: self.signer.public_key},
        )

    def fill(self, count: int, start: int = 0) -> None:
        audit = self.log()
        audit.start()
        for index in range(start, start + count):
            audit.append(record(index))
        audit.close()

    def sql(self, statement: str, **params: Any) -> None:
        with self.sessions() as session:
            session.execute(text(statement), params)
            session.commit()

    def rows(self) -> list[Any]:
        with self.sessions() as session:
            return list(session.execute(text("SELECT * FROM audit_log ORDER BY seq")))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Db]:
    engine, sessions = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    signer = AuditSigner.generate()
    yield Db(engine, sessions, tmp_path / "audit.head", signer, tmp_path / "audit.checkpoints")
    engine.dispose()


def record(index: int = 0, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0 + timedelta(seconds=index),
        "key_id": 7,
        "workspace": "research",
        "endpoint": "/v1/chat/completions",
        "requested_model": f"model-{index}",
        "classification": "confidential",
        "reasons": ("workspace floor: internal", "detector iban x2: confidential"),
        "provider": "local",
        "location": "on-prem",
        "outcome": "ok",
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "latency_ms": 8.25,
        "findings": (("iban", 2),),
    }
    fields.update(changes)
    return AuditRecord(**fields)


def fail_inserts(engine: Engine, times: int | None) -> dict[str, int]:
    """Make INSERTs into audit_log fail ``times`` times (None: until state['left'] = 0)."""
    state = {"left": -1 if times is None else times, "failed": 0}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO audit_log") and state["left"] != 0:
            state["left"] -= 1
            state["failed"] += 1
            raise OperationalError(statement, {}, Exception("database is locked"))

    event.listen(engine, "before_cursor_execute", before)
    return state


def test_appends_from_many_threads_form_one_valid_chain(db: Db) -> None:
    audit = db.log(max_batch=64)
    audit.start()

    def worker(thread: int) -> None:
        for index in range(300):
            audit.append(record(thread * 1000 + index))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.flush()

    result = db.verify()
    assert result.ok, result.reason
    assert result.entries == 2400
    rows = db.rows()
    assert [row.seq for row in rows] == list(range(1, 2401))
    assert rows[0].prev_hash == GENESIS_HASH
    models = {json.loads(row.payload)["requested_model"] for row in rows}
    assert models == {f"model-{t * 1000 + i}" for t in range(8) for i in range(300)}
    head = json.loads(db.head.read_text())
    assert (head["seq"], head["hash"], head["kind"]) == (2400, rows[-1].hash, "head")
    assert head["key_id"] == db.signer.key_id and head["signature"]
    assert result.head_hash == rows[-1].hash
    audit.close()


def test_flush_waits_for_entries_even_with_a_long_interval(db: Db) -> None:
    audit = db.log(flush_interval=60)
    audit.start()
    audit.append(record(1))
    audit.flush(timeout=5)
    assert len(db.rows()) == 1
    audit.close()


def test_a_restarted_log_continues_the_chain(db: Db) -> None:
    db.fill(10)
    last = db.rows()[-1]
    db.fill(5, start=10)
    rows = db.rows()
    assert [row.seq for row in rows] == list(range(1, 16))
    assert rows[10].prev_hash == last.hash
    result = db.verify()
    assert result.ok and result.entries == 15, result.reason


def test_an_edited_entry_is_named(db: Db) -> None:
    db.fill(60)
    db.sql(
        'UPDATE audit_log SET payload = replace(payload, \'"outcome":"ok"\', '
        '\'"outcome":"denied"\') WHERE seq = 42'
    )
    result = db.verify()
    assert not result.ok
    assert result.first_bad == 42
    assert result.reason == "entry 42 was edited (hash mismatch)"


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(db: Db) -> None:
    db.fill(60)
    row = db.rows()[41]
    payload = row.payload.replace('"status":200', '"status":403')
    digest = hashlib.sha256(f"{row.prev_hash}[42,{payload}]".encode()).hexdigest()
    db.sql("UPDATE audit_log SET payload = :p, hash = :h WHERE seq = 42", p=payload, h=digest)
    result = db.verify()
    assert not result.ok
    assert result.first_bad == 43
    assert "entry 42 was rewritten" in result.reason


def test_an_edited_indexed_column_is_named(db: Db) -> None:
    db.fill(10)
    db.sql("UPDATE audit_log SET workspace = 'elsewhere' WHERE seq = 7")
    result = db.verify()
    assert (result.ok, result.first_bad) == (False, 7)
    assert "column 'workspace'" in result.reason


def test_a_deleted_entry_is_named(db: Db) -> None:
    db.fill(30)
    db.sql("DELETE FROM audit_log WHERE seq = 17")
    result = db.verify()
    assert (result.ok, result.first_bad) == (False, 17)
    assert result.reason == "entry 17 is missing (seq 16 is followed by 18)"


def test_deleted_first_entries_are_named(db: Db) -> None:
    db.fill(10)
    db.sql("DELETE FROM audit_log WHERE seq <= 3")
    result = db.verify()
    assert (result.ok, result.first_bad) == (False, 1)
    assert result.reason == "entries 1 to 3 are missing (the log starts at seq 4)"


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (("payload", "prev_hash", "hash"), "entry 5 is out of order"),
        (("payload", "hash"), "entry 5 was edited (hash mismatch)"),
    ],
)
def test_swapped_entries_are_named(db: Db, columns: tuple[str, ...], expected: str) -> None:
    db.fill(12)
    rows = {row.seq: row for row in db.rows()}
    for seq, other in ((5, 8), (8, 5)):
        assignments = ", ".join(f"{column} = :{column}" for column in columns)
        values = {column: getattr(rows[other], column) for column in columns}
        db.sql(f"UPDATE audit_log SET {assignments} WHERE seq = :seq", seq=seq, **values)
    result = db.verify()
    assert (result.ok, result.first_bad) == (False, 5)
    assert result.reason.startswith(expected)


def test_a_deleted_tail_is_caught_only_with_the_head_file(db: Db) -> None:
    db.fill(50)
    db.sql("DELETE FROM audit_log WHERE seq > 45")

    blind = verify_chain(db.sessions)
    assert blind.ok and blind.entries == 45  # the documented limit of a bare chain
    assert any("would go unnoticed" in note for note in blind.notes)

    result = db.verify()
    assert not result.ok
    assert result.first_bad == 46
    assert result.reason.startswith("the log ends at 45 but the signed head for entry 50 (signed ")
    assert result.reason.endswith(f"by key {db.signer.key_id}) records 50 entries (tail deleted)")


def test_a_rewritten_tail_is_caught_with_the_head_file(db: Db) -> None:
    db.fill(20)
    db.sql("DELETE FROM audit_log WHERE seq > 15")
    # A forger who rewrites entries 16 to 20 from a copy of the code gets a valid chain...
    forger = AuditLog(db.sessions, head_file=None)
    for index in range(15, 20):
        forger.append(record(index, outcome="denied"))
    forger.flush()
    assert verify_chain(db.sessions).ok
    # ...but not the head file's hash.
    result = verify_chain(db.sessions, db.head)
    assert (result.ok, result.first_bad) == (False, 20)
    assert "does not match the head file" in result.reason
    # ...nor the signed checkpoints.
    result = db.verify()
    assert not result.ok and result.first_bad is not None and result.first_bad <= 16
    assert "do not match the checkpoint for entry" in result.reason


def test_a_restart_after_tail_deletion_keeps_the_gap(db: Db) -> None:
    db.fill(50)
    db.sql("DELETE FROM audit_log WHERE seq > 45")
    db.fill(3, start=50)
    assert [row.seq for row in db.rows()][-4:] == [45, 51, 52, 53]
    result = db.verify()
    assert (result.ok, result.first_bad) == (False, 46)
    assert result.reason == "entries 46 to 50 are missing (seq 45 is followed by 51)"


def test_export_filters_by_time_and_lines_can_be_rechecked(db: Db, tmp_path: Path) -> None:
    db.fill(10)  # T0 .. T0 + 9 s
    out = tmp_path / "export.jsonl"
    with open(out, "w", encoding="utf-8") as handle:
        count = export_jsonl(db.sessions, handle, since=T0 + timedelta(seconds=6))
    lines = [json.loads(line) for line in out.read_text().split("\n") if line]
    assert lines[0] == {
        "export": {"format": "enclave-audit-export-1", "first_seq": 7, "head_seq": None}
    }
    lines = lines[1:]
    assert count == len(lines) == 4
    assert [line["seq"] for line in lines] == [7, 8, 9, 10]
    for line in lines:
        assert line["entry"]["time"] >= "2026-11-01T09:00:06"
        material = line["prev_hash"] + json.dumps(
            [line["seq"], line["entry"]], sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert hashlib.sha256(material.encode()).hexdigest() == line["hash"]
    assert [line["prev_hash"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]


def test_entries_keep_finding_types_and_counts_and_text_only_when_given(db: Db) -> None:
    audit = db.log()
    audit.append(record(1, findings=(("iban", 2), ("email", 1))))
    audit.append(record(2, prompt_text="Überweise an DE89 3704", response_text="ok"))
    audit.flush()
    first, second = (json.loads(row.payload) for row in db.rows())
    assert first["findings"] == [{"type": "iban", "count": 2}, {"type": "email", "count": 1}]
    assert first["prompt_text"] is None and first["response_text"] is None
    assert first["reasons"] == ["workspace floor: internal", "detector iban x2: confidential"]
    assert second["prompt_text"] == "Überweise an DE89 3704"
    assert db.verify().ok


def test_text_that_is_not_valid_utf8_does_not_wedge_the_writer(db: Db) -> None:
    audit = db.log()
    audit.append(record(1, prompt_text="lone surrogate \ud800 here", latency_ms=float("nan")))
    audit.flush(timeout=5)
    entry = json.loads(db.rows()[0].payload)
    assert entry["prompt_text"] == "lone surrogate ? here"
    assert entry["latency_ms"] is None
    assert db.verify().ok


def test_a_malformed_record_keeps_its_place_without_wedging_the_writer(db: Db) -> None:
    audit = db.log()
    audit.start()
    audit.append(record(1))
    audit.append(record(2, findings=(("iban", "many"),)))
    audit.append(record(3))
    audit.flush(timeout=5)
    entries = [json.loads(row.payload) for row in db.rows()]
    assert [entry["outcome"] for entry in entries] == ["ok", "unrecordable", "ok"]
    assert entries[1]["error"] == "ValueError"
    assert db.verify().ok
    audit.close()


def test_the_writer_survives_a_transient_database_error(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    state = fail_inserts(db.engine, times=1)
    audit = db.log()
    audit.start()
    with caplog.at_level(logging.ERROR):
        for index in range(20):
            audit.append(record(index, prompt_text=f"SECRET-PROMPT-{index}"))
        audit.flush(timeout=10)
    assert state["failed"] == 1
    assert [row.seq for row in db.rows()] == list(range(1, 21))
    assert db.verify().ok
    assert "audit log: writing" in caplog.text and "database is locked" in caplog.text
    assert "SECRET-PROMPT" not in caplog.text
    audit.close()


def test_appends_do_not_wait_for_a_database_that_is_down(db: Db) -> None:
    state = fail_inserts(db.engine, times=None)
    audit = db.log()
    audit.start()
    started = time.perf_counter()
    for index in range(2000):
        audit.append(record(index))
    assert time.perf_counter() - started < 1.0
    with pytest.raises(TimeoutError):
        audit.flush(timeout=0.3)
    assert state["failed"] >= 1
    state["left"] = 0  # the database comes back
    audit.flush(timeout=20)
    assert len(db.rows()) == 2000
    assert db.verify().ok
    audit.close()


def test_a_commit_that_reports_failure_is_not_written_twice(db: Db) -> None:
    calls = {"failed": 0}

    def sessions() -> Session:
        session = db.sessions()
        commit = session.commit

        def commit_then_fail() -> None:
            commit()
            if not calls["failed"]:
                calls["failed"] += 1
                raise OperationalError("COMMIT", {}, Exception("connection reset"))

        session.commit = commit_then_fail  # type: ignore[method-assign]
        return session

    audit = AuditLog(
        sessions,  # type: ignore[arg-type]
        head_file=db.head,
        checkpoint_file=db.checkpoints,
        signer=db.signer,
        flush_interval=0.01,
    )
    audit.start()
    for index in range(5):
        audit.append(record(index))
    audit.flush(timeout=10)
    audit.close()
    assert calls["failed"] == 1
    assert [row.seq for row in db.rows()] == [1, 2, 3, 4, 5]
    assert db.verify().ok


def test_close_gives_up_on_a_dead_database_and_says_how_much_was_lost(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    fail_inserts(db.engine, times=None)
    audit = db.log()
    audit.start()
    for index in range(3):
        audit.append(record(index))
    with caplog.at_level(logging.ERROR):
        audit.close(timeout=0.3)
    assert "3 record(s) were not written" in caplog.text


# The CLI, against a temporary ENCLAVE_HOME.


@pytest.fixture
def home(enclave_home: Path) -> Path:
    home = enclave_home
    return home


def fill_home(count: int) -> Db:
    settings = load_settings()
    engine, sessions = open_database(settings.resolved_database_url)
    signer = signer_from_settings(settings)
    assert signer is not None
    db = Db(engine, sessions, audit_head_path(settings), signer, audit_checkpoint_path(settings))
    db.fill(count)
    return db


def test_cli_verify_reports_ok_and_tampering(home: Path) -> None:
    db = fill_home(12)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    head = db.rows()[-1].hash
    assert result.stdout.startswith(f"audit log OK: 12 entries, head {head[:16]}, ")
    assert result.stdout.strip().endswith(f"signatures by key {db.signer.key_id}")

    db.sql("DELETE FROM audit_log WHERE seq = 4")
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 1
    assert result.stdout.strip() == (
        "audit log TAMPERED: entry 4 is missing (seq 3 is followed by 5)"
    )
    db.engine.dispose()


def test_cli_export_to_stdout_and_file(home: Path, tmp_path: Path) -> None:
    db = fill_home(10)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "export", "--since", "2026-11-01T09:00:07Z"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["seq"] for line in lines if "entry" in line] == [8, 9, 10]
    assert [next(iter(line)) for line in lines if "entry" not in line] == [
        "export",
        "checkpoint",
        "head",
    ]
    assert result.stderr.strip() == "exported 3 entries"

    out = tmp_path / "all.jsonl"
    result = runner.invoke(app, ["audit", "export", "--since", "2026-11-01", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert sum('"entry":' in line for line in out.read_text().splitlines()) == 10
    assert f"exported 10 entries to {out}" in result.stderr
    late = runner.invoke(app, ["audit", "export", "--since", "2026-11-02"]).stdout
    assert '"entry":' not in late and '"first_seq":11' in late
    db.engine.dispose()


def test_cli_export_refuses_a_bad_since(home: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "export", "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "not a date or time" in result.output
