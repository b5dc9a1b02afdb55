"""The web UI's conversations: stored chats, each owned by the API key that started it.

A conversation is a list of user and assistant messages. Sending a message
is a turn in three steps:

1. :meth:`ConversationService.start_turn` stores the user's message (so it
   survives whatever happens next) and returns the conversation so far, which
   becomes the ``messages`` of an ordinary chat request;
2. the caller dispatches that request exactly like ``/v1/chat/completions``
   (:func:`enclave.chat.dispatch.dispatch_chat`), always streaming;
3. :meth:`ConversationService.record_answer` passes the SSE stream through
   untouched while reading it (:class:`AnswerTranscript`), and stores the
   assistant's message when the stream ends: its text, plus what the final
   ``choices: []`` chunk carried (citations, disagreement, grounding, app)
   and any error event, in ``extra``. When the browser goes away mid-answer
   (the user pressed Stop) the partial text is stored with
   ``extra.cancelled = true``.

Ownership is by key id, not workspace: another key, even an admin's, sees a
404. The database writes at the end of a stream are synchronous on purpose:
they run in a ``finally`` that also runs when the request is being cancelled,
where an ``await`` would be cancelled too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.principals import Principal
from enclave.chat.transcript import ANSWER_FIELDS, AnswerTranscript
from enclave.errors import NotFound
from enclave.gateway.service import Answer
from enclave.storage.models import ConversationMessageRow, ConversationRow
from enclave.wire.responses import fixed_chat_stream, sse, sse_error

log = logging.getLogger(__name__)

TITLE_CHARS = 60


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str | None
    model: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Message:
    id: int
    role: str
    content: str
    extra: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True)
class Turn:
    """A user's message, stored, and the conversation before it as chat messages."""

    conversation: Conversation
    user_message_id: int
    history: list[dict[str, str]]


def title_from(text: str) -> str:
    """A conversation title from its first message: one line, at most 60 characters."""
    return re.sub(r"\s+", " ", text).strip()[:TITLE_CHARS]


def chat_body(
    turn: Turn,
    text: str,
    model: str,
    *,
    is_app: bool,
    knowledge: list[str] | None = None,
    decision: dict[str, str] | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for a turn: the conversation so far plus the
    user's message, always streamed. ``decision`` (``{"confirm": id}`` or
    ``{"cancel": id}``) goes to an app; ``knowledge`` to any other model."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [*turn.history, {"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": False},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if is_app and decision:
        body["enclave"] = dict(decision)
    elif not is_app and knowledge:
        body["enclave"] = {"knowledge": list(knowledge)}
    return body


def answer_events(answer: Answer, model: str) -> AsyncIterator[bytes]:
    """An answer as SSE events, also when it came back as a body (an upstream's error
    status, say): errors become one error event, a body the same chunks as a stream."""
    return answer.stream if answer.stream is not None else _body_events(answer, model)


async def _body_events(answer: Answer, model: str) -> AsyncIterator[bytes]:
    try:
        payload = orjson.loads(answer.body or b"{}")
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        payload = {}
    if answer.status != 200 or "error" in payload:
        error = payload.get("error")
        if not isinstance(error, dict):
            error = {"message": f"The model answered with status {answer.status}."}
        yield sse({"error": error})
        return
    choices = payload.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    text = str((message or {}).get("content") or "")
    extra = {name: payload[name] for name in ANSWER_FIELDS if name in payload}
    async for data in fixed_chat_stream(str(payload.get("model") or model), text, extra):
        yield data


