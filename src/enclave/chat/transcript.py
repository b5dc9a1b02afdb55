"""Reading an OpenAI chat completion SSE stream as it passes by.

:class:`AnswerTranscript` collects what a stream said without changing it:
the assistant's text (choice 0's deltas), the identity of its chunks (id,
model, created...), the fields of a final ``choices: []`` chunk (citations,
disagreement, grounding, app) and an error event. Grounded chat reads it to
cite a streamed answer; the web UI's conversations to store one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# Top-level fields of a final ``choices: []`` chunk that an answer keeps.
ANSWER_FIELDS = ("citations", "disagreement", "grounding", "app")
# The fields every chunk of one completion shares.
CHUNK_IDENTITY = ("id", "object", "created", "model", "system_fingerprint")


@dataclass
class AnswerTranscript:
    """What an OpenAI chat SSE stream said: the text, the chunks' identity and extras."""

    parts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] = field(default_factory=dict)
    _pending: bytes = b""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def failed(self) -> bool:
        """Whether the stream carried an error event."""
        return "error" in self.extra

    def feed(self, data: bytes) -> None:
        """Read the complete events in ``data``; an incomplete trailing one waits."""
        *events, self._pending = (self._pending + data).split(b"\n\n")
        for event in events:
            self.read_event(event)

    def read_event(self, event: bytes) -> None:
        """Read one complete event (without its blank-line terminator)."""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                self._read(line[5:].strip())

    def _read(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            self.extra["error"] = chunk["error"]
            return
        if not self.base and "id" in chunk:
            self.base = {key: chunk.get(key) for key in CHUNK_IDENTITY}
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        if not choices:
            self.extra.update({name: chunk[name] for name in ANSWER_FIELDS if name in chunk})
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.parts.append(content)
