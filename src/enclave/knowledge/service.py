"""Knowledge bases and their documents, per workspace, and searching them.

A knowledge base belongs to one workspace; every lookup is by (workspace,
name), so another workspace's key gets 404 and never learns what exists.
Each base has a class, and a document may raise its own above it. The
service embeds with one local embedding model that must be cleared for the
document's class, because embedding sends the text to that provider.

Adding a document stores its bytes and queues an ingestion job
(:mod:`enclave.knowledge.jobs`); re-adding an unchanged file does nothing.
Searching returns :class:`Passage` objects: a retrieved chunk with its
document, class and scores.

A document may be restricted to groups (``knowledge_document_groups``): then
only a :class:`Reader` in one of them may read it. Every read takes the
reader: a search passes the restricted documents it may not read to the store
as excluded, so they are filtered inside the query, before ranking, and never
take a top-k place; a document or its chunks fetched by id answer 404, the
same as a missing one. Builders and admins (``Reader.manages``) see a
restricted document's name and groups in listings, to manage it, but not its
text. A reader without groups (a key with no user) reads only unrestricted
documents, and so does any caller that passes no reader.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.principals import Principal
from enclave.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PolicyDenied,
    ServiceUnavailable,
)
from enclave.gateway.classification import Levels
from enclave.gateway.routing import RoutingTable, Target
from enclave.inference import InferenceService
from enclave.knowledge.retrieval import Mode, Retrieved, retrieve
from enclave.knowledge.store.base import ChunkRow, Filters, VectorStore
from enclave.providers.base import EmbedPriority
from enclave.providers.openai_upstream import OpenAIUpstream
from enclave.settings import KnowledgeConfig
from enclave.storage.models import (
    IngestionJobRow,
    KnowledgeBaseRow,
    KnowledgeBlobRow,
    KnowledgeDocumentGroupRow,
    KnowledgeDocumentRow,
)

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "extracting", "embedding")
# Each method's top this-many go into the fusion. Deeper BM25 ranks are mostly
# noise on paraphrased questions and dilute it: on the labelled corpus, 10 gives
# hybrid recall@5 0.87 (dense alone 0.85), 50 gives 0.78 (bench/knowledge.py).
FUSION_CANDIDATES = 10


class KnowledgeBaseNotFound(NotFound):
    default_code = "knowledge_base_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"There is no knowledge base '{name}' in this workspace. "
            "GET /api/knowledge lists them.",
            param="knowledge",
        )


class DocumentNotFound(NotFound):
    default_code = "document_not_found"


MAX_GROUPS = 50  # groups one document may be restricted to


@dataclass(frozen=True, slots=True)
class Reader:
    """Who reads: the groups whose restricted documents they may read.

    ``manages`` (builders, admins) may also see restricted documents in
    listings, replace and delete them, never read their text without a group.
    A restricted document's groups are changed only by a builder in one of
    them or by an admin (``administers``): a builder outside them could
    otherwise lift the restriction and read it.
    ``Reader()`` reads only unrestricted documents.
    """

    groups: frozenset[str] = frozenset()
    manages: bool = False
    administers: bool = False

    @classmethod
    def of(cls, principal: Principal) -> Reader:
        """The principal as a reader of content (searches, chunks, answers)."""
        return cls(groups=principal.groups)

    @classmethod
    def managing(cls, principal: Principal) -> Reader:
        """The principal in the document listings of ``/api/knowledge``: builders and
        admins manage the workspace's knowledge."""
        return cls(
            groups=principal.groups,
            manages=principal.role in ("builder", "admin"),
            administers=principal.role == "admin",
        )

    def may_read(self, restricted_to: Collection[str]) -> bool:
        return not restricted_to or not self.groups.isdisjoint(restricted_to)

    def may_see(self, restricted_to: Collection[str]) -> bool:
        return self.manages or self.may_read(restricted_to)

    def may_regroup(self, restricted_to: Collection[str]) -> bool:
        """Unrestricted documents: whoever may add documents (the routes decide)."""
        if not restricted_to:
            return True
        return self.administers or (self.manages and self.may_read(restricted_to))


def document_groups(groups: Sequence[str] | None) -> tuple[str, ...] | None:
    """Group names as given (trimmed, each once, sorted); None stays None (unchanged)."""
    if groups is None:
        return None
    cleaned = sorted({str(group).strip() for group in groups} - {""})
    if len(cleaned) > MAX_GROUPS:
        raise InvalidRequest(
            f"A document may be restricted to at most {MAX_GROUPS} groups.", param="groups"
        )
    for group in cleaned:
        if len(group) > 255 or any(ord(ch) < 32 or ch == "," for ch in group):
            raise InvalidRequest(
                "A group name has at most 255 characters, no commas or control characters.",
                param="groups",
            )
    return tuple(cleaned)


