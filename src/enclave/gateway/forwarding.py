"""What a request may carry to a provider, and every string in it.

The gateway never forwards the client's body as it came. It builds the body a
provider receives from an explicit allowlist of OpenAI fields for each
endpoint (:class:`Outbound`), and collects every string in that body on the
same walk: exactly what the detectors scan. So what is scanned and what is
forwarded are the same thing by construction: a field that is not on the list
is dropped before it can leave, and a field that is on it is read.

An allowlist is a ``Shape``: a mapping from field name to the shape of
its value. ``FREE`` is free-form JSON (a tool's ``parameters``, a
``response_format`` schema, ``logit_bias``): it is forwarded whole, and every
key and every string in it is scanned. A mapping applies to an object, and to
each object in a list (``messages``, ``tools``, content parts), so ``content``
may be a string or a list of parts with one shape. Scalars pass as they are;
large numbers (integers or floats) are scanned as their digits, since a card
number can be sent as a number.

Content parts are forwarded only when their ``type`` is known (``text``,
``image_url``); any other part is a 400, not a silent drop, because dropping
part of a message changes what it says. Unknown fields anywhere else are
dropped, and ``docs/gateway.md`` lists what goes through. Token ids in place of
text (``input`` / ``prompt`` as integers) are a 400: ids cannot be scanned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from enclave.errors import InvalidRequest


class _Free:
    """Marks free-form JSON: forwarded whole, every key and string in it scanned."""

    def __repr__(self) -> str:
        return "FREE"


class _Known(_Free):
    """A field whose usual values are a fixed vocabulary (``role``, ``type``): forwarded,
    and scanned only when it holds something else. Skipping ``"user"`` keeps the
    contents of consecutive messages next to each other in the scanned text."""

    def __init__(self, *values: str) -> None:
        self.values = frozenset(values)

    def __repr__(self) -> str:
        return f"KNOWN{sorted(self.values)}"


FREE = _Free()
Shape = Mapping[str, "Shape | _Free"] | _Free
_FUNCTION_TYPE = _Known("function")

# Numbers this large are scanned as their digits (cards, ids, accounts).
_SCANNED_INT = 10**7

_FUNCTION_CALL: Shape = {"name": FREE, "arguments": FREE}
_TOOL_CALL: Shape = {"id": FREE, "type": _FUNCTION_TYPE, "function": _FUNCTION_CALL}
_CONTENT_PART: Shape = {
    "type": _Known("text", "image_url"),
    "text": FREE,
    "image_url": {"url": FREE, "detail": FREE},
}
CONTENT_PART_TYPES = frozenset({"text", "image_url"})
_MESSAGE: Shape = {
    "role": _Known("system", "developer", "user", "assistant", "tool"),
    "content": _CONTENT_PART,
    "name": FREE,
    "tool_calls": _TOOL_CALL,
    "tool_call_id": FREE,
    "function_call": _FUNCTION_CALL,
    "refusal": FREE,
}
_FUNCTION: Shape = {"name": FREE, "description": FREE, "parameters": FREE, "strict": FREE}
_SAMPLING: dict[str, Shape] = {
    "model": FREE,
    "stream": FREE,
    "stream_options": {"include_usage": FREE},
    "temperature": FREE,
    "top_p": FREE,
    "max_tokens": FREE,
    "stop": FREE,
    "seed": FREE,
    "presence_penalty": FREE,
    "frequency_penalty": FREE,
    "logit_bias": FREE,
    "n": FREE,
    "user": FREE,
}

FORWARDED: dict[str, Shape] = {
    "chat": {
        **_SAMPLING,
        "messages": _MESSAGE,
        "max_completion_tokens": FREE,
        "response_format": {
            "type": FREE,
            "json_schema": {"name": FREE, "description": FREE, "schema": FREE, "strict": FREE},
        },
        "tools": {"type": _FUNCTION_TYPE, "function": _FUNCTION},
        "tool_choice": {"type": _FUNCTION_TYPE, "function": {"name": FREE}},
        "parallel_tool_calls": FREE,
        "functions": _FUNCTION,
        "function_call": {"name": FREE},
        "logprobs": FREE,
        "top_logprobs": FREE,
    },
    "completion": {
        **_SAMPLING,
        "prompt": FREE,
        "echo": FREE,
        "suffix": FREE,
        "logprobs": FREE,
        "best_of": FREE,
    },
    "embeddings": {
        "model": FREE,
        "input": FREE,
        "encoding_format": FREE,
        "dimensions": FREE,
        "user": FREE,
    },
    # Speech: the transcript is what is classified (the audio itself stays on-prem).
    "transcription": {"model": FREE, "input": FREE},
    "translation": {"model": FREE, "input": FREE},
}


class Outbound:
    """The body a provider may receive for a request, and every string in it."""

    __slots__ = ("body", "strings")

    def __init__(self, capability: str, body: Mapping[str, Any]) -> None:
        """Keep only allowlisted fields of ``body`` and collect their strings.

        ``strings`` holds, in document order, every string value, every key of
        free-form JSON (a schema's property names are text the provider reads
        too) and the digits of large integers. Order matters: the detectors
        read the strings as one conversation, so a value split across two
        messages is still found. Raises :class:`InvalidRequest` for a content
        part of a type that is not forwarded.
        """
        self.strings: list[str] = []
        _refuse_token_ids(capability, body)
        shaped = self._shape(body, FORWARDED[capability], "")
        assert isinstance(shaped, dict)
        self.body: dict[str, Any] = shaped

    def _shape(self, value: Any, shape: Shape, path: str) -> Any:
        if isinstance(shape, _Known) and value in shape.values:
            return value
        if isinstance(shape, _Free):
            self._collect(value)
            return value
        if isinstance(value, list):
            return [self._shape(item, shape, path) for item in value]
        if not isinstance(value, dict):
            self._collect(value)
            return value
        if shape is _CONTENT_PART and value.get("type") not in CONTENT_PART_TYPES:
            raise InvalidRequest(
                f"Content parts of type '{value.get('type')}' are not supported; "
                f"send text or image_url parts.",
                param=path or "messages",
            )
        return {
            name: self._shape(item, shape[name], name)
            for name, item in value.items()
            if name in shape
        }

    def _collect(self, value: Any) -> None:
        strings = self.strings
        if isinstance(value, str):
            strings.append(value)
            return
        stack: list[Any] = [value]
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                strings.append(value)
            elif isinstance(value, dict):
                # Keys and values, reversed so the stack pops them in document order.
                for key, item in reversed(value.items()):
                    stack.append(item)
                    stack.append(key)
            elif isinstance(value, list):
                stack.extend(reversed(value))
            elif (
                # A card number sent as 4111111111111111 or 4.111111111111111e15.
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and abs(value) >= _SCANNED_INT
                and math.isfinite(value)
            ):
                strings.append(str(int(value)))


# Fields whose text may also come as token ids (lists of integers). Ids cannot be
# scanned (a secret spelled as ids reads as small numbers), so they never leave.
_TEXT_FIELDS = {"embeddings": "input", "completion": "prompt"}


def _refuse_token_ids(capability: str, body: Mapping[str, Any]) -> None:
    field = _TEXT_FIELDS.get(capability)
    value = body.get(field) if field else None
    if isinstance(value, list) and any(not isinstance(item, str) for item in value):
        raise InvalidRequest(
            f"'{field}' as token ids is not accepted: send the text itself, so it can be "
            "checked before it is forwarded.",
            param=field,
        )


def dropped_fields(capability: str, body: Mapping[str, Any]) -> list[str]:
    """Top-level fields of ``body`` that are not forwarded."""
    allowed = FORWARDED[capability]
    assert isinstance(allowed, Mapping)
    return [name for name in body if name not in allowed]