class ConversationService:
    """Stores conversations and their messages; every call is scoped to one key."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # -- conversations -----------------------------------------------------

    def list_for(self, principal: Principal) -> list[Conversation]:
        """The key's conversations, most recently updated first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(ConversationRow)
                .where(ConversationRow.key_id == principal.key_id)
                .order_by(ConversationRow.updated_at.desc(), ConversationRow.id.desc())
            ).all()
            return [_conversation(row) for row in rows]

    def create(
        self, principal: Principal, *, title: str | None = None, model: str | None = None
    ) -> Conversation:
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = ConversationRow(
                key_id=principal.key_id,
                workspace_id=principal.workspace_id,
                title=title or None,
                model=model or None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _conversation(row)

    def get(self, principal: Principal, conversation_id: int) -> tuple[Conversation, list[Message]]:
        with self._sessions() as session:
            row = self._owned(session, principal, conversation_id)
            messages = session.scalars(
                select(ConversationMessageRow)
                .where(ConversationMessageRow.conversation_id == row.id)
                .order_by(ConversationMessageRow.id)
            ).all()
            return _conversation(row), [_message(message) for message in messages]

    def update(
        self, principal: Principal, conversation_id: int, changes: dict[str, str | None]
    ) -> Conversation:
        """Set ``title`` and/or ``model`` (an empty string clears it)."""
        with self._sessions.begin() as session:
            row = self._owned(session, principal, conversation_id)
            if "title" in changes:
                row.title = changes["title"] or None
            if "model" in changes:
                row.model = changes["model"] or None
            row.updated_at = datetime.now(UTC)
            session.flush()
            return _conversation(row)

    def delete(self, principal: Principal, conversation_id: int) -> None:
        with self._sessions.begin() as session:
            row = self._owned(session, principal, conversation_id)
            session.execute(
                delete(ConversationMessageRow).where(
                    ConversationMessageRow.conversation_id == row.id
                )
            )
            session.delete(row)

    # -- turns -------------------------------------------------------------

    def start_turn(
        self,
        principal: Principal,
        conversation_id: int,
        *,
        model: str,
        text: str,
        extra: dict[str, Any] | None = None,
        names_conversation: bool = True,
    ) -> Turn:
        """Store the user's message and return the conversation before it.

        ``names_conversation``: an untitled conversation takes its title from ``text``.
        """
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = self._owned(session, principal, conversation_id)
            earlier = session.execute(
                select(ConversationMessageRow.role, ConversationMessageRow.content)
                .where(ConversationMessageRow.conversation_id == row.id)
                .order_by(ConversationMessageRow.id)
            ).all()
            message = ConversationMessageRow(
                conversation_id=row.id,
                role="user",
                content=text,
                extra_json=_dump(extra),
                created_at=now,
            )
            session.add(message)
            if row.title is None and names_conversation and text.strip():
                row.title = title_from(text)
            row.model = model
            row.updated_at = now
            session.flush()
            history = [
                {"role": role, "content": content}
                for role, content in earlier
                if role in ("user", "assistant") and content
            ]
            return Turn(_conversation(row), message.id, history)

    def finish_turn(self, conversation_id: int, text: str, extra: dict[str, Any]) -> int | None:
        """Store the assistant's message; returns its id (None if the conversation was
        deleted while the answer streamed)."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            conversation = session.get(ConversationRow, conversation_id)
            if conversation is None:
                return None
            message = ConversationMessageRow(
                conversation_id=conversation_id,
                role="assistant",
                content=text,
                extra_json=_dump(extra),
                created_at=now,
            )
            session.add(message)
            conversation.updated_at = now
            session.flush()
            return message.id

    async def record_answer(
        self,
        turn: Turn,
        stream: AsyncIterator[bytes],
        *,
        model: str,
    ) -> AsyncIterator[bytes]:
        """Relay an answer's SSE stream after an ``enclave.message`` event, and store
        the assistant's message when it ends, fails or is cut off by the client."""
        transcript = AnswerTranscript()
        transcript.extra["model"] = model
        finished = False
        try:
            yield sse(
                {
                    "object": "enclave.message",
                    "conversation_id": turn.conversation.id,
                    "user_message_id": turn.user_message_id,
                    "title": turn.conversation.title,
                }
            )
            try:
                async for data in stream:
                    transcript.feed(data)
                    yield data
            except Exception as exc:  # streams end in an error event; this one raised instead
                event = sse_error(exc)
                transcript.feed(event)
                finished = True
                yield event
            finished = True
        finally:
            if not finished:
                transcript.extra["cancelled"] = True
            try:
                self.finish_turn(turn.conversation.id, transcript.text, transcript.extra)
            except Exception:  # the stream is over either way; the reader saw the answer
                log.exception("could not store the answer in conversation %d", turn.conversation.id)
            close = getattr(stream, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _owned(session: Session, principal: Principal, conversation_id: int) -> ConversationRow:
        row = session.get(ConversationRow, conversation_id)
        if row is None or row.key_id != principal.key_id:
            raise NotFound(f"No conversation with id {conversation_id}.")
        return row


def _dump(extra: dict[str, Any] | None) -> str | None:
    return json.dumps(extra, ensure_ascii=False) if extra else None


def _conversation(row: ConversationRow) -> Conversation:
    return Conversation(row.id, row.title, row.model, row.created_at, row.updated_at)


def _message(row: ConversationMessageRow) -> Message:
    extra = json.loads(row.extra_json) if row.extra_json else None
    return Message(row.id, row.role, row.content, extra, row.created_at)