def utc_now() -> datetime:
    """Now, timezone-aware UTC (the columns refuse naive times)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class BaseInfo:
    """A knowledge base as the API shows it."""

    id: int
    name: str
    description: str
    classification: str
    embedding_model: str
    created_at: datetime
    documents: int = 0
    chunks: int = 0
    chunks_ingesting: int = 0  # embedded so far by running jobs, not yet in ``chunks``

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "classification": self.classification,
            "embedding_model": self.embedding_model,
            "created_at": self.created_at.isoformat(),
            "documents": self.documents,
            "chunks": self.chunks,
            "chunks_ingesting": self.chunks_ingesting,
        }


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A document with the state of its latest ingestion job."""

    id: int
    knowledge_base: str
    name: str
    status: str
    reason: str | None
    classification: str
    format: str | None
    title: str | None
    size_bytes: int
    pages: int | None
    chunks: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    indexed_at: datetime | None
    progress: int = 0  # chunks embedded so far by a running job
    progress_total: int | None = None  # chunks the running job embeds in all
    chunks_per_s: float | None = None  # its rate so far
    eta_s: float | None = None  # seconds it still needs at that rate
    groups: tuple[str, ...] = ()  # restricted to these groups; () for everyone

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "knowledge_base": self.knowledge_base,
            "name": self.name,
            "groups": list(self.groups),
            "status": self.status,
            "reason": self.reason,
            "classification": self.classification,
            "format": self.format,
            "title": self.title,
            "size_bytes": self.size_bytes,
            "pages": self.pages,
            "chunks": self.chunks,
            "progress": self.progress,
            "progress_total": self.progress_total,
            "chunks_per_s": self.chunks_per_s,
            "eta_s": self.eta_s,
            "metadata": self.metadata,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "indexed_at": self.indexed_at.isoformat() if self.indexed_at else None,
        }


@dataclass(frozen=True, slots=True)
class AddResult:
    """What adding one document did: queued a job, or nothing (``unchanged``)."""

    document: DocumentInfo
    outcome: Literal["queued", "unchanged"]
    job_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "job_id": self.job_id, "document": self.document.as_dict()}


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk with the document it came from and that document's class."""

    retrieved: Retrieved
    knowledge_base: str
    document_id: int
    document_name: str
    document_title: str | None
    classification: str

    @property
    def chunk(self) -> ChunkRow:
        return self.retrieved.chunk

    @property
    def source(self) -> str:
        """``base/document``, as reasons and audit entries name it."""
        return f"{self.knowledge_base}/{self.document_name}"

    def quoted(self, number: int, quote: str, start: int, end: int) -> dict[str, Any]:
        """The passage as a numbered source of an answer, quoting ``quote`` at
        document offsets ``start:end`` (citations and disagreement claims)."""
        return {
            "number": number,
            "chunk_id": self.chunk.id,
            "knowledge_base": self.knowledge_base,
            "document": {"id": self.document_id, "name": self.document_name},
            "title": self.document_title,
            "location": {**self.chunk.location(), "quote_start": start, "quote_end": end},
            "quote": quote,
        }

    def as_dict(self) -> dict[str, Any]:
        found = self.retrieved
        return {
            "chunk_id": self.chunk.id,
            "knowledge_base": self.knowledge_base,
            "document": {"id": self.document_id, "name": self.document_name},
            "title": self.document_title,
            "classification": self.classification,
            "text": self.chunk.text,
            "location": self.chunk.location(),
            "score": round(found.score, 6),
            "similarity": round(found.similarity, 6),
            "ranks": {"bm25": found.bm25_rank, "dense": found.dense_rank},
            "scores": {
                "bm25": None if found.bm25_score is None else round(found.bm25_score, 6),
                "dense": None if found.dense_score is None else round(found.dense_score, 6),
            },
        }


