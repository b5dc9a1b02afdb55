"""One audit chain written by several replicas on one Postgres database.

Each "replica" is an ``AuditLog(shared=True)`` with its own id, all signing
with one key, as ``cluster.replicas`` runs them. The invariants: whatever
replica wrote which entry and however their batches interleave, the chain
verifies and every record is in it exactly once; an intent left by a dead
replica becomes exactly one ``interrupted`` entry, whoever sweeps it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from enclave.gateway.audit import AuditLog, AuditRecord, verify_chain
from enclave.gateway.audit_keys import AuditSigner
from enclave.gateway.usage import UsageRecord
from enclave.storage.db import open_database
from tests.integration.conftest import fresh_database

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def record(marker: str, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "key_id": 1,
        "workspace": "default",
        "endpoint": "/v1/chat/completions",
        "requested_model": marker,
        "classification": "internal",
        "reasons": ("workspace floor: internal",),
        "provider": "mock",
        "location": "on-prem",
        "outcome": "ok",
        "status": 200,
    }
    fields.update(changes)
    return AuditRecord(**fields)


class Cluster:
    """Replicas on one database; ``live`` is what their heartbeats would say."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.signer = AuditSigner.generate()
        self.live: set[str] = set()
        self.logs: dict[str, AuditLog] = {}

    def replica(self, name: str, **options: Any) -> AuditLog:
        log = AuditLog(
            self.sessions,
            signer=self.signer,
            shared=True,
            replica=name,
            live_replicas=lambda: sorted(self.live),
            flush_interval=0.01,
            **options,
        )
        self.live.add(name)
        self.logs[name] = log
        return log

    def verify(self) -> Any:
        return verify_chain(
            self.sessions, keys={self.signer.key_id: self.signer.public_key}, shared=True
        )

    def markers(self) -> list[str]:
        with self.sessions() as session:
            payloads = session.execute(text("SELECT payload FROM audit_log ORDER BY seq")).all()
        return [json.loads(row.payload).get("requested_model") for row in payloads]

    def outcomes(self) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(text("SELECT outcome FROM audit_log ORDER BY seq")))

    def close(self) -> None:
        for log in self.logs.values():
            log.close(timeout=5)


@pytest.fixture
def cluster(postgres_uri: str) -> Iterator[Cluster]:
    engine, sessions = open_database(fresh_database(postgres_uri))
    group = Cluster(sessions)
    yield group
    group.close()
    engine.dispose()


