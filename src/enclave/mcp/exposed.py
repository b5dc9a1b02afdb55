"""What Enclave offers an MCP client: its knowledge and apps, under the egress rule.

:class:`ExposedWorkspace` is the service behind ``/mcp`` (the HTTP layer in
``enclave.api.mcp`` only translates MCP requests into these calls). Every
method takes the authenticated :class:`Principal`, sees only that key's
workspace (exactly the isolation of ``/api``: another workspace's base,
document or chunk id is "not found", never "forbidden"), reads only documents
its user's groups may read (a restricted document or chunk is "not found"
too; a key without a user reads only unrestricted ones), and returns only
content at or below the key's receive clearance
(:mod:`enclave.gateway.disclosure`):

* ``search`` drops passages above the clearance and says how many it withheld;
* ``fetch`` of a chunk or document above it is refused with the reason;
* ``answer`` is grounded only on passages the key may receive, and the answer
  is checked again afterwards: if the gateway classified it above the
  clearance (a detector hit in the question, a passage from a path that
  bypassed the filter) it is refused, not returned;
* an app's answer is returned only if its class is within the clearance.

Results are plain JSON-ready dicts. Each call is audited by the caller
(``enclave.api.mcp``); refusals are audited here, by :class:`Disclosure`.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Any, cast

import orjson

from enclave.apps.runner import AppRunner
from enclave.apps.service import AppService
from enclave.auth.principals import Principal
from enclave.errors import EnclaveError, InvalidRequest, NotFound
from enclave.gateway.classification import CLASSIFICATION_HEADER
from enclave.gateway.disclosure import Disclosure
from enclave.gateway.service import Answer, Call, Gateway
from enclave.knowledge.grounding import GroundedChat, KnowledgeOptions
from enclave.knowledge.retrieval import Mode
from enclave.knowledge.service import KnowledgeService, Passage, Reader
from enclave.knowledge.store.base import ChunkRow
from enclave.wire.protocol import ChatCompletionRequest

# Fields of a chat body that are the answer's envelope, not what the answer says.
ENVELOPE = ("id", "object", "created", "model", "choices", "usage", "system_fingerprint")
DOCUMENT_CHUNKS = 1000  # the most chunks a document fetch stitches together


class ChunkNotFound(NotFound):
    default_code = "chunk_not_found"


def passage_result(passage: Passage) -> dict[str, Any]:
    """A search hit as an MCP client sees it: ids to fetch, where it is, the quote, scores."""
    location = passage.chunk.location()
    return {
        "id": f"chunk:{passage.chunk.id}",
        "chunk_id": passage.chunk.id,
        "knowledge_base": passage.knowledge_base,
        "document": {"id": passage.document_id, "name": passage.document_name},
        "title": passage.document_title,
        "uri": document_uri(passage.knowledge_base, passage.document_name),
        "pages": [location["page_start"], location["page_end"]],
        "heading_path": location["heading_path"],
        "quote": passage.chunk.text,
        "score": round(passage.retrieved.score, 6),
        "similarity": round(passage.retrieved.similarity, 6),
        "classification": passage.classification,
    }


def document_uri(base: str, document: str) -> str:
    return f"kb://{base}/{document}"


def parse_document_uri(uri: str) -> tuple[str, str]:
    """``kb://<base>/<document>`` -> (base, document name); a 400 for anything else."""
    rest = uri.removeprefix("kb://")
    base, _, document = rest.partition("/")
    if rest == uri or not base or not document:
        raise InvalidRequest(f"'{uri}' is not a kb://<base>/<document> URI.", param="uri")
    return base, document


class _ClearedKnowledge:
    """A view of the knowledge service whose searches return only cleared passages.

    Handed to a :class:`GroundedChat` so the answer is built from what the key
    may receive; everything else is delegated unchanged.
    """

    def __init__(self, knowledge: KnowledgeService, keep: Any) -> None:
        self._knowledge = knowledge
        self._keep = keep

    async def search(self, *args: Any, **kwargs: Any) -> list[Passage]:
        found = await self._knowledge.search(*args, **kwargs)
        kept: list[Passage] = self._keep(found)
        return kept

    def __getattr__(self, name: str) -> Any:
        return getattr(self._knowledge, name)


