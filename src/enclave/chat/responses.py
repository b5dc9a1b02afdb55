"""``/v1/responses``: the OpenAI Responses API, answered as a chat call.

:class:`ResponsesService` turns a :class:`~enclave.wire.responses_api.ResponsesRequest`
into a chat :class:`~enclave.gateway.service.Call` (with the conversation of
its ``previous_response_id`` in front), dispatches it exactly like
``/v1/chat/completions`` (:func:`~enclave.chat.dispatch.dispatch_chat`: apps,
grounded chat, then the gateway's classification, forwarding allowlist,
limits and audit), and translates the chat answer back into a response
object or ``response.*`` events.

Stored responses (``store``, the default) are owned by the key that created
them, like the UI's conversations: another key, even in the same workspace,
gets a 404 for them. A stored response keeps the conversation that led to it
as chat messages, so ``previous_response_id`` continues it. The stream's
store happens synchronously when ``response.completed`` is built, in the
generator, so a client that has the completed event can continue from it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.principals import Principal
from enclave.chat.dispatch import ChatEngines, dispatch_chat
from enclave.errors import InvalidRequest, NotFound
from enclave.gateway.service import Answer, Call
from enclave.storage.models import StoredResponseRow
from enclave.wire.protocol import ChatCompletionRequest
from enclave.wire.responses_api import (
    ResponseEvents,
    ResponsesRequest,
    output_messages,
    response_from_chat,
)


class ResponseStore:
    """Stored responses, every call scoped to one key."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def save(
        self, principal: Principal, response: dict[str, Any], messages: list[dict[str, Any]]
    ) -> None:
        with self._sessions.begin() as session:
            session.add(
                StoredResponseRow(
                    id=response["id"],
                    key_id=principal.key_id,
                    workspace_id=principal.workspace_id,
                    response_json=json.dumps(response, ensure_ascii=False),
                    messages_json=json.dumps(messages, ensure_ascii=False),
                )
            )

    def get(self, principal: Principal, rid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The response and its conversation; 404 unless this key stored it."""
        with self._sessions() as session:
            row = session.scalar(
                select(StoredResponseRow).where(
                    StoredResponseRow.id == rid,
                    StoredResponseRow.key_id == principal.key_id,
                    StoredResponseRow.workspace_id == principal.workspace_id,
                )
            )
            if row is None:
                raise NotFound(f"No response found with id '{rid}'.", param="response_id")
            return json.loads(row.response_json), json.loads(row.messages_json)


class ResponsesService:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def chat_call(
        self,
        principal: Principal,
        request: ResponsesRequest,
        *,
        classification_header: str | None,
        received: float,
    ) -> tuple[Call, list[dict[str, Any]]]:
        """The chat call for ``request``, and the conversation it continues and adds
        (without instructions, which do not carry over to the next response)."""
        history: list[dict[str, Any]] = []
        if request.previous_response_id:
            _, history = await asyncio.to_thread(
                self.store.get, principal, request.previous_response_id
            )
        body = request.to_chat_body(history)
        if not body["messages"]:
            raise InvalidRequest("The request has no input.", param="input")
        try:
            wire = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            raise InvalidRequest(f"Invalid request ({where}): {message}.") from None
        call = Call(
            capability="chat",
            principal=principal,
            body=body,
            wire=wire,
            classification_header=classification_header,
            received=received,
            path="/v1/responses",
        )
        conversation = history + request.input_messages()
        return call, conversation

    async def answer(
        self,
        svc: ChatEngines,
        call: Call,
        request: ResponsesRequest,
        conversation: list[dict[str, Any]],
    ) -> Answer:
        """Dispatch ``call`` like a chat completion; the answer in the Responses shape.
        Errors before any output keep their status and OpenAI error body."""
        answer = await dispatch_chat(svc, call)
        if answer.status != 200:
            return answer
        principal = call.principal

        def keep(response: dict[str, Any]) -> None:
            if request.store and response["status"] != "failed":
                self.store.save(principal, response, conversation + output_messages(response))

        if answer.stream is not None:
            events = ResponseEvents(request, on_complete=keep)
            answer.stream = events.translate(answer.stream)
            return answer
        try:
            chat = orjson.loads(answer.body or b"{}")
        except orjson.JSONDecodeError:
            chat = {}
        response = response_from_chat(request, chat if isinstance(chat, dict) else {})
        if request.store:
            await asyncio.to_thread(keep, response)
        answer.body = orjson.dumps(response)
        return answer

    async def retrieve(self, principal: Principal, rid: str) -> dict[str, Any]:
        response, _ = await asyncio.to_thread(self.store.get, principal, rid)
        return response
