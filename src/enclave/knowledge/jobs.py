"""Ingestion as durable background jobs: queued -> extracting -> embedding -> indexed.

One worker task per server runs the jobs in the database in order. Every
state change is committed, so a server that dies mid-job finds the job
unfinished at start-up and takes it up again; a document that keeps killing
the server is failed after :data:`MAX_ATTEMPTS`. A document that cannot be
read fails alone with a readable reason and the next job goes on.

Replicas. Several servers on one database each run a worker, and any of them
may run any job. A worker *claims* a job (``SELECT ... FOR UPDATE SKIP
LOCKED`` on Postgres, then a conditional ``UPDATE``, which alone is enough on
SQLite) together with a lease: ``leased_by`` is the worker's replica id and
``lease_until`` is ``job_lease_s`` ahead. The lease is renewed at every step
and batch and on a timer while the job runs. A job whose lease has lapsed
(its replica died) is claimed by another worker. Every write a job makes,
to the chunk store included, happens while the job's row is locked and only
after checking that the lease is still this worker's, so a worker that has
lost its job (a replica frozen past its lease) writes nothing more; on
Postgres the lock also keeps a claim out while such a write runs. The
uploaded bytes wait in the database (``knowledge_blobs``), written in the
transaction that queues the job, so every replica can read them; a URL's
fetched bytes are kept there too once fetched. A job taken over in its
embedding step resumes after the ``chunks_done`` chunks already stored: the
store publishes each ordinal once, so a batch stored twice (stored, then the
replica died before counting it) does not repeat a chunk. A job taken over
before that step starts again. Workers also look for claimable jobs every
``poll_s`` seconds, as jobs queued on another replica (and lapsed leases)
wake nobody here. A worker never claims a job while an older job for the same
document is unfinished, so two versions of one document never interleave.
Leases compare the replicas' clocks: keep them in step (NTP).

Memory stays bounded: PDFs are read page by page, and chunks are embedded
and stored in batches of ``knowledge.embed_batch``, never all at once. New
chunks stay hidden until the whole document is in; then one store call
swaps them for the previous version's, so a search never sees half a
document, and a failed re-index keeps serving the old version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session, aliased

from enclave.egress import Caller, EgressGuard
from enclave.knowledge.chunking import Chunk, iter_chunks
from enclave.knowledge.document import ExtractedDocument
from enclave.knowledge.extract import ExtractionError, extract
from enclave.knowledge.fetch import FetchError, fetch_url
from enclave.knowledge.service import KnowledgeService, sha256_file, utc_now
from enclave.knowledge.store.base import ChunkRow
from enclave.settings import UrlFetchConfig
from enclave.storage.models import (
    IngestionJobRow,
    KnowledgeBaseRow,
    KnowledgeBlobRow,
    KnowledgeDocumentRow,
    WorkspaceRow,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
UNFINISHED = ("extracting", "embedding")
DEFAULT_LEASE_S = 30.0
DEFAULT_POLL_S = 2.0


class JobGone(Exception):
    """The job's document was deleted while the job ran."""


class LeaseLost(Exception):
    """Another worker has taken the job over (this one's lease lapsed)."""


