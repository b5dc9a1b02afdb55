"""Ingestion as durable background jobs: queued -> extracting -> embedding -> indexed.

One worker task per server runs the jobs in the database in order. Every
state change is committed, so a server that dies mid-job finds the job
unfinished at start-up, discards the chunks it had half-made, and runs it
again; a document that keeps killing the server is failed after
:data:`MAX_ATTEMPTS`. A document that cannot be read fails alone with a
readable reason and the next job goes on.

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
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

from sqlalchemy import select, update

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
    KnowledgeDocumentRow,
    WorkspaceRow,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
UNFINISHED = ("extracting", "embedding")


class JobGone(Exception):
    """The job's document was deleted while the job ran."""


def embedding_input(chunk: Chunk, title: str | None) -> str:
    """What is embedded for a chunk: its heading path (context), then its text."""
    context = " > ".join(part for part in (title, *chunk.heading_path) if part)
    return f"{context}\n{chunk.text}" if context else chunk.text


def _batches(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    while batch := list(islice(chunks, size)):
        yield batch


class IngestionWorker:
    """Runs queued ingestion jobs one at a time, in the server's event loop."""

    def __init__(
        self,
        service: KnowledgeService,
        url_fetch: UrlFetchConfig,
        egress: EgressGuard | None = None,
    ) -> None:
        self.service = service
        self.url_fetch = url_fetch
        self.egress = egress or EgressGuard()
        self.task: asyncio.Task[None] | None = None

    def recover(self) -> int:
        """Requeue jobs a dead server left unfinished, discarding their hidden chunks."""
        service = self.service
        with service.sessions.begin() as session:
            jobs = session.scalars(
                select(IngestionJobRow).where(IngestionJobRow.state.in_(UNFINISHED))
            ).all()
            for job in jobs:
                service.store.discard_hidden(job.kb_id, job.document_id)
                job.state, job.chunks_done, job.updated_at = "queued", 0, utc_now()
                log.warning("resuming ingestion job %d after a restart", job.id)
        return len(jobs)

    def start(self) -> None:
        self.recover()
        self.task = asyncio.create_task(self._run(), name="knowledge-ingestion")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        ready = self.service.work_ready
        while True:
            ready.clear()
            job_id = self._next_job()
            if job_id is None:
                await ready.wait()
                continue
            try:
                await self.run_job(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one job stop the worker
                log.exception("ingestion job %d crashed the worker loop", job_id)

    def _next_job(self) -> int | None:
        with self.service.sessions() as session:
            job_id: int | None = session.scalar(
                select(IngestionJobRow.id)
                .where(IngestionJobRow.state == "queued")
                .order_by(IngestionJobRow.id)
                .limit(1)
            )
            return job_id

    # -- one job -------------------------------------------------------------

    def _transition(self, job_id: int, state: str, **fields: Any) -> None:
        """Move a job (and its document's status) to ``state``; JobGone if it was deleted."""
        service = self.service
        with service.sessions.begin() as session:
            job = session.get(IngestionJobRow, job_id)
            if job is None:
                raise JobGone
            job.state, job.updated_at = state, utc_now()
            for key in ("reason", "attempts", "content_hash", "chunks_done", "blob_path"):
                if key in fields:
                    setattr(job, key, fields[key])
            document = session.get(KnowledgeDocumentRow, job.document_id)
            if document is None:
                raise JobGone
            document.status, document.updated_at = state, utc_now()
            document.reason = fields.get("reason")

    async def run_job(self, job_id: int) -> None:
        """Run one job to ``indexed`` or ``failed``. Never raises for a bad document."""
        service = self.service
        with service.sessions() as session:
            job = session.get(IngestionJobRow, job_id)
            if job is None or job.state != "queued":
                return
            attempts = job.attempts + 1
            kb_id, document_id = job.kb_id, job.document_id
            source, url, blob, media_type = job.source, job.url, job.blob_path, job.media_type
            content_hash = job.content_hash
            document = session.get(KnowledgeDocumentRow, document_id)
            if document is None:
                return
            name, indexed_hash = document.name, document.content_hash
            indexed = document.indexed_at is not None
        path = service.blob_dir / blob if blob else None
        try:
            if attempts > MAX_ATTEMPTS:
                raise ExtractionError(
                    f"gave up after {MAX_ATTEMPTS} attempts: the server stopped while "
                    "ingesting this document each time"
                )
            self._transition(job_id, "extracting", attempts=attempts)
            if source == "url":
                assert url is not None
                fetched = await fetch_url(
                    url, service.blob_dir, self.url_fetch, self.egress, caller=self._caller(kb_id)
                )
                path, media_type = fetched.path, fetched.media_type
                content_hash = await asyncio.to_thread(sha256_file, path)
                self._transition(
                    job_id, "extracting", content_hash=content_hash, blob_path=path.name
                )
                if indexed and content_hash == indexed_hash:
                    self._finish_unchanged(job_id)
                    return
            assert path is not None and content_hash is not None
            max_bytes = service.config.max_document_bytes
            extracted = await asyncio.to_thread(
                extract, path, name=name, media_type=media_type, max_bytes=max_bytes
            )
            self._transition(job_id, "embedding", chunks_done=0)
            count = await self._embed_and_store(job_id, kb_id, document_id, extracted)
            if count == 0:
                raise ExtractionError("no text to index")
            self._finish(job_id, kb_id, document_id, extracted, content_hash, count)
        except JobGone:
            service.store.discard_hidden(kb_id, document_id)
            log.info("ingestion job %d stopped: its document was deleted", job_id)
        except (ExtractionError, FetchError) as exc:
            self._fail(job_id, kb_id, document_id, str(exc))
        except Exception as exc:
            log.exception("ingestion job %d failed", job_id)
            self._fail(job_id, kb_id, document_id, f"internal error ({type(exc).__name__})")
        finally:
            if path is not None:
                path.unlink(missing_ok=True)

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
        self, job_id: int, kb_id: int, document_id: int, extracted: ExtractedDocument
    ) -> int:
        service = self.service
        config = service.config
        await asyncio.to_thread(service.store.discard_hidden, kb_id, document_id)
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
            return await self._embed_batches(job_id, kb_id, document_id, extracted, chunks)
        finally:
            service.embedding.pop(document_id, None)

    async def _embed_batches(
        self,
        job_id: int,
        kb_id: int,
        document_id: int,
        extracted: ExtractedDocument,
        chunks: list[Chunk],
    ) -> int:
        service = self.service
        done = 0
        for batch in _batches(iter(chunks), service.config.embed_batch):
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
            await asyncio.to_thread(service.store.add, rows, vectors)
            done += len(rows)
            self._progress(job_id, done)
        return done

    def _progress(self, job_id: int, done: int) -> None:
        with self.service.sessions.begin() as session:
            result = session.execute(
                update(IngestionJobRow)
                .where(IngestionJobRow.id == job_id)
                .values(chunks_done=done, updated_at=utc_now())
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise JobGone

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
            job = session.get(IngestionJobRow, job_id)
            document = session.get(KnowledgeDocumentRow, document_id)
            if job is None or document is None:
                raise JobGone
            # The swap: the new chunks replace the old version's in one store transaction.
            service.store.publish(kb_id, document_id)
            now = utc_now()
            job.state, job.reason, job.updated_at, job.blob_path = "indexed", None, now, None
            job.chunks_done = count
            document.status, document.reason = "indexed", None
            document.content_hash = content_hash
            document.format, document.title = extracted.format, extracted.title
            document.pages = len(extracted.pages) or None
            document.chunks = count
            document.updated_at = document.indexed_at = now
        log.info("indexed document %d (%d chunks)", document_id, count)

    def _finish_unchanged(self, job_id: int) -> None:
        with self.service.sessions.begin() as session:
            job = session.get(IngestionJobRow, job_id)
            if job is None:
                return
            job.state, job.reason, job.updated_at = "indexed", "unchanged", utc_now()
            document = session.get(KnowledgeDocumentRow, job.document_id)
            if document is not None:
                document.status, document.reason = "indexed", None
                document.updated_at = utc_now()

    def _fail(self, job_id: int, kb_id: int, document_id: int, reason: str) -> None:
        service = self.service
        service.store.discard_hidden(kb_id, document_id)
        with service.sessions.begin() as session:
            job = session.get(IngestionJobRow, job_id)
            if job is None:
                return
            job.state, job.reason, job.updated_at, job.blob_path = "failed", reason, utc_now(), None
            document = session.get(KnowledgeDocumentRow, document_id)
            if document is not None:
                if document.indexed_at is not None:
                    reason += " (the previously indexed version is still served)"
                document.status, document.reason, document.updated_at = "failed", reason, utc_now()
        log.info("ingestion job %d failed: %s", job_id, reason)
