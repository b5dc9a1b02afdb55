"""Ingestion jobs shared by replicas on one Postgres database: claims, leases, takeovers.

Each "replica" is a KnowledgeService and an IngestionWorker of its own (its own
engine, chunk store and blob folder, a different replica id) on one real
Postgres database with pgvector. A replica "dies" by raising :class:`Killed`
(a BaseException, so nothing in the worker catches it) at a chosen step of its
job: before or after an embedding call or a chunk store write. Its lease is
then left to lapse, as a SIGKILLed process leaves it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from enclave.gateway.classification import Levels
from enclave.knowledge.jobs import IngestionWorker
from enclave.knowledge.service import Embedder, KnowledgeService, sha256_file
from enclave.knowledge.store import open_store
from enclave.knowledge.store.base import VectorStore
from enclave.settings import KnowledgeConfig, UrlFetchConfig
from enclave.storage.db import open_database
from enclave.storage.models import (
    IngestionJobRow,
    KnowledgeBlobRow,
    KnowledgeDocumentRow,
    WorkspaceRow,
)
from tests.integration.conftest import fresh_database

DIM = 16
LEASE_S = 0.6
LEVELS = Levels(["public", "internal", "confidential", "secret"])
# Small chunks and batches: a document of a few KB is some 20 chunks in 7 batches.
CONFIG = KnowledgeConfig(chunk_tokens=32, chunk_overlap=0, embed_batch=3)

DOCUMENT = "\n\n".join(
    f"## Part {i}\n\n"
    + " ".join(f"Clause {i}.{j} sets rule {i * j % 13} for the ledger." for j in range(6))
    for i in range(12)
)


class Killed(BaseException):
    """The replica died here (nothing in the worker catches a BaseException)."""


@dataclass
class Steps:
    """Counts a replica's steps (embedding calls and store writes) and dies at one."""

    kill_at: int | None = None
    phase: str = "before"  # die before or after the step's real work
    taken: int = 0
    calls: list[str] = field(default_factory=list)

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        index, self.taken = self.taken, self.taken + 1
        self.calls.append(name)
        if index == self.kill_at and self.phase == "before":
            raise Killed(name)
        result = work()
        if index == self.kill_at and self.phase == "after":
            raise Killed(name)
        return result


class WordEmbedder:
    """Deterministic bag-of-words vectors; a stand-in for the embedding model."""

    model_id = "test/words"
    dimension = DIM

    def __init__(self, steps: Steps | None = None, gate: asyncio.Event | None = None) -> None:
        self.steps = steps or Steps()
        self.gate = gate  # when set: each call waits for it (a frozen replica)
        self.calls = 0

    def resolve(self) -> Any:
        return SimpleNamespace(clearance="secret", qualified="test/words")

    async def embed(self, texts: Sequence[str], *, priority: str = "interactive") -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(0.002)  # let other replicas' tasks run in between
        if self.gate is not None:
            await self.gate.wait()
        return cast(np.ndarray, self.steps.step("embed", lambda: vectors(texts)))