def default_replica_id() -> str:
    """This process's name as a job's lease holder: the host name and a random suffix."""
    return f"{socket.gethostname()[:50]}-{secrets.token_hex(4)}"


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Not finished, and never leased or leased by a worker whose lease has lapsed
    (or was given back)."""
    job = IngestionJobRow
    lapsed = or_(job.lease_until.is_(None), job.lease_until < now)
    return and_(job.state.in_(("queued", *UNFINISHED)), lapsed)


def embedding_input(chunk: Chunk, title: str | None) -> str:
    """What is embedded for a chunk: its heading path (context), then its text."""
    context = " > ".join(part for part in (title, *chunk.heading_path) if part)
    return f"{context}\n{chunk.text}" if context else chunk.text


def _batches(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    while batch := list(islice(chunks, size)):
        yield batch


class IngestionWorker:
    """Runs ingestion jobs one at a time, in the server's event loop.

    ``replica_id`` names this worker in the leases it holds (default: the host
    name and a random suffix); ``lease_s`` is ``cluster.job_lease_s``.
    ``replicas`` is ``cluster.replicas``: when False this is the only server on
    the database, so at start-up every unfinished job is its own previous
    life's and is taken up at once; when True, only jobs whose lease has lapsed
    (or that were leased under this same replica id) are. ``poll_s``: how often
    an idle worker looks for jobs queued elsewhere or left by a dead replica.
    """

    def __init__(
        self,
        service: KnowledgeService,
        url_fetch: UrlFetchConfig,
        egress: EgressGuard | None = None,
        *,
        replica_id: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        replicas: bool = False,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.service = service
        self.url_fetch = url_fetch
        self.egress = egress or EgressGuard()
        self.replica_id = replica_id or default_replica_id()
        self.lease = timedelta(seconds=lease_s)
        self.replicas = replicas
        self.poll_s = poll_s
        self.task: asyncio.Task[None] | None = None

    def recover(self) -> int:
        """Make the jobs a dead server left unfinished claimable now, and say so.

        Alone on the database that is every unfinished job; with replicas, only
        those whose lease has lapsed or that were leased under this replica id
        (a live replica's jobs are left to it). The jobs keep their state: one
        that was embedding resumes after the chunks it had stored.
        """
        now = utc_now()
        job = IngestionJobRow
        started = or_(
            job.state.in_(UNFINISHED), and_(job.state == "queued", job.leased_by.is_not(None))
        )
        query = select(job).where(started)
        if self.replicas:
            query = query.where(
                or_(
                    job.lease_until.is_(None),
                    job.lease_until < now,
                    job.leased_by == self.replica_id,
                )
            )
        with self.service.sessions.begin() as session:
            jobs = session.scalars(query.with_for_update(skip_locked=True)).all()
            for row in jobs:
                row.lease_until, row.updated_at = None, now
                log.warning("resuming ingestion job %d after a restart", row.id)
        return len(jobs)

    def start(self) -> None:
        self.recover()
        self.task = asyncio.create_task(self._run(), name="knowledge-ingestion")

    async def close(self) -> None:
        """Stop, and give back the lease of a job this worker was running, so
        another replica takes it up at once rather than when the lease lapses."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._give_back)

    def _give_back(self) -> None:
        with self.service.sessions.begin() as session:
            session.execute(
                update(IngestionJobRow)
                .where(
                    IngestionJobRow.leased_by == self.replica_id,
                    IngestionJobRow.state.in_(("queued", *UNFINISHED)),
                )
                .values(lease_until=None)
            )

    async def _run(self) -> None:
        ready = self.service.work_ready
        while True:
            ready.clear()
            try:
                job_id = self.claim()
            except Exception:  # the database is away for a moment: look again later
                log.exception("could not claim an ingestion job")
                job_id = None
            if job_id is None:
                # Woken by a job queued here, or after poll_s for one queued elsewhere.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), self.poll_s)
                continue
            try:
                await self.run_job(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job stop the worker
                log.exception("ingestion job %d crashed the worker loop", job_id)

    def claim(self) -> int | None:
        """Lease the oldest claimable job to this worker; its id, or None if there is none.

        Postgres locks the candidate row and skips rows other workers hold, so
        racing workers claim different jobs; the conditional UPDATE re-checks
        that the job is still claimable (what makes the claim safe on SQLite).
        A job is not claimable while an older job for its document is unfinished.
        """
        job, older = IngestionJobRow, aliased(IngestionJobRow)
        for _ in range(8):  # another worker won the candidate: try the next
            now = utc_now()
            blocked = exists().where(
                older.document_id == job.document_id,
                older.id < job.id,
                older.state.in_(UNFINISHED),
            )
            with self.service.sessions.begin() as session:
                job_id = session.scalar(
                    select(job.id)
                    .where(_claimable(now), ~blocked)
                    .order_by(job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if job_id is None:
                    return None
                claimed = session.execute(
                    update(job)
                    .where(job.id == job_id, _claimable(now))
                    .values(
                        leased_by=self.replica_id,
                        lease_until=now + self.lease,
                        attempts=job.attempts + 1,
                        updated_at=now,
                    )
                )
                if claimed.rowcount:  # type: ignore[attr-defined]
                    return job_id
        return None

    # -- the lease -----------------------------------------------------------

    def _held(self, session: Session, job_id: int) -> IngestionJobRow:
        """Lock the job's row and check this worker still holds it.

        Raises JobGone if the job was deleted, LeaseLost if another worker has it
        or it has ended meanwhile (superseded by a newer upload of its document).
        Callers change the row only after their store call: on SQLite (one file)
        a flushed change would hold the write lock the store needs.
        """
        job = session.get(IngestionJobRow, job_id, with_for_update=True, populate_existing=True)
        if job is None:
            raise JobGone
        if job.leased_by != self.replica_id or job.state not in ("queued", *UNFINISHED):
            raise LeaseLost
        return job

    def _renew(self, job_id: int) -> bool:
        """Extend the lease; False once another worker has the job (or it is gone)."""
        with self.service.sessions.begin() as session:
            renewed = session.execute(
                update(IngestionJobRow)
                .where(
                    IngestionJobRow.id == job_id,
                    IngestionJobRow.leased_by == self.replica_id,
                    IngestionJobRow.state.in_(("queued", *UNFINISHED)),
                )
                .values(lease_until=utc_now() + self.lease)
            )
            return bool(renewed.rowcount)  # type: ignore[attr-defined]

    async def _keep_lease(self, job_id: int) -> None:
        """Renew the lease a third of its length apart while the job runs (a long
        extraction or a slow batch writes nothing that would renew it)."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await asyncio.to_thread(self._renew, job_id):
                    return  # the job's own next write finds out and stops
            except Exception:  # the database is away for a moment: try again
                log.warning("could not renew the lease of ingestion job %d", job_id)

    # -- one job -------------------------------------------------------------

    def _transition(
        self, job_id: int, state: str, *, discard_hidden: bool = False, **fields: Any
    ) -> None:
        """Move a job (and its document's status) to ``state``; JobGone if it was deleted,
        LeaseLost if another worker has it. ``discard_hidden``: first delete the chunks
        an earlier attempt left hidden (while the job is held, so never another's)."""
        service = self.service
        with service.sessions.begin() as session:
            job = self._held(session, job_id)
            if discard_hidden:
                service.store.discard_hidden(job.kb_id, job.document_id)
            job.state, job.updated_at, job.lease_until = state, utc_now(), utc_now() + self.lease
            for key in ("reason", "attempts", "content_hash", "chunks_done", "blob_path"):
                if key in fields:
                    setattr(job, key, fields[key])
            document = session.get(KnowledgeDocumentRow, job.document_id)
            if document is None:
                raise JobGone
            document.status, document.updated_at = state, utc_now()
            document.reason = fields.get("reason")

    async def run_job(self, job_id: int) -> None:
        """Run a job this worker has claimed to ``indexed`` or ``failed``.

        A job taken over in its embedding step resumes after the chunks already
        stored. Never raises for a bad document; stops quietly when the job is
        taken over by another worker or deleted.
        """
        service = self.service
        with service.sessions() as session:
            job = session.get(IngestionJobRow, job_id)
            if job is None or job.leased_by != self.replica_id:
                return
            if job.state not in ("queued", *UNFINISHED):
                return
            attempts, resume = job.attempts, job.chunks_done if job.state == "embedding" else 0
            kb_id, document_id = job.kb_id, job.document_id
            source, url, blob, media_type = job.source, job.url, job.blob_path, job.media_type
            content_hash = job.content_hash
            document = session.get(KnowledgeDocumentRow, document_id)
            if document is None:
                return
            name, indexed_hash = document.name, document.content_hash
            indexed = document.indexed_at is not None
        path: Path | None = None
        keeper = asyncio.create_task(self._keep_lease(job_id), name=f"ingestion-lease-{job_id}")
        try:
            if attempts > MAX_ATTEMPTS:
                raise ExtractionError(
                    f"gave up after {MAX_ATTEMPTS} attempts: the server stopped while "
                    "ingesting this document each time"
                )
            if not resume:
                self._transition(job_id, "extracting")
            path = await asyncio.to_thread(self._blob_file, job_id, blob)
            if path is None and source == "url":
                assert url is not None
                resume = 0  # fetched again: its content may have changed
                fetched = await fetch_url(
                    url, service.blob_dir, self.url_fetch, self.egress, caller=self._caller(kb_id)
                )
                path, media_type = fetched.path, fetched.media_type
                content_hash = await asyncio.to_thread(sha256_file, path)
                await asyncio.to_thread(self._keep_fetched, job_id, path, content_hash, media_type)
                if indexed and content_hash == indexed_hash:
                    self._finish_unchanged(job_id)
                    return
            if path is None or content_hash is None:
                raise ExtractionError("the uploaded file is gone; upload it again")
            max_bytes = service.config.max_document_bytes
            extracted = await asyncio.to_thread(
                extract, path, name=name, media_type=media_type, max_bytes=max_bytes
            )
            if not resume:
                self._transition(job_id, "embedding", chunks_done=0, discard_hidden=True)
            count = await self._embed_and_store(job_id, kb_id, document_id, extracted, resume)
            if count == 0:
                raise ExtractionError("no text to index")
            self._finish(job_id, kb_id, document_id, extracted, content_hash, count)
        except LeaseLost:
            log.warning(
                "ingestion job %d was taken over by another worker (or superseded); stopped here",
                job_id,
            )
        except JobGone:
            service.store.discard_hidden(kb_id, document_id)
            log.info("ingestion job %d stopped: its document was deleted", job_id)
        except (ExtractionError, FetchError) as exc:
            self._fail(job_id, kb_id, document_id, str(exc))
        except Exception as exc:
            log.exception("ingestion job %d failed", job_id)
            self._fail(job_id, kb_id, document_id, f"internal error ({type(exc).__name__})")
        finally:
            keeper.cancel()
            if path is not None:
                path.unlink(missing_ok=True)

    def _blob_file(self, job_id: int, blob: str | None) -> Path | None:
        """The job's bytes in a file of this worker's own, from the database (or the
        file of a job queued before uploads were kept there); None if there are none."""
        with self.service.sessions() as session:
            content = session.scalar(
                select(KnowledgeBlobRow.content).where(KnowledgeBlobRow.job_id == job_id)
            )
        if content is None:
            legacy = self.service.blob_dir / blob if blob else None
            return legacy if legacy is not None and legacy.exists() else None
        path = self.service.blob_dir / f"job-{job_id}-{secrets.token_hex(4)}"
        path.write_bytes(content)
        return path

    def _keep_fetched(
        self, job_id: int, path: Path, content_hash: str, media_type: str | None
    ) -> None:
        """Keep a URL's fetched bytes with the job, so a worker taking it over reads the
        same content rather than fetching again."""
        content = path.read_bytes()
        with self.service.sessions.begin() as session:
            job = self._held(session, job_id)
            job.content_hash, job.media_type, job.updated_at = content_hash, media_type, utc_now()
            job.lease_until = utc_now() + self.lease
            session.execute(delete(KnowledgeBlobRow).where(KnowledgeBlobRow.job_id == job_id))
            session.add(KnowledgeBlobRow(job_id=job_id, content=content))

    def _caller(self, kb_id: int) -> Caller:
        """The workspace a URL is fetched for, named in the audit entry of a refusal."""
        with self.service.sessions() as session:
            workspace = session.scalar(
                select(WorkspaceRow.name)
                .join(KnowledgeBaseRow, KnowledgeBaseRow.workspace_id == WorkspaceRow.id)
                .where(KnowledgeBaseRow.id == kb_id)
            )
        return Caller(workspace=workspace or "")

    async def _embed_and_store(
        self,
        job_id: int,
        kb_id: int,
        document_id: int,
        extracted: ExtractedDocument,
        resume: int = 0,
    ) -> int:
        """Embed and store the document's chunks after the first ``resume`` (stored by an
        earlier attempt); returns how many chunks the document has."""
        service = self.service
        config = service.config
        # Chunked up front (cheap next to embedding; off the event loop for a big document),
        # so progress has a total and an ETA.
        chunks = await asyncio.to_thread(
            lambda: list(
                iter_chunks(
                    extracted.markdown,
                    extracted.pages,
                    max_tokens=config.chunk_tokens,
                    overlap_tokens=config.chunk_overlap,
                )
            )
        )
        service.embedding[document_id] = (len(chunks), time.monotonic())
        try:
            return await self._embed_batches(
                job_id, kb_id, document_id, extracted, chunks, min(resume, len(chunks))
            )
        finally:
            service.embedding.pop(document_id, None)

    async def _embed_batches(
        self,
        job_id: int,
        kb_id: int,
        document_id: int,
        extracted: ExtractedDocument,
        chunks: list[Chunk],
        done: int,
    ) -> int:
        service = self.service
        for batch in _batches(iter(chunks[done:]), service.config.embed_batch):
            vectors = await service.embedder.embed(
                [embedding_input(chunk, extracted.title) for chunk in batch], priority="bulk"
            )
            rows = [
                ChunkRow(
                    kb_id=kb_id,
                    document_id=document_id,
                    ordinal=chunk.ordinal,
                    text=chunk.text,
                    heading_path=chunk.heading_path,
                    page_start=chunk.page_start,
                    page_end=chunk.page_end,
                    char_start=chunk.start,
                    char_end=chunk.end,
                )
                for chunk in batch
            ]
            done += len(rows)
            await asyncio.to_thread(self._store_batch, job_id, rows, vectors, done)
        return done

    def _store_batch(self, job_id: int, rows: list[ChunkRow], vectors: Any, done: int) -> None:
        """Store a batch of hidden chunks and count it in ``chunks_done``, holding the job:
        a worker that has lost the job stores nothing."""
        with self.service.sessions.begin() as session:
            job = self._held(session, job_id)
            self.service.store.add(rows, vectors)
            job.chunks_done, job.updated_at, job.lease_until = (
                done,
                utc_now(),
                utc_now() + self.lease,
            )

    def _finish(
        self,
        job_id: int,
        kb_id: int,
        document_id: int,
        extracted: ExtractedDocument,
        content_hash: str,
        count: int,
    ) -> None:
        service = self.service
        with service.sessions.begin() as session:
            job = self._held(session, job_id)
            document = session.get(KnowledgeDocumentRow, document_id)
            if document is None:
                raise JobGone
            # The swap: the new chunks replace the old version's in one store transaction.
            service.store.publish(kb_id, document_id)
            now = utc_now()
            job.state, job.reason, job.updated_at, job.blob_path = "indexed", None, now, None
            job.chunks_done, job.lease_until = count, None
            self._drop_blob(session, job_id)
            document.status, document.reason = "indexed", None
            document.content_hash = content_hash
            document.format, document.title = extracted.format, extracted.title
            document.pages = len(extracted.pages) or None
            document.chunks = count
            document.updated_at = document.indexed_at = now
        log.info("indexed document %d (%d chunks)", document_id, count)

    def _finish_unchanged(self, job_id: int) -> None:
        with self.service.sessions.begin() as session:
            job = self._held(session, job_id)
            job.state, job.reason, job.updated_at = "indexed", "unchanged", utc_now()
            job.lease_until = None
            self._drop_blob(session, job_id)
            document = session.get(KnowledgeDocumentRow, job.document_id)
            if document is not None:
                document.status, document.reason = "indexed", None
                document.updated_at = utc_now()

    def _fail(self, job_id: int, kb_id: int, document_id: int, reason: str) -> None:
        service = self.service
        try:
            with service.sessions.begin() as session:
                job = self._held(session, job_id)
                service.store.discard_hidden(kb_id, document_id)
                job.state, job.reason, job.updated_at = "failed", reason, utc_now()
                job.blob_path, job.lease_until = None, None
                self._drop_blob(session, job_id)
                document = session.get(KnowledgeDocumentRow, document_id)
                if document is not None:
                    if document.indexed_at is not None:
                        reason += " (the previously indexed version is still served)"
                    document.status, document.reason = "failed", reason
                    document.updated_at = utc_now()
        except (JobGone, LeaseLost):
            return
        log.info("ingestion job %d failed: %s", job_id, reason)

    @staticmethod
    def _drop_blob(session: Session, job_id: int) -> None:
        """The job has ended: its bytes wait for nobody any more."""
        session.execute(delete(KnowledgeBlobRow).where(KnowledgeBlobRow.job_id == job_id))
