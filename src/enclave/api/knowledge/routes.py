"""``/api/knowledge``: knowledge bases, their documents, and search.

Everything is scoped to the caller's workspace: a base of another workspace
is a 404, the same as one that does not exist. Uploads are multipart
(``file`` fields, one or more) and stream to disk under the document size
limit; a JSON body ``{"url": ...}`` adds a web page instead. Either may carry
``groups``: the document is then restricted to those groups (set by a builder
or an admin, changed later with ``PATCH``); a restricted document is a 404 to
anyone else. Ingestion runs in the background: the response is 202 with each
document's status, which ``GET .../documents/{id}`` follows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile

from enclave.api.deps import Services, require_builder, require_principal, services
from enclave.api.params import Offset, PageSize, ResourceId
from enclave.auth.principals import Principal
from enclave.errors import InvalidRequest, PayloadTooLarge
from enclave.gateway.disclosure import Disclosure
from enclave.input_limits import check_document, check_json_depth, check_text
from enclave.knowledge.retrieval import Mode
from enclave.knowledge.service import AddResult, KnowledgeService, Reader
from enclave.settings import NAME_PATTERN, InputLimitsConfig

router = APIRouter(prefix="/api/knowledge", dependencies=[Depends(require_principal)])

# Uploads get the document size limit instead of max_body_bytes (see create_app).
UPLOAD_PATH = re.compile(r"^/api/knowledge/[^/]+/documents/?$")
MAX_FILES_PER_REQUEST = 100


class BaseCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    description: str = Field("", max_length=2000)
    classification: str | None = None


class UrlAdd(BaseModel):
    url: str = Field(min_length=1, max_length=4096)
    classification: str | None = None
    metadata: dict[str, Any] | None = None
    groups: list[str] | None = Field(
        None, max_length=50, description="Only members of these groups may read it."
    )


class DocumentChange(BaseModel):
    groups: list[str] = Field(
        max_length=50, description="Only members of these groups may read it; [] for everyone."
    )


class QueryFilters(BaseModel):
    documents: list[str] | None = Field(None, description="Only these document names.")
    metadata: dict[str, Any] | None = Field(None, description="Only documents with these values.")


class Query(BaseModel):
    query: str = Field(min_length=1, max_length=8000)
    top_k: int = Field(5, ge=1, le=50)
    threshold: float | None = Field(None, ge=-1, le=1)
    mode: Mode = "hybrid"
    filters: QueryFilters | None = None


def knowledge(svc: Services = Depends(services)) -> KnowledgeService:
    return svc.require_knowledge()


@router.post("", status_code=201, summary="Create a knowledge base")
async def create_base(
    body: BaseCreate,
    principal: Principal = Depends(require_builder),
    svc: Services = Depends(services),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    limits = svc.settings.input_limits
    check_text(body.description, "description", limits.max_prompt_chars, "max_prompt_chars")
    floor = svc.gateway.policy(principal.workspace).classification
    info = await asyncio.to_thread(
        kb.create_base,
        principal.workspace_id,
        body.name,
        description=body.description,
        classification=body.classification,
        workspace_floor=floor,
    )
    return info.as_dict()


@router.get("", summary="List the workspace's knowledge bases")
async def list_bases(
    principal: Principal = Depends(require_principal),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    bases = await asyncio.to_thread(
        kb.list_bases, principal.workspace_id, reader=Reader.managing(principal)
    )
    return {"object": "list", "data": [base.as_dict() for base in bases]}


@router.get("/{name}", summary="Describe a knowledge base")
async def get_base(
    name: str,
    principal: Principal = Depends(require_principal),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    base = await asyncio.to_thread(
        kb.get_base, principal.workspace_id, name, reader=Reader.managing(principal)
    )
    return base.as_dict()


@router.delete("/{name}", status_code=204, summary="Delete a knowledge base and its documents")
async def delete_base(
    name: str,
    principal: Principal = Depends(require_builder),
    kb: KnowledgeService = Depends(knowledge),
) -> Response:
    await asyncio.to_thread(kb.delete_base, principal.workspace_id, name)
    return Response(status_code=204)


def _spool(kb: KnowledgeService, upload: UploadFile, limit: int) -> tuple[Path, str, int]:
    """Copy an upload to a private file, hashing it; 413 past the document limit."""
    target = kb.blob_dir / f"incoming-{uuid.uuid4().hex}"
    digest, size = hashlib.sha256(), 0
    try:
        with target.open("wb") as out:
            while block := upload.file.read(1 << 20):
                size += len(block)
                if size > limit:
                    raise PayloadTooLarge(
                        f"'{upload.filename}' is larger than the document limit of "
                        f"{limit / 2**20:.1f} MB (knowledge.max_document_bytes)."
                    )
                digest.update(block)
                out.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, digest.hexdigest(), size


def _metadata(raw: Any, limits: InputLimitsConfig) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    check_json_depth(str(raw), limits.max_json_depth, param="metadata")
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError:
        raise InvalidRequest("'metadata' must be a JSON object.", param="metadata") from None
    if not isinstance(value, dict):
        raise InvalidRequest("'metadata' must be a JSON object.", param="metadata")
    return value


def _form_groups(raw: list[Any]) -> list[str] | None:
    """``groups`` form fields, each one group or several separated by commas; None if absent."""
    if not raw:
        return None
    return [part for value in raw for part in str(value).split(",") if part.strip()]


@router.post("/{name}/documents", status_code=202, summary="Add documents (files or a URL)")
async def add_documents(
    name: str,
    request: Request,
    principal: Principal = Depends(require_builder),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    """Multipart ``file`` fields (with optional ``classification``, ``metadata`` JSON and
    ``groups``), or a JSON body ``{"url": ...}``. Unchanged files are reported as such."""
    await asyncio.to_thread(kb.get_base, principal.workspace_id, name)  # 404 before reading
    reader = Reader.managing(principal)
    content_type = request.headers.get("content-type", "")
    limits: InputLimitsConfig = services(request).settings.input_limits
    results: list[AddResult] = []
    if content_type.startswith("application/json"):
        try:
            body = UrlAdd.model_validate_json(await request.body())
        except ValueError as exc:
            raise InvalidRequest(f'Expected {{"url": ...}}: {exc}', param="url") from None
        check_document(body.metadata, limits, "metadata")
        results.append(
            await asyncio.to_thread(
                kb.add_url,
                principal.workspace_id,
                name,
                url=body.url,
                classification=body.classification,
                metadata=body.metadata,
                groups=body.groups,
                reader=reader,
            )
        )
    elif content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES_PER_REQUEST)
        try:
            files = [item for item in form.getlist("file") if isinstance(item, UploadFile)]
            if not files:
                raise InvalidRequest("Send the documents as multipart 'file' fields.", param="file")
            classification = form.get("classification")
            metadata = _metadata(form.get("metadata"), limits)
            check_document(metadata, limits, "metadata")
            groups = _form_groups(form.getlist("groups"))
            limit = kb.config.max_document_bytes
            for upload in files:
                check_text(upload.filename, "file", limits.max_title_chars, "max_title_chars")
                path, digest, size = await asyncio.to_thread(_spool, kb, upload, limit)
                results.append(
                    await asyncio.to_thread(
                        kb.add_upload,
                        principal.workspace_id,
                        name,
                        name=upload.filename or "",
                        upload=path,
                        content_hash=digest,
                        size_bytes=size,
                        media_type=upload.content_type,
                        classification=str(classification) if classification else None,
                        metadata=metadata,
                        groups=groups,
                        reader=reader,
                    )
                )
        finally:
            await form.close()
    else:
        raise InvalidRequest(
            'Send files as multipart/form-data, or a URL as JSON {"url": ...}.',
            code="unsupported_media_type",
        )
    return {"object": "list", "data": [result.as_dict() for result in results]}


@router.get("/{name}/documents", summary="List a base's documents with their status")
async def list_documents(
    name: str,
    principal: Principal = Depends(require_principal),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    documents = await asyncio.to_thread(
        kb.list_documents, principal.workspace_id, name, Reader.managing(principal)
    )
    return {"object": "list", "data": [document.as_dict() for document in documents]}


@router.get("/{name}/documents/{document_id}", summary="One document and its status")
async def get_document(
    name: str,
    document_id: ResourceId,
    principal: Principal = Depends(require_principal),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    document = await asyncio.to_thread(
        kb.get_document, principal.workspace_id, name, document_id, Reader.managing(principal)
    )
    return document.as_dict()


@router.patch("/{name}/documents/{document_id}", summary="Change a document's groups")
async def change_document(
    name: str,
    document_id: ResourceId,
    body: DocumentChange,
    principal: Principal = Depends(require_builder),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    document = await asyncio.to_thread(
        kb.set_groups,
        principal.workspace_id,
        name,
        document_id,
        body.groups,
        Reader.managing(principal),
    )
    return document.as_dict()


@router.get("/{name}/documents/{document_id}/chunks", summary="A document's chunks, in order")
async def document_chunks(
    name: str,
    document_id: ResourceId,
    offset: Offset = 0,
    limit: PageSize = 50,
    principal: Principal = Depends(require_principal),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    if offset < 0 or not 1 <= limit <= 500:
        raise InvalidRequest("offset must be >= 0 and limit 1 to 500.", param="limit")
    chunks = await asyncio.to_thread(
        kb.document_chunks,
        principal.workspace_id,
        name,
        document_id,
        offset=offset,
        limit=limit,
        reader=Reader.of(principal),
    )
    return {
        "object": "list",
        "data": [
            {
                "id": chunk.id,
                "ordinal": chunk.ordinal,
                "text": chunk.text,
                "location": chunk.location(),
            }
            for chunk in chunks
        ],
    }


@router.delete("/{name}/documents/{document_id}", status_code=204, summary="Delete a document")
async def delete_document(
    name: str,
    document_id: ResourceId,
    principal: Principal = Depends(require_builder),
    kb: KnowledgeService = Depends(knowledge),
) -> Response:
    await asyncio.to_thread(
        kb.delete_document, principal.workspace_id, name, document_id, Reader.managing(principal)
    )
    return Response(status_code=204)


@router.post("/{name}/query", summary="Hybrid search: passages with scores and locations")
async def query(
    name: str,
    body: Query,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
    kb: KnowledgeService = Depends(knowledge),
) -> dict[str, Any]:
    filters = body.filters or QueryFilters()
    found = await kb.search(
        principal.workspace_id,
        [name],
        body.query,
        top_k=body.top_k,
        threshold=body.threshold,
        mode=body.mode,
        documents=filters.documents,
        metadata=filters.metadata,
        reader=Reader.of(principal),
    )
    threshold = kb.config.threshold if body.threshold is None else body.threshold
    # A key with a receive clearance gets nothing above it (the egress rule, docs/mcp.md).
    disclosure = Disclosure(svc.gateway)
    clearance = disclosure.clearance(principal, default_to_floor=False)
    passages, withheld = disclosure.keep(
        principal,
        clearance,
        found,
        lambda p: p.classification,
        endpoint=f"/api/knowledge/{name}/query",
    )
    answer: dict[str, Any] = {
        "object": "list",
        "query": body.query,
        "mode": body.mode,
        "threshold": threshold,
        "data": [passage.as_dict() for passage in passages],
    }
    if clearance is not None:
        answer["withheld"] = withheld.count
    return answer
