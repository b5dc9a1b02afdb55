"""The signed audit log: the tampering an attacker without the key can try, rotation, exports.

Each attack is done the way issue 12 describes it: with write access to the
database and to $ENCLAVE_HOME, but not to the signing key. Every one of them
verified as OK before the head and checkpoints were signed.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from enclave.cli.main import app
from enclave.gateway.audit import (
    AuditLog,
    AuditRecord,
    VerifyResult,
    entry_hash,
    export_jsonl,
    verify_chain,
    verify_export,
)
from enclave.gateway.audit_keys import AuditSigner, TrustedKeys, public_pem
from enclave.settings import load_settings
from enclave.storage.db import open_database

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def record(index: int, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0 + timedelta(seconds=index),
        "key_id": 7,
        "workspace": "research",
        "endpoint": "/v1/chat/completions",
        "requested_model": f"model-{index}",
        "classification": "internal",
        "reasons": ("workspace floor: internal",),
        "provider": "local",
        "location": "on-prem",
        "outcome": "ok",
        "status": 200,
    }
    fields.update(changes)
    return AuditRecord(**fields)


@dataclass
class Log:
    engine: Engine
    sessions: sessionmaker[Session]
    home: Path
    signer: AuditSigner

    @property
    def head(self) -> Path:
        return self.home / "audit.head"

    @property
    def checkpoints(self) -> Path:
        return self.home / "audit.checkpoints"

    def writer(self, signer: AuditSigner | None = None, **options: Any) -> AuditLog:
        return AuditLog(
            self.sessions,
            head_file=self.head,
            checkpoint_file=self.checkpoints,
            signer=signer or self.signer,
            **options,
        )

    def fill(self, count: int, start: int = 0, **options: Any) -> None:
        """Write ``count`` entries in batches of 5 (no thread), then close as the server does."""
        audit = self.writer(**options)
        for index in range(start, start + count):
            audit.append(record(index))
            if (index - start) % 5 == 4:
                audit.flush()
        audit.flush()
        audit.close()

    def keys(self, *signers: AuditSigner) -> TrustedKeys:
        return {signer.key_id: signer.public_key for signer in signers or (self.signer,)}

    def verify(self, *signers: AuditSigner) -> VerifyResult:
        return verify_chain(
            self.sessions, self.head, checkpoint_file=self.checkpoints, keys=self.keys(*signers)
        )

    def sql(self, statement: str, **params: Any) -> None:
        with self.sessions() as session:
            session.execute(text(statement), params)
            session.commit()

    def rows(self) -> list[Any]:
        with self.sessions() as session:
            return list(session.execute(text("SELECT * FROM audit_log ORDER BY seq")))

    def recompute_chain(self) -> None:
        """What anyone can do without the key: renumber, rehash, rewrite the plain head."""
        rows = self.rows()
        self.sql("DELETE FROM audit_log")
        prev = "0" * 64
        for seq, row in enumerate(rows, start=1):
            digest = entry_hash(prev, seq, row.payload)
            self.sql(
                "INSERT INTO audit_log (seq, time, workspace, key_id, outcome, payload, "
                "prev_hash, hash) VALUES (:seq, :time, :workspace, :key_id, :outcome, :payload, "
                ":prev, :hash)",
                seq=seq,
                time=row.time,
                workspace=row.workspace,
                key_id=row.key_id,
                outcome=row.outcome,
                payload=row.payload,
                prev=prev,
                hash=digest,
            )
            prev = digest
        # Keep the old signature (it is the only one there is) on the new seq and hash.
        head = json.loads(self.head.read_text())
        head.update(seq=len(rows), hash=prev)
        self.head.write_text(json.dumps(head))

    def export(self, since: datetime | None = None) -> str:
        out = io.StringIO()
        export_jsonl(
            self.sessions, out, since, head_file=self.head, checkpoint_file=self.checkpoints
        )
        return out.getvalue()


def open_log(home: Path) -> Log:
    home.mkdir(parents=True, exist_ok=True)
    engine, sessions = open_database(f"sqlite:///{home / 'enclave.db'}")
    return Log(engine, sessions, home, AuditSigner.generate())


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[Log]:
    log = open_log(tmp_path)
    yield log
    log.engine.dispose()


def forged_row(log: Log, seq: int, prev: str, **changes: Any) -> dict[str, Any]:
    payload = json.dumps(
        {**json.loads(log.rows()[0].payload), **changes},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    entry = json.loads(payload)
    return {
        "seq": seq,
        "time": datetime.fromisoformat(entry["time"]),
        "workspace": entry["workspace"],
        "key_id": entry["key_id"],
        "outcome": entry["outcome"],
        "payload": payload,
        "prev": prev,
        "hash": entry_hash(prev, seq, payload),
    }


def insert_row(log: Log, row: dict[str, Any]) -> None:
    log.sql(
        "INSERT INTO audit_log (seq, time, workspace, key_id, outcome, payload, prev_hash, hash) "
        "VALUES (:seq, :time, :workspace, :key_id, :outcome, :payload, :prev, :hash)",
        **row,
    )


# The four cases of issue 12.


def test_deleting_every_row_and_the_head_fails(audit_log: Log) -> None:
    audit_log.fill(20)
    assert audit_log.verify().ok
    audit_log.sql("DELETE FROM audit_log")
    audit_log.head.unlink()
    result = audit_log.verify()
    assert not result.ok
    assert result.reason.startswith("the log is empty but the checkpoint for entry 20")
    assert result.reason.endswith("records 20 entries (every entry was deleted)")


def test_deleting_the_last_row_and_the_head_fails(audit_log: Log) -> None:
    audit_log.fill(20)
    audit_log.sql("DELETE FROM audit_log WHERE seq = 20")
    audit_log.head.unlink()
    result = audit_log.verify()
    assert (result.ok, result.first_bad) == (False, 20)
    assert result.reason.startswith("the log ends at 19 but the checkpoint for entry 20")
    assert result.reason.endswith("(tail deleted)")


def test_a_missing_head_fails_while_entries_exist(audit_log: Log) -> None:
    audit_log.fill(20)
    audit_log.head.unlink()
    result = audit_log.verify()
    assert not result.ok
    assert result.reason.startswith(f"the head file {audit_log.head} is missing while the log")


def test_missing_checkpoints_fail_while_entries_exist(audit_log: Log) -> None:
    audit_log.fill(20)
    audit_log.checkpoints.unlink()
    result = audit_log.verify()
    assert not result.ok
    assert "there is no signed checkpoint" in result.reason
    assert "(the checkpoint file was deleted)" in result.reason


def test_an_edited_row_with_the_chain_recomputed_and_the_head_rewritten_fails(
    audit_log: Log,
) -> None:
    audit_log.fill(30, checkpoint_entries=10)
    row = audit_log.rows()[16]  # entry 17
    audit_log.sql(
        "UPDATE audit_log SET payload = :p WHERE seq = 17",
        p=row.payload.replace('"status":200', '"status":403'),
    )
    audit_log.recompute_chain()
    assert verify_chain(audit_log.sessions, audit_log.head).ok  # the unsigned check is fooled
    result = audit_log.verify()
    assert not result.ok
    assert "has a signature that does not verify" in result.reason
    # Without the forged head, the checkpoints (at 5, 15, 25 and 30) narrow it down to 16 .. 25.
    audit_log.head.unlink()
    result = audit_log.verify()
    assert (result.ok, result.first_bad) == (False, 16)
    assert result.reason.startswith("entries 16 to 25 do not match the checkpoint for entry 25")
    assert "the chain recomputed without the signing key" in result.reason


def test_a_forged_entry_appended_with_a_valid_chain_fails(audit_log: Log) -> None:
    audit_log.fill(20)
    last = audit_log.rows()[-1]
    insert_row(audit_log, forged_row(audit_log, 21, last.hash, outcome="denied"))
    assert verify_chain(audit_log.sessions, audit_log.head).ok  # the unsigned check is fooled
    result = audit_log.verify()
    assert (result.ok, result.first_bad) == (False, 21)
    assert result.reason.startswith("entry 21 is not covered by the signed head for entry 20")
    assert result.reason.endswith("they were added without the signing key")


def test_a_head_signed_by_another_key_fails(audit_log: Log) -> None:
    audit_log.fill(10)
    forger = AuditSigner.generate()
    audit_log.sql("DELETE FROM audit_log WHERE seq > 8")
    audit_log.head.unlink()
    audit_log.checkpoints.unlink()
    AuditLog(audit_log.sessions, head_file=audit_log.head, signer=forger).flush()
    forged = audit_log.writer(signer=forger)
    forged.append(record(99))
    forged.flush()
    forged.close()
    result = audit_log.verify()
    assert not result.ok
    assert f"is signed by key {forger.key_id}, which is not trusted" in result.reason


def test_an_old_head_put_back_after_newer_checkpoints_fails(audit_log: Log) -> None:
    audit_log.fill(10)
    old_head = audit_log.head.read_text()
    audit_log.fill(10, start=10)
    audit_log.sql("DELETE FROM audit_log WHERE seq > 10")
    audit_log.head.write_text(old_head)
    result = audit_log.verify()
    assert not result.ok
    assert "records entry 10, older than the checkpoint for entry 20" in result.reason


def test_a_crash_before_the_head_is_signed_is_adopted_with_a_note(audit_log: Log) -> None:
    audit_log.fill(10)
    crashed = AuditLog(audit_log.sessions, head_file=None)  # commits, dies before signing
    for index in range(10, 13):
        crashed.append(record(index))
    crashed.flush()
    assert not audit_log.verify().ok
    audit_log.fill(2, start=13)  # the restart
    result = audit_log.verify()
    assert result.ok and result.entries == 15, result.reason
    assert any(
        note.startswith("entries 11 to 13 were signed only when the server started")
        for note in result.notes
    )


def test_a_checkpoint_is_written_on_shutdown_and_every_n_entries(audit_log: Log) -> None:
    audit_log.fill(23, checkpoint_entries=10)
    lines = [json.loads(line) for line in audit_log.checkpoints.read_text().splitlines()]
    kinds = [(line["kind"], line["seq"]) for line in lines]
    assert kinds[0] == ("start", 5)
    assert ("periodic", 15) in kinds
    assert kinds[-1] == ("shutdown", 23)
    assert all(line["key_id"] == audit_log.signer.key_id for line in lines)
    assert audit_log.verify().checkpoints == len(lines) + 1  # and the head


# Rotation.


def test_a_new_key_starts_a_new_series_and_old_keys_stay_valid(audit_log: Log) -> None:
    audit_log.fill(10)
    new = AuditSigner.generate()
    audit_log.fill(10, start=10, signer=new)
    lines = [json.loads(line) for line in audit_log.checkpoints.read_text().splitlines()]
    assert {line["key_id"] for line in lines} == {audit_log.signer.key_id, new.key_id}
    assert lines[-1]["key_id"] == new.key_id

    result = audit_log.verify(audit_log.signer, new)
    assert result.ok and result.entries == 20, result.reason
    assert set(result.key_ids) == {audit_log.signer.key_id, new.key_id}
    only_new = audit_log.verify(new)
    assert not only_new.ok
    assert f"signed by key {audit_log.signer.key_id}, which is not trusted" in only_new.reason


# Exports, checked offline.


def test_an_export_verifies_with_the_public_key_only(audit_log: Log) -> None:
    audit_log.fill(20, checkpoint_entries=7)
    exported = audit_log.export()
    result = verify_export(exported.splitlines(keepends=True), audit_log.keys())
    assert result.ok and result.entries == 20, result.reason
    assert result.reason.startswith("20 entries, entries 1 to 20")

    partial = audit_log.export(since=T0 + timedelta(seconds=12))
    result = verify_export(partial.splitlines(), audit_log.keys())
    assert result.ok and result.entries == 8, result.reason
    assert result.reason.startswith("8 entries, entries 13 to 20")

    wrong_key = verify_export(exported.splitlines(), {"x": AuditSigner.generate().public_key})
    assert not wrong_key.ok and "which is not trusted" in wrong_key.reason


def test_an_edited_export_line_is_named(audit_log: Log) -> None:
    audit_log.fill(12)
    lines = audit_log.export().splitlines()
    index = next(i for i, line in enumerate(lines) if '"seq":6}' in line)
    lines[index] = lines[index].replace('"status":200', '"status":500')
    result = verify_export(lines, audit_log.keys())
    assert (result.ok, result.first_bad) == (False, 6)
    assert result.reason == "entry 6 was edited (hash mismatch)"


def test_an_export_with_its_tail_cut_or_its_chain_recomputed_fails(audit_log: Log) -> None:
    audit_log.fill(12)
    lines = audit_log.export().splitlines()
    cut = verify_export(lines[:-2], audit_log.keys())
    assert not cut.ok and "the export ends at 10 but the signed head for entry 12" in cut.reason

    # Edit entry 3 and recompute every hash after it: the signed hashes no longer match.
    entries = [json.loads(line) for line in lines if line.startswith('{"entry":')]
    entries[2]["entry"]["outcome"] = "denied"
    prev = "0" * 64
    rebuilt = [line for line in lines if not line.startswith('{"entry":')]
    for entry in entries:
        entry["prev_hash"] = prev
        material = prev + json.dumps(
            [entry["seq"], entry["entry"]], sort_keys=True, separators=(",", ":")
        )
        entry["hash"] = prev = hashlib.sha256(material.encode()).hexdigest()
        rebuilt.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    result = verify_export(rebuilt, audit_log.keys())
    assert not result.ok and "do not match" in result.reason


def test_cli_verifies_an_export_offline(
    enclave_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    engine, sessions = open_database(settings.resolved_database_url)
    audit = AuditLog.from_settings(sessions, settings)  # creates the key under home
    key_file = settings.home / "audit-signing-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    for index in range(8):
        audit.append(record(index))
    audit.flush()
    audit.close()
    runner = CliRunner()
    public = tmp_path / "audit.pub"
    result = runner.invoke(app, ["audit", "public-key", "--output", str(public)])
    assert result.exit_code == 0, result.output
    assert audit.signer is not None
    assert public.read_text() == public_pem(audit.signer.public_key)
    export = tmp_path / "export.jsonl"
    assert runner.invoke(app, ["audit", "export", "-o", str(export)]).exit_code == 0
    engine.dispose()

    # The auditor's machine: no home, no database, only the export and the public key.
    monkeypatch.setenv("ENCLAVE_HOME", str(tmp_path / "elsewhere"))
    result = runner.invoke(
        app, ["audit", "verify", "--public-key", str(public), "--file", str(export)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("export OK: 8 entries, head ")
    assert not (tmp_path / "elsewhere").exists()

    text_ = export.read_text().replace('"requested_model":"model-3"', '"requested_model":"x"')
    export.write_text(text_)
    result = runner.invoke(
        app, ["audit", "verify", "--public-key", str(public), "--file", str(export)]
    )
    assert result.exit_code == 1
    assert result.stdout.strip() == "export TAMPERED: entry 4 was edited (hash mismatch)"


def test_cli_keygen_writes_a_private_key_and_its_public_key(tmp_path: Path) -> None:
    key = tmp_path / "audit-2027.pem"
    result = CliRunner().invoke(app, ["audit", "keygen", "--output", str(key)])
    assert result.exit_code == 0, result.output
    assert key.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "audit-2027.pem.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    again = CliRunner().invoke(app, ["audit", "keygen", "--output", str(key)])
    assert again.exit_code == 2


# Any single change by someone without the key is caught.

ATTACKS = st.sampled_from(["edit", "delete", "insert", "swap"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    count=st.integers(min_value=1, max_value=14),
    checkpoint_entries=st.integers(min_value=1, max_value=20),
    attack=ATTACKS,
    where=st.integers(min_value=0, max_value=100),
    other=st.integers(min_value=0, max_value=100),
)
def test_any_single_change_with_the_chain_recomputed_is_detected(
    count: int, checkpoint_entries: int, attack: str, where: int, other: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        log = open_log(Path(folder))
        try:
            log.fill(count, checkpoint_entries=checkpoint_entries)
            assert log.verify().ok
            rows = log.rows()
            target = rows[where % count]
            if attack == "edit":
                log.sql(
                    "UPDATE audit_log SET payload = :p WHERE seq = :s",
                    p=target.payload.replace('"status":200', '"status":451'),
                    s=target.seq,
                )
            elif attack == "delete":
                log.sql("DELETE FROM audit_log WHERE seq = :s", s=target.seq)
            elif attack == "insert":
                # Shift everything from the target on, and put a forged entry in its place.
                position = where % (count + 1) + 1
                log.sql("UPDATE audit_log SET seq = seq + 1000 WHERE seq >= :s", s=position)
                insert_row(log, forged_row(log, position, "0" * 64, outcome="denied"))
            else:
                second = rows[other % count]
                if second.seq == target.seq:
                    second = rows[(other + 1) % count]
                if second.seq == target.seq:  # one entry: nothing to swap, edit instead
                    log.sql("UPDATE audit_log SET payload = '{}' WHERE seq = 1")
                else:
                    for seq, row in ((target.seq, second), (second.seq, target)):
                        log.sql(
                            "UPDATE audit_log SET payload = :p, time = :t, outcome = :o "
                            "WHERE seq = :s",
                            p=row.payload,
                            t=row.time,
                            o=row.outcome,
                            s=seq,
                        )
            log.recompute_chain()
            result = log.verify()
            assert not result.ok, (attack, count, where)
            assert result.reason
        finally:
            log.engine.dispose()