def test_three_replicas_writing_at_once_make_one_verified_chain(cluster: Cluster) -> None:
    logs = [cluster.replica(f"r{index}") for index in range(3)]
    for log in logs:
        log.start()

    async def requests(log: AuditLog, name: str) -> None:
        for number in range(40):
            marker = f"{name}-{number}"
            intent = await log.intend(record(marker))
            usage = UsageRecord(T0, 1, "default", "mock", marker, 3, 4)
            await log.commit(record(marker, intent=intent), usage)

    def replica_thread(log: AuditLog, name: str) -> None:
        asyncio.run(requests(log, name))

    threads = [
        threading.Thread(target=replica_thread, args=(log, f"r{index}"))
        for index, log in enumerate(logs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    result = cluster.verify()
    assert result.ok, result.reason
    markers = cluster.markers()
    assert sorted(markers) == sorted(f"r{r}-{n}" for r in range(3) for n in range(40))
    with cluster.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM audit_intents")) == 0
        assert session.scalar(text("SELECT sum(prompt_tokens) FROM usage")) == 3 * 120
        # The replicas took turns: batches from different replicas interleave in one chain.
        assert session.scalar(text("SELECT count(*) FROM audit_checkpoints")) >= 3


def test_a_dead_replicas_intents_become_one_interrupted_entry_each(cluster: Cluster) -> None:
    dead = cluster.replica("dead")
    dead.start()
    intents = [asyncio.run(dead.intend(record(f"stream-{n}"))) for n in range(5)]
    assert len(intents) == 5
    cluster.live.discard("dead")  # SIGKILL: no close, no more heartbeats
    sweepers = [cluster.replica(f"s{n}") for n in range(3)]
    for log in sweepers:
        log.start()  # each sweeps at start
    for _ in range(3):
        threads = [threading.Thread(target=log.sweep) for log in sweepers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for log in sweepers:
        log.flush(10)
    outcomes = cluster.outcomes()
    assert outcomes.count("interrupted") == 5, outcomes
    assert sorted(cluster.markers()) == sorted(f"stream-{n}" for n in range(5))
    assert cluster.verify().ok


def test_live_replicas_intents_are_left_alone(cluster: Cluster) -> None:
    busy = cluster.replica("busy")
    busy.start()
    asyncio.run(busy.intend(record("in-flight")))
    other = cluster.replica("other")
    other.start()
    assert other.sweep() == 0
    other.flush(10)
    assert cluster.outcomes() == []


def test_an_entry_edited_in_the_shared_chain_is_named(cluster: Cluster) -> None:
    log = cluster.replica("a")
    log.start()
    for n in range(10):
        log.append(record(f"m{n}"))
    log.flush(10)
    assert cluster.verify().ok
    with cluster.sessions.begin() as session:
        payload = session.scalar(text("SELECT payload FROM audit_log WHERE seq = 4"))
        session.execute(
            text("UPDATE audit_log SET payload = :p WHERE seq = 4"),
            {"p": payload.replace('"m3"', '"mX"')},
        )
    result = cluster.verify()
    assert not result.ok and result.first_bad == 4, result.reason


def test_a_deleted_tail_of_the_shared_chain_is_named(cluster: Cluster) -> None:
    log = cluster.replica("a")
    log.start()
    for n in range(10):
        log.append(record(f"m{n}"))
    log.flush(10)
    with cluster.sessions.begin() as session:
        session.execute(text("DELETE FROM audit_log WHERE seq > 7"))
    result = cluster.verify()
    assert not result.ok and "tail deleted" in result.reason, result.reason


def test_a_shared_chain_needs_the_signing_key(cluster: Cluster) -> None:
    from enclave.errors import ConfigError

    with pytest.raises(ConfigError):
        AuditLog(cluster.sessions, shared=True, replica="x")


@settings(
    max_examples=8,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from(["commit", "append", "intend", "die"])),
        min_size=1,
        max_size=25,
    )
)
def test_any_interleaving_of_replicas_keeps_one_chain_with_each_record_once(
    postgres_uri: str, plan: list[tuple[int, str]]
) -> None:
    """Hypothesis: random steps by three replicas (commits, appends, intents left
    in flight, replicas dying and being swept): the chain verifies, every commit and
    append is in it once, every dead replica's intent is one interrupted entry, and
    every live replica's intent is still waiting."""
    engine, sessions = open_database(fresh_database(postgres_uri))
    group = Cluster(sessions)
    try:
        logs = [group.replica(f"r{n}") for n in range(3)]
        for log in logs:
            log.start()
        expected: list[str] = []
        in_flight: dict[int, list[str]] = {0: [], 1: [], 2: []}
        dead: set[int] = set()
        for step, (index, action) in enumerate(plan):
            if index in dead or (action == "die" and len(dead) == 2):
                continue  # the last replica stays: someone has to sweep
            log, marker = logs[index], f"{index}-{step}"
            if action == "commit":
                intent = asyncio.run(log.intend(record(marker)))
                asyncio.run(log.commit(record(marker, intent=intent)))
                expected.append(marker)
            elif action == "append":
                log.append(record(marker))
                expected.append(marker)
            elif action == "intend":
                asyncio.run(log.intend(record(marker)))
                in_flight[index].append(marker)
            else:
                log.flush(10)
                dead.add(index)
                group.live.discard(f"r{index}")
                expected.extend(in_flight[index])
                for survivor in range(3):
                    if survivor not in dead:
                        logs[survivor].sweep()
        for index in range(3):
            if index not in dead:
                logs[index].flush(10)
        for index in range(3):
            if index not in dead:
                logs[index].sweep()
                logs[index].flush(10)
        result = group.verify()
        assert result.ok, result.reason
        assert sorted(group.markers()) == sorted(expected)
        with sessions() as session:
            waiting = session.scalar(text("SELECT count(*) FROM audit_intents"))
        assert waiting == sum(len(in_flight[i]) for i in range(3) if i not in dead)
    finally:
        group.close()
        engine.dispose()