class ExposedWorkspace:
    """The knowledge and apps of the caller's workspace, as ``/mcp`` offers them."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        knowledge: KnowledgeService | None,
        grounding: GroundedChat | None,
        apps: AppService | None,
        app_runner: AppRunner | None,
        knowledge_problem: str = "Knowledge is not available.",
    ) -> None:
        self.gateway = gateway
        self.disclosure = Disclosure(gateway)
        self._knowledge = knowledge
        self._grounding = grounding
        self.apps = apps
        self.app_runner = app_runner
        self._knowledge_problem = knowledge_problem

    def clearance(self, principal: Principal) -> str:
        cleared = self.disclosure.clearance(principal)
        assert cleared is not None
        return cleared

    def knowledge(self) -> KnowledgeService:
        if self._knowledge is None:
            raise EnclaveError(self._knowledge_problem, code="knowledge_unavailable")
        return self._knowledge

    # -- knowledge -----------------------------------------------------------

    async def list_bases(self, principal: Principal) -> list[dict[str, Any]]:
        """Every base of the workspace, with whether this key may receive its content."""
        clearance = self.clearance(principal)
        bases = await asyncio.to_thread(
            self.knowledge().list_bases, principal.workspace_id, reader=Reader.of(principal)
        )
        return [
            {
                "name": base.name,
                "description": base.description,
                "classification": base.classification,
                "documents": base.documents,
                "receivable": self.disclosure.allows(clearance, base.classification),
            }
            for base in bases
        ]

    async def search(
        self,
        principal: Principal,
        query: str,
        *,
        knowledge_bases: Sequence[str] | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        mode: Mode = "hybrid",
        documents: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        endpoint: str = "/mcp search",
    ) -> dict[str, Any]:
        """Hybrid search; hits above the clearance are withheld (and audited)."""
        knowledge = self.knowledge()
        names = list(knowledge_bases or ())
        if not names:
            bases = await asyncio.to_thread(knowledge.list_bases, principal.workspace_id)
            names = [base.name for base in bases]
            if not names:
                return {"results": [], "withheld": 0, "note": "This workspace has no knowledge."}
        found = await knowledge.search(
            principal.workspace_id,
            names,
            query,
            top_k=top_k,
            threshold=threshold,
            mode=mode,
            documents=documents,
            metadata=metadata,
            reader=Reader.of(principal),
        )
        clearance = self.clearance(principal)
        kept, withheld = self.disclosure.keep(
            principal, clearance, found, lambda p: p.classification, endpoint=endpoint
        )
        result: dict[str, Any] = {
            "results": [passage_result(p) for p in kept],
            "withheld": withheld.count,
        }
        note = withheld.note(clearance)
        if note:
            result["note"] = note
        return result

    async def _chunk(self, principal: Principal, chunk_id: int) -> tuple[ChunkRow, str, str]:
        """The chunk, its base's name and its document's class, if it is in this workspace
        and the principal may read its document."""
        knowledge = self.knowledge()
        reader = Reader.of(principal)
        found = await asyncio.to_thread(
            knowledge.readable_chunk, principal.workspace_id, chunk_id, reader
        )
        bases = await asyncio.to_thread(knowledge.list_bases, principal.workspace_id)
        base = next((b for b in bases if found is not None and b.id == found.kb_id), None)
        if found is None or base is None:
            # The same answer for a chunk that does not exist, one of another workspace
            # and one of a document restricted to groups the principal is not in.
            raise ChunkNotFound(f"There is no chunk {chunk_id} in this workspace.")
        document = await asyncio.to_thread(
            knowledge.get_document, principal.workspace_id, base.name, found.document_id, reader
        )
        return found, base.name, document.classification

    async def fetch(
        self, principal: Principal, item: str, *, endpoint: str = "/mcp fetch"
    ) -> dict[str, Any]:
        """A chunk (``chunk:<id>``) or a whole document (``kb://<base>/<document>``)."""
        clearance = self.clearance(principal)
        if item.startswith("kb://"):
            return await self.read_document(principal, item, endpoint=endpoint)
        raw = item.removeprefix("chunk:")
        if not raw.isdigit():
            raise InvalidRequest(
                f"'{item}' is not an id: use chunk:<id> or kb://<base>/<document>.", param="id"
            )
        chunk, base, level = await self._chunk(principal, int(raw))
        self.disclosure.check(
            principal, clearance, level, endpoint=endpoint, what=f"chunk {chunk.id} of {base}"
        )
        document = await asyncio.to_thread(
            self.knowledge().get_document,
            principal.workspace_id,
            base,
            chunk.document_id,
            Reader.of(principal),
        )
        return {
            "id": f"chunk:{chunk.id}",
            "knowledge_base": base,
            "document": {"id": document.id, "name": document.name},
            "uri": document_uri(base, document.name),
            "classification": level,
            "location": chunk.location(),
            "text": chunk.text,
        }

    async def read_document(
        self, principal: Principal, uri: str, *, endpoint: str = "/mcp resources/read"
    ) -> dict[str, Any]:
        """A document's text, stitched from its chunks in order, if the key may receive it."""
        base, name = parse_document_uri(uri)
        knowledge = self.knowledge()
        reader = Reader.of(principal)
        documents = await asyncio.to_thread(
            knowledge.list_documents, principal.workspace_id, base, reader
        )
        document = next((d for d in documents if d.name == name), None)
        if document is None:
            raise NotFound(f"There is no document '{name}' in knowledge base '{base}'.")
        self.disclosure.check(
            principal,
            self.clearance(principal),
            document.classification,
            endpoint=endpoint,
            what=f"document {base}/{name}",
        )
        chunks = await asyncio.to_thread(
            knowledge.document_chunks,
            principal.workspace_id,
            base,
            document.id,
            offset=0,
            limit=DOCUMENT_CHUNKS,
            reader=reader,
        )
        return {
            "uri": uri,
            "knowledge_base": base,
            "document": {"id": document.id, "name": document.name},
            "title": document.title,
            "classification": document.classification,
            "text": stitch(chunks),
        }

    async def documents(self, principal: Principal) -> list[dict[str, Any]]:
        """The documents this key may receive, as resources (``kb://`` URIs)."""
        clearance = self.clearance(principal)
        knowledge = self.knowledge()
        listed = []
        for base in await asyncio.to_thread(knowledge.list_bases, principal.workspace_id):
            for document in await asyncio.to_thread(
                knowledge.list_documents, principal.workspace_id, base.name, Reader.of(principal)
            ):
                if document.status == "indexed" and self.disclosure.allows(
                    clearance, document.classification
                ):
                    listed.append(
                        {
                            "uri": document_uri(base.name, document.name),
                            "name": document.name,
                            "title": document.title,
                            "knowledge_base": base.name,
                            "classification": document.classification,
                        }
                    )
        return listed

    async def answer(
        self,
        principal: Principal,
        question: str,
        knowledge_bases: Sequence[str],
        *,
        model: str = "default",
        top_k: int | None = None,
        endpoint: str = "/mcp answer",
    ) -> dict[str, Any]:
        """A grounded answer (citations, disagreement, abstention) from cleared passages."""
        if self._grounding is None:
            self.knowledge()  # raises with the reason
        assert self._grounding is not None
        clearance = self.clearance(principal)
        names = list(knowledge_bases)
        if not names:
            bases = await asyncio.to_thread(self.knowledge().list_bases, principal.workspace_id)
            names = [base.name for base in bases]
        withheld = 0

        def keep(found: list[Passage]) -> list[Passage]:
            nonlocal withheld
            kept, dropped = self.disclosure.keep(
                principal, clearance, found, lambda p: p.classification, endpoint=endpoint
            )
            withheld += dropped.count
            return kept

        # The app's grounded chat (its settings as they are), reading a cleared view.
        grounding = copy.copy(self._grounding)
        grounding.knowledge = cast(KnowledgeService, _ClearedKnowledge(self.knowledge(), keep))
        call = self._call(principal, model, question, endpoint)
        answer = await grounding.handle(call, KnowledgeOptions(tuple(names), top_k))
        payload = self._cleared_payload(principal, clearance, answer, endpoint, "the answer")
        result = answer_fields(payload)
        result["withheld"] = withheld
        return result

    # -- apps ----------------------------------------------------------------

    def list_apps(self, principal: Principal) -> list[dict[str, Any]]:
        if self.apps is None:
            return []
        return self.apps.list_apps(principal.workspace_id)

    async def ask_app(
        self, principal: Principal, name: str, message: str, *, endpoint: str
    ) -> dict[str, Any]:
        """One message to an app; its answer only if the key may receive its class."""
        if self.apps is None or self.app_runner is None:
            raise EnclaveError("Apps are not available yet.", code="apps_unavailable")
        clearance = self.clearance(principal)
        app = self.apps.load(principal.workspace_id, name)
        call = self._call(principal, app.manifest.spec.model, message, endpoint)
        answer = await self.app_runner.handle(call, name, None)
        payload = self._cleared_payload(principal, clearance, answer, endpoint, f"app '{name}'")
        result = answer_fields(payload)
        result["app"] = payload.get("app")
        return result

    # -- shared --------------------------------------------------------------

    @staticmethod
    def _call(principal: Principal, model: str, question: str, endpoint: str) -> Call:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "stream": False,
        }
        return Call(
            capability="chat",
            principal=principal,
            body=body,
            wire=ChatCompletionRequest.model_validate(body),
            classification_header=None,
            path=endpoint,
        )

    def _cleared_payload(
        self, principal: Principal, clearance: str, answer: Answer, endpoint: str, what: str
    ) -> dict[str, Any]:
        """The answer's body, after checking the class the gateway gave it (fail closed)."""
        if answer.status != 200 or answer.body is None:
            raise EnclaveError(_error_message(answer), code="answer_failed")
        level = answer.headers.get(CLASSIFICATION_HEADER) or self.disclosure.levels.names[-1]
        self.disclosure.check(principal, clearance, level, endpoint=endpoint, what=what)
        payload: dict[str, Any] = orjson.loads(answer.body)
        return payload


def answer_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """The answer's text and every field Enclave adds to a chat body (citations, ...)."""
    choices = payload.get("choices") or [{}]
    message = choices[0].get("message") or {}
    extra = {k: v for k, v in payload.items() if k not in ENVELOPE}
    return {"answer": message.get("content") or "", **extra}


def stitch(chunks: Sequence[ChunkRow]) -> str:
    """A document's text from its chunks, which may overlap: each adds what is new."""
    text, end = "", 0
    for chunk in sorted(chunks, key=lambda c: c.ordinal):
        if chunk.char_end <= end:
            continue
        skip = max(0, end - chunk.char_start)
        text += chunk.text[skip:]
        end = chunk.char_end
    return text


def _error_message(answer: Answer) -> str:
    try:
        body = orjson.loads(answer.body or b"{}")
        return str(body.get("error", {}).get("message") or f"The answer failed ({answer.status}).")
    except (orjson.JSONDecodeError, AttributeError):
        return f"The answer failed ({answer.status})."