@dataclass(slots=True)
class Embedder:
    """Embeds text with the configured local embedding model, in unit-length float32."""

    routing: RoutingTable
    inference: InferenceService
    model: str
    target: Target | None = field(default=None, init=False)

    def resolve(self) -> Target:
        if self.target is None:
            try:
                targets = self.routing.candidates(self.model, "embeddings")
            except (NotFound, InvalidRequest):
                raise ServiceUnavailable(
                    f"Knowledge needs the embedding model '{self.model}' "
                    "(knowledge.embedding_model), and no provider serves it.",
                    code="no_embedding_model",
                ) from None
            local = [
                t
                for t in targets
                if not isinstance(self.routing.providers[t.provider], OpenAIUpstream)
            ]
            if not local:
                raise ServiceUnavailable(
                    f"The embedding model '{self.model}' must run on an embedded provider "
                    "(llamacpp or sentence-transformers), so documents stay on this machine.",
                    code="no_embedding_model",
                )
            self.target = local[0]
        return self.target

    @property
    def model_id(self) -> str:
        return self.resolve().qualified

    async def embed(
        self, texts: Sequence[str], *, priority: EmbedPriority = "interactive"
    ) -> np.ndarray:
        """``priority``: ``bulk`` for ingestion, so it never delays a query."""
        target = self.resolve()
        provider = self.routing.providers[target.provider]
        card = self.routing.cards[(target.provider, target.model)]
        result = await self.inference.embed(list(texts), provider, card, priority=priority)
        vectors = np.asarray(result.vectors, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    @property
    def dimension(self) -> int:
        target = self.resolve()
        card = self.routing.cards[(target.provider, target.model)]
        dims = card.capabilities.embedding_dimensions
        assert dims is not None
        return int(dims)


class KnowledgeService:
    """Knowledge bases, documents and search, always scoped to a workspace."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        store: VectorStore,
        embedder: Embedder,
        levels: Levels,
        config: KnowledgeConfig,
        blob_dir: Path,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.embedder = embedder
        self.levels = levels
        self.config = config
        self.blob_dir = blob_dir
        blob_dir.mkdir(parents=True, exist_ok=True)
        # Set when a job is queued here; the worker waits on it (and polls for other replicas').
        self.work_ready = asyncio.Event()
        # Documents being embedded now: document id -> (chunks in all, when embedding began).
        self.embedding: dict[int, tuple[int, float]] = {}

    # -- bases -------------------------------------------------------------

    def _base_row(self, session: Session, workspace_id: int, name: str) -> KnowledgeBaseRow:
        row = session.scalar(
            select(KnowledgeBaseRow).where(
                KnowledgeBaseRow.workspace_id == workspace_id, KnowledgeBaseRow.name == name
            )
        )
        if row is None:
            raise KnowledgeBaseNotFound(name)
        return row

    def _check_embedding_clearance(self, level: str, what: str) -> None:
        target = self.embedder.resolve()
        if not self.levels.allows(target.clearance, level):
            raise PolicyDenied(
                f"{what} is '{level}', but the embedding model {target.qualified} is cleared "
                f"only for '{target.clearance}' data; embedding would send the text there."
            )

    def create_base(
        self,
        workspace_id: int,
        name: str,
        *,
        description: str = "",
        classification: str | None = None,
        workspace_floor: str | None = None,
    ) -> BaseInfo:
        """Create a base; its class defaults to the workspace floor and cannot be below it."""
        floor = workspace_floor or self.levels.lowest
        level = (
            self.levels.parse(classification, where="", param="classification")
            if classification
            else floor
        )
        if self.levels.rank[level] < self.levels.rank[floor]:
            raise InvalidRequest(
                f"A knowledge base in this workspace is at least '{floor}' (the workspace floor).",
                param="classification",
            )
        self._check_embedding_clearance(level, f"Knowledge base '{name}'")
        with self.sessions.begin() as session:
            exists = session.scalar(
                select(KnowledgeBaseRow.id).where(
                    KnowledgeBaseRow.workspace_id == workspace_id, KnowledgeBaseRow.name == name
                )
            )
            if exists is not None:
                raise Conflict(f"A knowledge base named '{name}' already exists.", param="name")
            row = KnowledgeBaseRow(
                workspace_id=workspace_id,
                name=name,
                description=description,
                classification=level,
                embedding_model=self.embedder.model_id,
                created_at=utc_now(),
            )
            session.add(row)
            session.flush()
            return self._base_info(row)

    def _base_info(
        self, row: KnowledgeBaseRow, documents: int = 0, chunks: int = 0, ingesting: int = 0
    ) -> BaseInfo:
        return BaseInfo(
            id=row.id,
            name=row.name,
            description=row.description,
            classification=row.classification,
            embedding_model=row.embedding_model,
            created_at=row.created_at,
            documents=documents,
            chunks=chunks,
            chunks_ingesting=ingesting,
        )

    def list_bases(
        self, workspace_id: int, name: str | None = None, reader: Reader = Reader()
    ) -> list[BaseInfo]:
        """The workspace's bases (or the one named) with document and chunk counts.

        The counts are of the documents the reader may see: a restricted
        document's existence is not told to those outside its groups.
        """
        query = select(KnowledgeBaseRow).where(KnowledgeBaseRow.workspace_id == workspace_id)
        if name is not None:
            query = query.where(KnowledgeBaseRow.name == name)
        with self.sessions() as session:
            rows = session.scalars(query.order_by(KnowledgeBaseRow.name)).all()
            kb_ids = [row.id for row in rows]
            hidden = frozenset() if reader.manages else self._unreadable(session, kb_ids, reader)
            totals = {
                kb_id: (documents, int(chunks or 0))
                for kb_id, documents, chunks in session.execute(
                    select(
                        KnowledgeDocumentRow.kb_id,
                        func.count(),
                        func.sum(KnowledgeDocumentRow.chunks),
                    )
                    .where(
                        KnowledgeDocumentRow.kb_id.in_(kb_ids),
                        KnowledgeDocumentRow.id.not_in(hidden),
                    )
                    .group_by(KnowledgeDocumentRow.kb_id)
                ).all()
            }
            ingesting = {
                kb_id: int(done or 0)
                for kb_id, done in session.execute(
                    select(IngestionJobRow.kb_id, func.sum(IngestionJobRow.chunks_done))
                    .where(
                        IngestionJobRow.kb_id.in_(kb_ids),
                        IngestionJobRow.state.in_(ACTIVE_STATES),
                        IngestionJobRow.document_id.not_in(hidden),
                    )
                    .group_by(IngestionJobRow.kb_id)
                ).all()
            }
        return [
            self._base_info(row, *totals.get(row.id, (0, 0)), ingesting.get(row.id, 0))
            for row in rows
        ]

    def get_base(self, workspace_id: int, name: str, reader: Reader = Reader()) -> BaseInfo:
        found = self.list_bases(workspace_id, name, reader)
        if not found:
            raise KnowledgeBaseNotFound(name)
        return found[0]

    def delete_base(self, workspace_id: int, name: str) -> None:
        """Delete a base with its documents, jobs, chunks and waiting uploads."""
        with self.sessions.begin() as session:
            row = self._base_row(session, workspace_id, name)
            kb_id = row.id
            jobs = session.scalars(
                select(IngestionJobRow).where(IngestionJobRow.kb_id == kb_id)
            ).all()
            for job in jobs:
                self._drop_blob(session, job)
                session.delete(job)
            session.flush()
            for document in session.scalars(
                select(KnowledgeDocumentRow).where(KnowledgeDocumentRow.kb_id == kb_id)
            ).all():
                session.delete(document)
            session.flush()
            session.delete(row)
        self.store.delete_base(kb_id)

    # -- documents -----------------------------------------------------------

    def _document_info(
        self,
        row: KnowledgeDocumentRow,
        base: str,
        progress: int = 0,
        groups: Collection[str] = (),
    ) -> DocumentInfo:
        total, rate, eta = None, None, None
        running = self.embedding.get(row.id)
        if running is not None and row.status == "embedding":
            total, began = running
            elapsed = time.monotonic() - began
            if progress and elapsed > 0:
                rate = round(progress / elapsed, 1)
                # Rounded up to a tenth: while chunks remain the ETA never reads 0.
                remaining = max(total - progress, 0) / (progress / elapsed)
                eta = math.ceil(remaining * 10) / 10
        return DocumentInfo(
            id=row.id,
            knowledge_base=base,
            name=row.name,
            status=row.status,
            reason=row.reason,
            classification=row.classification,
            format=row.format,
            title=row.title,
            size_bytes=row.size_bytes,
            pages=row.pages,
            chunks=row.chunks,
            metadata=json.loads(row.metadata_json or "{}"),
            created_at=row.created_at,
            updated_at=row.updated_at,
            indexed_at=row.indexed_at,
            progress=progress,
            progress_total=total,
            chunks_per_s=rate,
            eta_s=eta,
            groups=tuple(sorted(groups)),
        )

    def _document_class(self, base: KnowledgeBaseRow, requested: str | None) -> str:
        if not requested:
            return base.classification
        level = self.levels.parse(requested, where="", param="classification")
        if self.levels.rank[level] < self.levels.rank[base.classification]:
            raise InvalidRequest(
                f"A document can raise its class above its base's ('{base.classification}'), "
                f"never lower it; '{level}' is lower.",
                param="classification",
            )
        return level

    def add_upload(
        self,
        workspace_id: int,
        kb_name: str,
        *,
        name: str,
        upload: Path,
        content_hash: str,
        size_bytes: int,
        media_type: str | None = None,
        classification: str | None = None,
        metadata: dict[str, Any] | None = None,
        groups: Sequence[str] | None = None,
        reader: Reader = Reader(),
    ) -> AddResult:
        """Queue an uploaded file (already on disk, hashed) for ingestion.

        Its bytes go into the database with the job (``knowledge_blobs``), where
        they wait for whichever replica runs it; the file on disk is removed.
        An unchanged file (same name and content as the indexed or queued
        version) is dropped and nothing happens, except that ``groups`` (if
        given) replace the document's groups.
        """
        name = normalise_document_name(name)
        try:
            with self.sessions.begin() as session:
                base, level, document = self._target(
                    session, workspace_id, kb_name, name, classification, groups, reader
                )
                if document is not None and self._unchanged(session, document, content_hash):
                    restricted = self._set_groups(session, document, groups)
                    info = self._document_info(document, base.name, groups=restricted)
                    return AddResult(info, "unchanged")
                document = self._queue_document(
                    session, base, document, name, level, metadata, size_bytes
                )
                restricted = self._set_groups(session, document, groups)
                job = IngestionJobRow(
                    kb_id=base.id,
                    document_id=document.id,
                    state="queued",
                    source="upload",
                    media_type=media_type,
                    content_hash=content_hash,
                    created_at=utc_now(),
                    updated_at=utc_now(),
                )
                session.add(job)
                session.flush()
                # In the database, with the job, so whichever replica claims the job can read it.
                session.add(KnowledgeBlobRow(job_id=job.id, content=upload.read_bytes()))
                info = self._document_info(document, base.name, groups=restricted)
                job_id = job.id
        finally:
            upload.unlink(missing_ok=True)
        self.work_ready.set()
        return AddResult(info, "queued", job_id)

    def add_url(
        self,
        workspace_id: int,
        kb_name: str,
        *,
        url: str,
        classification: str | None = None,
        metadata: dict[str, Any] | None = None,
        groups: Sequence[str] | None = None,
        reader: Reader = Reader(),
    ) -> AddResult:
        """Queue a URL; the job fetches it (behind the SSRF guard) when it runs."""
        name = url.strip()
        with self.sessions.begin() as session:
            base, level, document = self._target(
                session, workspace_id, kb_name, name, classification, groups, reader
            )
            document = self._queue_document(session, base, document, name, level, metadata, 0)
            restricted = self._set_groups(session, document, groups)
            job = IngestionJobRow(
                kb_id=base.id,
                document_id=document.id,
                state="queued",
                source="url",
                url=name,
                created_at=utc_now(),
                updated_at=utc_now(),
            )
            session.add(job)
            session.flush()
            info = self._document_info(document, base.name, groups=restricted)
            result = AddResult(info, "queued", job.id)
        self.work_ready.set()
        return result

    def _target(
        self,
        session: Session,
        workspace_id: int,
        kb_name: str,
        name: str,
        classification: str | None,
        groups: Sequence[str] | None = None,
        reader: Reader = Reader(),
    ) -> tuple[KnowledgeBaseRow, str, KnowledgeDocumentRow | None]:
        """The base a document goes to, its class (checked), and its existing row if any.

        Only a reader who manages the base may set ``groups``, only one who may
        see a restricted document may replace it, and only one who may regroup it
        (``Reader.may_regroup``) may give it other groups.
        """
        if groups is not None and not reader.manages:
            raise PermissionDenied("Only a builder or an admin may restrict a document to groups.")
        base = self._base_row(session, workspace_id, kb_name)
        level = self._document_class(base, classification)
        self._check_embedding_clearance(level, f"Document '{name}'")
        document = session.scalar(
            select(KnowledgeDocumentRow).where(
                KnowledgeDocumentRow.kb_id == base.id, KnowledgeDocumentRow.name == name
            )
        )
        if document is not None:
            current = self._groups(session, [document.id])
            if not reader.may_see(current):
                raise PermissionDenied(
                    f"A document named '{name}' is restricted to groups you are not in; "
                    "only they, a builder or an admin may replace it.",
                )
            self._check_regroup(reader, current, groups, name)
        return base, level, document

    @staticmethod
    def _check_regroup(
        reader: Reader, current: frozenset[str], groups: Sequence[str] | None, name: str
    ) -> None:
        """Refuse new groups for a restricted document from a reader outside its groups."""
        wanted = document_groups(groups)
        if wanted is None or frozenset(wanted) == current or reader.may_regroup(current):
            return
        raise PermissionDenied(
            f"Document '{name}' is restricted to groups you are not in; only a builder in "
            "one of them or an admin may change its groups.",
        )

    @staticmethod
    def _groups(session: Session, document_ids: Collection[int]) -> frozenset[str]:
        """The groups one document (or any of several) is restricted to."""
        return frozenset(
            session.scalars(
                select(KnowledgeDocumentGroupRow.group_name).where(
                    KnowledgeDocumentGroupRow.document_id.in_(list(document_ids))
                )
            ).all()
        )

    @staticmethod
    def _groups_by_document(
        session: Session, document_ids: Collection[int]
    ) -> dict[int, frozenset[str]]:
        found: dict[int, set[str]] = {}
        for document_id, group in session.execute(
            select(
                KnowledgeDocumentGroupRow.document_id, KnowledgeDocumentGroupRow.group_name
            ).where(KnowledgeDocumentGroupRow.document_id.in_(list(document_ids)))
        ).all():
            found.setdefault(document_id, set()).add(group)
        return {document_id: frozenset(groups) for document_id, groups in found.items()}

    def _set_groups(
        self, session: Session, document: KnowledgeDocumentRow, groups: Sequence[str] | None
    ) -> frozenset[str]:
        """Replace a document's groups (None: keep them); returns them as they now are.

        Runs in the transaction that queues the document, so its chunks are never
        searchable before its restriction is.
        """
        cleaned = document_groups(groups)
        if cleaned is None:
            return self._groups(session, [document.id])
        for row in session.scalars(
            select(KnowledgeDocumentGroupRow).where(
                KnowledgeDocumentGroupRow.document_id == document.id
            )
        ).all():
            session.delete(row)
        session.flush()
        session.add_all(
            KnowledgeDocumentGroupRow(document_id=document.id, group_name=group)
            for group in cleaned
        )
        session.flush()
        return frozenset(cleaned)

    @staticmethod
    def _unchanged(session: Session, document: KnowledgeDocumentRow, content_hash: str) -> bool:
        if document.status == "indexed" and document.content_hash == content_hash:
            return True
        pending = session.scalar(
            select(IngestionJobRow.id).where(
                IngestionJobRow.document_id == document.id,
                IngestionJobRow.state.in_(ACTIVE_STATES),
                IngestionJobRow.content_hash == content_hash,
            )
        )
        return pending is not None

    def _queue_document(
        self,
        session: Session,
        base: KnowledgeBaseRow,
        document: KnowledgeDocumentRow | None,
        name: str,
        level: str,
        metadata: dict[str, Any] | None,
        size_bytes: int,
    ) -> KnowledgeDocumentRow:
        now = utc_now()
        if document is None:
            document = KnowledgeDocumentRow(
                kb_id=base.id,
                name=name,
                classification=level,
                metadata_json=json.dumps(metadata or {}),
                status="queued",
                size_bytes=size_bytes,
                created_at=now,
                updated_at=now,
            )
            session.add(document)
        else:
            # Jobs still waiting for an older version are superseded by this one.
            for stale in session.scalars(
                select(IngestionJobRow).where(
                    IngestionJobRow.document_id == document.id,
                    IngestionJobRow.state == "queued",
                )
            ).all():
                self._drop_blob(session, stale)
                stale.state, stale.reason, stale.blob_path = "failed", "superseded", None
            document.classification = level
            if metadata is not None:
                document.metadata_json = json.dumps(metadata)
            document.status, document.reason, document.updated_at = "queued", None, now
            if size_bytes:
                document.size_bytes = size_bytes
        session.flush()
        return document

    def list_documents(
        self, workspace_id: int, kb_name: str, reader: Reader = Reader()
    ) -> list[DocumentInfo]:
        """The base's documents the reader may see (restricted ones only in their groups,
        or to a reader who manages the base)."""
        with self.sessions() as session:
            base = self._base_row(session, workspace_id, kb_name)
            rows = session.scalars(
                select(KnowledgeDocumentRow)
                .where(KnowledgeDocumentRow.kb_id == base.id)
                .order_by(KnowledgeDocumentRow.name)
            ).all()
            groups = self._groups_by_document(session, [row.id for row in rows])
            rows = [row for row in rows if reader.may_see(groups.get(row.id, ()))]
            progress = self._progress(session, [row.id for row in rows])
            return [
                self._document_info(row, base.name, progress.get(row.id, 0), groups.get(row.id, ()))
                for row in rows
            ]

    @staticmethod
    def _progress(session: Session, document_ids: list[int]) -> dict[int, int]:
        rows = session.execute(
            select(IngestionJobRow.document_id, IngestionJobRow.chunks_done).where(
                IngestionJobRow.document_id.in_(document_ids),
                IngestionJobRow.state.in_(ACTIVE_STATES),
            )
        ).all()
        return {document_id: done for document_id, done in rows}

    def _document_row(
        self,
        session: Session,
        workspace_id: int,
        kb_name: str,
        document_id: int,
        reader: Reader,
        *,
        content: bool = False,
    ) -> tuple[KnowledgeBaseRow, KnowledgeDocumentRow, frozenset[str]]:
        """The document with its groups; 404 for one the reader may not see (``content``:
        may not read), the same answer as for one that does not exist."""
        base = self._base_row(session, workspace_id, kb_name)
        row = session.get(KnowledgeDocumentRow, document_id)
        groups = self._groups(session, [document_id]) if row is not None else frozenset()
        allowed = reader.may_read(groups) if content else reader.may_see(groups)
        if row is None or row.kb_id != base.id or not allowed:
            raise DocumentNotFound(
                f"There is no document {document_id} in knowledge base '{kb_name}'."
            )
        return base, row, groups

    def get_document(
        self, workspace_id: int, kb_name: str, document_id: int, reader: Reader = Reader()
    ) -> DocumentInfo:
        with self.sessions() as session:
            base, row, groups = self._document_row(
                session, workspace_id, kb_name, document_id, reader
            )
            progress = self._progress(session, [row.id])
            return self._document_info(row, base.name, progress.get(row.id, 0), groups)

    def document_chunks(
        self,
        workspace_id: int,
        kb_name: str,
        document_id: int,
        *,
        offset: int,
        limit: int,
        reader: Reader = Reader(),
    ) -> list[ChunkRow]:
        """A document's chunks in order, if the reader may read it (else 404)."""
        with self.sessions() as session:
            base, row, _ = self._document_row(
                session, workspace_id, kb_name, document_id, reader, content=True
            )
        return self.store.chunks(base.id, row.id, offset=offset, limit=limit)

    def readable_chunk(self, workspace_id: int, chunk_id: int, reader: Reader) -> ChunkRow | None:
        """The chunk, if it is in this workspace and the reader may read its document; None
        for one that does not exist, is another workspace's or is restricted from them."""
        chunk = self.store.get([chunk_id]).get(chunk_id)
        if chunk is None:
            return None
        with self.sessions() as session:
            base = session.get(KnowledgeBaseRow, chunk.kb_id)
            if base is None or base.workspace_id != workspace_id:
                return None
            if not reader.may_read(self._groups(session, [chunk.document_id])):
                return None
        return chunk

    def set_groups(
        self,
        workspace_id: int,
        kb_name: str,
        document_id: int,
        groups: Sequence[str],
        reader: Reader,
    ) -> DocumentInfo:
        """Restrict a document to ``groups`` (empty: to no one in particular, everyone).

        Takes effect on the next search: the store reads no groups, the search does.
        """
        if not reader.manages:
            raise PermissionDenied("Only a builder or an admin may restrict a document to groups.")
        with self.sessions.begin() as session:
            base, row, current = self._document_row(
                session, workspace_id, kb_name, document_id, reader
            )
            self._check_regroup(reader, current, groups, row.name)
            restricted = self._set_groups(session, row, groups)
            progress = self._progress(session, [row.id])
            return self._document_info(row, base.name, progress.get(row.id, 0), restricted)

    def delete_document(
        self, workspace_id: int, kb_name: str, document_id: int, reader: Reader = Reader()
    ) -> None:
        """Delete a document, its chunks and any job for it (a running one stops at its
        next step and discards what it made)."""
        with self.sessions.begin() as session:
            base, row, _ = self._document_row(session, workspace_id, kb_name, document_id, reader)
            for job in session.scalars(
                select(IngestionJobRow).where(IngestionJobRow.document_id == row.id)
            ).all():
                self._drop_blob(session, job)
                session.delete(job)
            session.flush()
            session.delete(row)
            kb_id = base.id
        self.store.delete_document(kb_id, document_id)

    def _drop_blob(self, session: Session, job: IngestionJobRow) -> None:
        """Delete a job's waiting upload: its bytes in the database and any file of a
        job queued before uploads were kept there."""
        session.execute(delete(KnowledgeBlobRow).where(KnowledgeBlobRow.job_id == job.id))
        if job.blob_path:
            (self.blob_dir / job.blob_path).unlink(missing_ok=True)

    # -- search --------------------------------------------------------------

    def _bases(
        self, session: Session, workspace_id: int, names: Sequence[str]
    ) -> list[KnowledgeBaseRow]:
        if not names:
            raise InvalidRequest("Name at least one knowledge base.", param="knowledge")
        return [self._base_row(session, workspace_id, name) for name in dict.fromkeys(names)]

    async def search(
        self,
        workspace_id: int,
        kb_names: Sequence[str],
        query: str,
        *,
        top_k: int | None = None,
        threshold: float | None = None,
        mode: Mode = "hybrid",
        documents: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        reader: Reader = Reader(),
    ) -> list[Passage]:
        """Hybrid search over the named bases of a workspace; nothing below the threshold.

        ``documents`` (names) and ``metadata`` (exact key/value matches)
        restrict the search to some documents. Documents the ``reader`` may
        not read are excluded inside the store's queries, before ranking.
        """
        if not query.strip():
            raise InvalidRequest("The query is empty.", param="query")
        with self.sessions() as session:
            bases = self._bases(session, workspace_id, kb_names)
            kb_ids = [base.id for base in bases]
            names = {base.id: base.name for base in bases}
            filters = self._filters(session, kb_ids, documents, metadata)
            unreadable = self._unreadable(session, kb_ids, reader)
        if unreadable:
            chosen = filters.document_ids if filters else None
            filters = Filters(document_ids=chosen, excluded_document_ids=unreadable)
        vector = (await self.embedder.embed([query]))[0]
        top_k = top_k or self.config.top_k
        found = await asyncio.to_thread(
            retrieve,
            self.store,
            kb_ids,
            query,
            vector,
            top_k=top_k,
            candidates=FUSION_CANDIDATES,
            threshold=self.config.threshold if threshold is None else threshold,
            mode=mode,
            filters=filters,
        )
        if not found:
            return []
        with self.sessions() as session:
            found_ids = {item.chunk.document_id for item in found}
            rows = {
                row.id: row
                for row in session.scalars(
                    select(KnowledgeDocumentRow).where(KnowledgeDocumentRow.id.in_(found_ids))
                ).all()
            }
            groups = self._groups_by_document(session, found_ids)
        passages = []
        for item in found:
            row = rows.get(item.chunk.document_id)
            if row is None:  # deleted between search and lookup
                continue
            if not reader.may_read(groups.get(row.id, ())):
                # Restricted between the search and now: never shown (fail closed).
                continue
            passages.append(
                Passage(
                    retrieved=item,
                    knowledge_base=names[item.chunk.kb_id],
                    document_id=row.id,
                    document_name=row.name,
                    document_title=row.title,
                    classification=row.classification,
                )
            )
        return passages

    @staticmethod
    def _unreadable(session: Session, kb_ids: list[int], reader: Reader) -> frozenset[int]:
        """Documents of these bases restricted to groups the reader is in none of.

        Restricted documents are few, so this (not the allowed set) is what the
        store's queries exclude.
        """
        restricted: dict[int, set[str]] = {}
        for document_id, group in session.execute(
            select(KnowledgeDocumentGroupRow.document_id, KnowledgeDocumentGroupRow.group_name)
            .join(
                KnowledgeDocumentRow,
                KnowledgeDocumentRow.id == KnowledgeDocumentGroupRow.document_id,
            )
            .where(KnowledgeDocumentRow.kb_id.in_(kb_ids))
        ).all():
            restricted.setdefault(document_id, set()).add(group)
        return frozenset(d for d, groups in restricted.items() if not reader.may_read(groups))

    @staticmethod
    def _filters(
        session: Session,
        kb_ids: list[int],
        documents: Sequence[str] | None,
        metadata: dict[str, Any] | None,
    ) -> Filters | None:
        if not documents and not metadata:
            return None
        rows = session.execute(
            select(
                KnowledgeDocumentRow.id,
                KnowledgeDocumentRow.name,
                KnowledgeDocumentRow.metadata_json,
            ).where(KnowledgeDocumentRow.kb_id.in_(kb_ids))
        ).all()
        wanted = set(documents or ())
        chosen = set()
        for document_id, name, metadata_json in rows:
            if wanted and name not in wanted:
                continue
            if metadata:
                values = json.loads(metadata_json or "{}")
                if any(values.get(key) != value for key, value in metadata.items()):
                    continue
            chosen.add(document_id)
        return Filters(document_ids=frozenset(chosen))


def normalise_document_name(name: str) -> str:
    """A safe, relative document name: forward slashes, no '..', no leading '/'."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    cleaned = "/".join(parts)[:1024]
    if not cleaned:
        raise InvalidRequest("A document needs a file name.", param="file")
    return cleaned


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
