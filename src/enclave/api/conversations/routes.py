"""``/api/conversations``: the web UI's stored chats, each owned by the calling key.

Another key's conversation is a 404. ``POST /{id}/messages`` stores the
user's message, sends the conversation to the chosen model exactly as
``/v1/chat/completions`` would (apps and grounding included, see
:func:`enclave.chat.dispatch.dispatch_chat`) and answers with that stream,
preceded by one ``enclave.message`` event. Once the user's message is stored,
anything that goes wrong arrives as an error event in the stream (and is
stored with the assistant's message), never as an HTTP error; see
:mod:`enclave.chat.conversations`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError
from starlette.responses import StreamingResponse

from enclave.api.conversations.protocol import (
    ConversationCreate,
    ConversationDetail,
    ConversationOut,
    ConversationPatch,
    MessageOut,
    MessagePost,
)
from enclave.api.deps import Services, require_principal, services
from enclave.api.params import ResourceId, input_limits
from enclave.apps.service import parse_model_id
from enclave.auth.principals import Principal
from enclave.chat.conversations import ConversationService, answer_events, chat_body
from enclave.chat.dispatch import dispatch_chat
from enclave.errors import EnclaveError, InvalidRequest
from enclave.gateway.classification import CLASSIFICATION_HEADER
from enclave.gateway.service import SSE_HEADERS, Answer, Call
from enclave.input_limits import check_text
from enclave.settings import InputLimitsConfig
from enclave.wire.protocol import ChatCompletionRequest
from enclave.wire.responses import sse_error

router = APIRouter(prefix="/api/conversations", dependencies=[Depends(require_principal)])


def conversation_service(svc: Services = Depends(services)) -> ConversationService:
    return svc.conversations


def check_conversation(title: str | None, model: str | None, limits: InputLimitsConfig) -> None:
    check_text(title, "title", limits.max_title_chars, "max_title_chars")
    check_text(model, "model", limits.max_model_name_chars, "max_model_name_chars")


@router.get("", summary="The calling key's conversations, most recent first")
async def list_conversations(
    principal: Principal = Depends(require_principal),
    conversations: ConversationService = Depends(conversation_service),
) -> dict[str, Any]:
    found = await asyncio.to_thread(conversations.list_for, principal)
    return {"object": "list", "data": [ConversationOut.model_validate(c) for c in found]}


@router.post("", status_code=201, summary="Start a conversation")
async def create_conversation(
    body: ConversationCreate,
    principal: Principal = Depends(require_principal),
    conversations: ConversationService = Depends(conversation_service),
    limits: InputLimitsConfig = Depends(input_limits),
) -> ConversationOut:
    check_conversation(body.title, body.model, limits)
    created = await asyncio.to_thread(
        conversations.create, principal, title=body.title, model=body.model
    )
    return ConversationOut.model_validate(created)


@router.get("/{conversation_id}", summary="A conversation with its messages")
async def get_conversation(
    conversation_id: ResourceId,
    principal: Principal = Depends(require_principal),
    conversations: ConversationService = Depends(conversation_service),
) -> ConversationDetail:
    conversation, messages = await asyncio.to_thread(conversations.get, principal, conversation_id)
    return ConversationDetail(
        **ConversationOut.model_validate(conversation).model_dump(),
        messages=[MessageOut.model_validate(message) for message in messages],
    )


@router.patch("/{conversation_id}", summary="Rename a conversation or change its model")
async def update_conversation(
    conversation_id: ResourceId,
    body: ConversationPatch,
    principal: Principal = Depends(require_principal),
    conversations: ConversationService = Depends(conversation_service),
    limits: InputLimitsConfig = Depends(input_limits),
) -> ConversationOut:
    check_conversation(body.title, body.model, limits)
    changes = {
        name: value.strip() if value else None
        for name, value in body
        if name in body.model_fields_set
    }
    updated = await asyncio.to_thread(conversations.update, principal, conversation_id, changes)
    return ConversationOut.model_validate(updated)


@router.delete("/{conversation_id}", status_code=204, summary="Delete a conversation")
async def delete_conversation(
    conversation_id: ResourceId,
    principal: Principal = Depends(require_principal),
    conversations: ConversationService = Depends(conversation_service),
) -> Response:
    await asyncio.to_thread(conversations.delete, principal, conversation_id)
    return Response(status_code=204)


@router.post(
    "/{conversation_id}/messages",
    summary="Send a message (or confirm/cancel an app's action); answers with an SSE stream",
    response_class=StreamingResponse,
)
async def post_message(
    conversation_id: ResourceId,
    body: MessagePost,
    request: Request,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> StreamingResponse:
    is_app = parse_model_id(body.model) is not None  # a malformed app/... id is a 400
    decision = {"confirm": body.confirm} if body.confirm else None
    if body.cancel:
        decision = {"cancel": body.cancel}
    if decision is not None and not is_app:
        raise InvalidRequest(
            "confirm and cancel decide an app's pending action; use an app model (app/<name>).",
            param="confirm" if body.confirm else "cancel",
        )
    limits = svc.settings.input_limits
    check_text(body.model, "model", limits.max_model_name_chars, "max_model_name_chars")
    check_text(body.content, "content", len(body.content or ""), "")  # NUL only
    text = body.content or ""
    if decision is not None:
        text = "Confirmed." if body.confirm else "Cancelled."
    conversations = svc.conversations
    turn = await asyncio.to_thread(
        conversations.start_turn,
        principal,
        conversation_id,
        model=body.model,
        text=text,
        extra=decision,
        names_conversation=decision is None,
    )
    payload = chat_body(
        turn,
        text,
        body.model,
        is_app=is_app,
        knowledge=body.knowledge,
        decision=decision,
        max_tokens=svc.settings.ui.answer_max_tokens,
    )
    try:
        try:
            wire = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise InvalidRequest(f"The conversation cannot be sent: {message}.") from None
        call = Call(
            capability="chat",
            principal=principal,
            body=payload,
            wire=wire,
            classification_header=request.headers.get(CLASSIFICATION_HEADER),
            received=request.state.received,
        )
        answer = await dispatch_chat(svc, call)
    except EnclaveError as exc:
        answer = Answer(200, dict(exc.headers), stream=_one(sse_error(exc)))
    # The stream's own status is in its events; the gateway's headers pass through.
    headers = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-enclave-")}
    return StreamingResponse(
        conversations.record_answer(turn, answer_events(answer, body.model), model=body.model),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **headers},
    )


async def _one(event: bytes) -> AsyncIterator[bytes]:
    yield event