def vectors(texts: Sequence[str]) -> np.ndarray:
    matrix = np.full((len(texts), DIM), 1e-3, dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            matrix[row, zlib.crc32(word.encode()) % DIM] += 1.0
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


class DyingStore:
    """The replica's real chunk store, counting its writes as steps."""

    def __init__(self, store: VectorStore, steps: Steps) -> None:
        self._store, self._steps = store, steps

    def add(self, chunks: Any, vectors: Any) -> list[int]:
        return cast(list[int], self._steps.step("add", lambda: self._store.add(chunks, vectors)))

    def publish(self, kb_id: int, document_id: int) -> int:
        return cast(
            int, self._steps.step("publish", lambda: self._store.publish(kb_id, document_id))
        )

    def discard_hidden(self, kb_id: int, document_id: int) -> int:
        return cast(
            int, self._steps.step("discard", lambda: self._store.discard_hidden(kb_id, document_id))
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class Replica:
    service: KnowledgeService
    worker: IngestionWorker
    store: VectorStore
    steps: Steps
    embedder: WordEmbedder

    def close(self) -> None:
        self.store.close()


@dataclass
class Cluster:
    """One Postgres database and the replicas started on it."""

    url: str
    tmp: Path
    sessions: sessionmaker[Session]
    workspace_id: int
    names: Iterator[int] = field(default_factory=itertools.count)
    replicas: list[Replica] = field(default_factory=list)

    def replica(
        self,
        replica_id: str,
        steps: Steps | None = None,
        gate: asyncio.Event | None = None,
        *,
        replicas: bool = True,
        lease_s: float = LEASE_S,
    ) -> Replica:
        _, sessions = open_database(self.url)  # each replica migrates; only the first does work
        store = open_store(self.url, DIM)
        steps = steps or Steps()
        embedder = WordEmbedder(steps, gate)
        service = KnowledgeService(
            sessions=sessions,
            store=cast(VectorStore, DyingStore(store, steps)),
            embedder=cast(Embedder, embedder),
            levels=LEVELS,
            config=CONFIG,
            blob_dir=self.tmp / replica_id,
        )
        worker = IngestionWorker(
            service,
            UrlFetchConfig(),
            replica_id=replica_id,
            lease_s=lease_s,
            replicas=replicas,
            poll_s=0.05,
        )
        replica = Replica(service, worker, store, steps, embedder)
        self.replicas.append(replica)
        return replica

    def upload(self, replica: Replica, content: str = DOCUMENT, name: str | None = None) -> int:
        """Queue a document through ``replica``; returns its job id."""
        path = self.tmp / f"incoming-{next(self.names)}"
        path.write_text(content)
        result = replica.service.add_upload(
            self.workspace_id,
            "kb",
            name=name or f"doc-{next(self.names)}.md",
            upload=path,
            content_hash=sha256_file(path),
            size_bytes=path.stat().st_size,
        )
        assert result.job_id is not None
        return result.job_id

    def job(self, job_id: int) -> IngestionJobRow:
        with self.sessions() as session:
            job = session.get(IngestionJobRow, job_id)
            assert job is not None
            return job

    def document(self, job_id: int) -> KnowledgeDocumentRow:
        with self.sessions() as session:
            document = session.get(KnowledgeDocumentRow, self.job(job_id).document_id)
            assert document is not None
            return document

    def published(self, job_id: int) -> list[tuple[int, str]]:
        """(ordinal, text) of the job's document's searchable chunks."""
        job = self.job(job_id)
        store = self.replicas[0].store
        return [(c.ordinal, c.text) for c in store.chunks(job.kb_id, job.document_id, limit=10_000)]

    def blobs(self) -> int:
        with self.sessions() as session:
            return len(session.scalars(select(KnowledgeBlobRow.job_id)).all())


@pytest.fixture
def cluster(tmp_path: Path, postgres_uri: str) -> Iterator[Cluster]:
    url = fresh_database(postgres_uri).replace("postgresql://", "postgresql+psycopg://", 1)
    engine, sessions = open_database(url)
    with sessions() as session:  # the migrations create the default workspace
        workspace_id = session.scalar(select(WorkspaceRow.id).where(WorkspaceRow.name == "default"))
        assert workspace_id is not None
    cluster = Cluster(url, tmp_path, sessions, workspace_id)
    setup = cluster.replica("setup")
    setup.service.create_base(workspace_id, "kb")
    yield cluster
    for replica in cluster.replicas:
        replica.close()
    engine.dispose()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def run_until_dead(replica: Replica, cluster: Cluster, job_id: int) -> bool:
    """Run the replica's worker until it dies or the job ends; True if it died."""
    replica.worker.start()
    task = replica.worker.task
    assert task is not None
    await until(lambda: task.done() or cluster.job(job_id).state in ("indexed", "failed"))
    if task.done():
        assert isinstance(task.exception(), Killed)
        return True
    await replica.worker.close()
    return False


def reference(cluster: Cluster) -> list[tuple[int, str]]:
    """The document's chunks as one uninterrupted ingestion makes them."""
    replica = cluster.replica("reference")
    job_id = cluster.upload(replica)

    async def run() -> None:
        replica.worker.start()
        await until(lambda: cluster.job(job_id).state == "indexed")
        await replica.worker.close()

    asyncio.run(run())
    chunks = cluster.published(job_id)
    assert len(chunks) >= 15 and [ordinal for ordinal, _ in chunks] == list(range(len(chunks)))
    return chunks


# -- claims ----------------------------------------------------------------------


def test_racing_claims_take_each_job_exactly_once(cluster: Cluster) -> None:
    """Eight workers in eight threads claim from one queue at once: no job twice."""
    queued = cluster.replica("queue")
    jobs = {cluster.upload(queued, f"# Note {i}\n\nText number {i}.") for i in range(40)}
    # A lease longer than the test: a claimed job must stay claimed (nobody runs it here).
    claimers = [cluster.replica(f"claimer-{i}", lease_s=300) for i in range(8)]
    claimed: dict[str, list[int]] = {c.worker.replica_id: [] for c in claimers}
    start = threading.Barrier(len(claimers))

    def claim_all(replica: Replica) -> None:
        start.wait()
        while (job_id := replica.worker.claim()) is not None:
            claimed[replica.worker.replica_id].append(job_id)

    threads = [threading.Thread(target=claim_all, args=(c,)) for c in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every = [job_id for ids in claimed.values() for job_id in ids]
    assert sorted(every) == sorted(jobs)  # each job claimed, none twice
    assert sum(1 for ids in claimed.values() if ids) > 1  # it was a race
    for replica_id, ids in claimed.items():
        for job_id in ids:
            job = cluster.job(job_id)
            assert job.leased_by == replica_id and job.attempts == 1


def test_two_replicas_share_a_queue_and_never_both_run_a_job(cluster: Cluster) -> None:
    """Two full workers, each on its own event loop and thread, drain one queue."""
    queued = cluster.replica("queue")
    jobs = [cluster.upload(queued, f"# Memo {i}\n\n{DOCUMENT[: 300 + 40 * i]}") for i in range(12)]
    runs: list[tuple[str, int]] = []

    def replica_thread(name: str) -> None:
        replica = cluster.replica(name)
        run_job = replica.worker.run_job

        async def counted(job_id: int) -> None:
            runs.append((name, job_id))
            await run_job(job_id)

        replica.worker.run_job = counted  # type: ignore[method-assign]

        async def main() -> None:
            replica.worker.start()
            await until(lambda: all(cluster.job(j).state == "indexed" for j in jobs), 60)
            await replica.worker.close()

        asyncio.run(main())

    threads = [threading.Thread(target=replica_thread, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(job_id for _, job_id in runs) == sorted(jobs)  # each run once, by one replica
    assert {name for name, _ in runs} == {"a", "b"}
    for job_id in jobs:
        chunks = cluster.published(job_id)
        assert [ordinal for ordinal, _ in chunks] == list(range(cluster.document(job_id).chunks))
    assert cluster.blobs() == 0  # every upload's bytes deleted when its job ended


# -- takeover --------------------------------------------------------------------


def test_a_dead_replicas_job_is_taken_over_after_its_lease_and_resumed(cluster: Cluster) -> None:
    expected = reference(cluster)
    # Dies after storing its third batch, before counting it in chunks_done.
    a = cluster.replica("a", Steps(kill_at=6, phase="after"))
    b = cluster.replica("b")
    job_id = cluster.upload(a)

    async def run() -> None:
        assert await run_until_dead(a, cluster, job_id)
        assert a.steps.calls[-1] == "add"
        job = cluster.job(job_id)
        assert (job.state, job.leased_by, job.chunks_done) == ("embedding", "a", 6)
        # The lease still holds: neither a claim nor a replica starting up takes the job.
        assert b.worker.claim() is None
        assert b.worker.recover() == 0
        await asyncio.sleep(LEASE_S)
        assert b.worker.claim() == job_id
        await b.worker.run_job(job_id)

    asyncio.run(run())

    assert cluster.document(job_id).status == "indexed"
    assert cluster.published(job_id) == expected  # each chunk once, none lost
    job = cluster.job(job_id)
    assert (job.leased_by, job.attempts) == ("b", 2)
    # b resumed after the 6 counted chunks (2 batches), embedding the rest only.
    assert b.embedder.calls == -(-(len(expected) - 6) // CONFIG.embed_batch)
    assert cluster.blobs() == 0


def test_a_replica_that_lost_its_lease_writes_nothing_more(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen replica (stopped renewing, stuck in a batch) wakes after another
    replica has taken its job over and finished it: it stores no chunk."""
    expected = reference(cluster)

    async def run() -> None:
        gate = asyncio.Event()
        a = cluster.replica("a", gate=gate)
        b = cluster.replica("b")

        async def frozen(job_id: int) -> None:  # a's lease timer never runs
            await asyncio.Event().wait()

        a.worker._keep_lease = frozen  # type: ignore[method-assign]
        job_id = cluster.upload(a)
        a.worker.start()
        await until(lambda: a.embedder.calls == 1)  # a is stuck inside its first batch
        await asyncio.sleep(LEASE_S)
        b.worker.start()
        await until(lambda: cluster.job(job_id).state == "indexed")
        gate.set()  # a wakes up and tries to store its batch
        await until(lambda: "taken over" in caplog.text)
        await a.worker.close()
        await b.worker.close()
        # Its discard came while it held the job; no store write after it lost it.
        assert a.steps.calls == ["discard", "embed"]
        assert cluster.published(job_id) == expected

    asyncio.run(run())


def test_starting_alone_takes_unfinished_jobs_at_once(cluster: Cluster) -> None:
    """Without replicas (cluster.replicas false) a restarted server's unfinished jobs are
    its own: recover() frees them without waiting for the lease."""
    expected = reference(cluster)
    a = cluster.replica("a", Steps(kill_at=4, phase="before"))
    job_id = cluster.upload(a)
    assert asyncio.run(run_until_dead(a, cluster, job_id))
    restarted = cluster.replica("restarted", replicas=False)
    assert restarted.worker.recover() == 1
    assert restarted.worker.claim() == job_id
    asyncio.run(restarted.worker.run_job(job_id))
    assert cluster.published(job_id) == expected


@hypothesis_settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kill_at=st.integers(min_value=0, max_value=20), phase=st.sampled_from(["before", "after"]))
def test_wherever_a_replica_dies_the_document_ends_indexed_with_each_chunk_once(
    cluster: Cluster, kill_at: int, phase: str
) -> None:
    if not hasattr(cluster, "expected"):
        cluster.expected = reference(cluster)  # type: ignore[attr-defined]
    expected = cluster.expected  # type: ignore[attr-defined]
    a = cluster.replica(f"a{kill_at}{phase}", Steps(kill_at=kill_at, phase=phase))
    b = cluster.replica(f"b{kill_at}{phase}")
    job_id = cluster.upload(a)

    async def run() -> None:
        died = await run_until_dead(a, cluster, job_id)
        if died:  # b takes the job up once a's lease lapses, whatever state it was in
            b.worker.start()
            await until(lambda: cluster.job(job_id).state in ("indexed", "failed"))
            await b.worker.close()

    asyncio.run(run())

    assert cluster.document(job_id).status == "indexed"
    assert cluster.published(job_id) == expected
    for replica in (a, b):
        replica.close()
    cluster.replicas = [r for r in cluster.replicas if r not in (a, b)]
