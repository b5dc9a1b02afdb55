"""The OpenAI Responses API (``POST /v1/responses``) as a translation over chat.

A Responses request becomes an ordinary chat completions body
(:meth:`ResponsesRequest.to_chat_body`), which goes through exactly the same
dispatch, classification, forwarding allowlist, limits and audit as
``/v1/chat/completions``; upstreams only ever receive chat requests. The chat
answer comes back the other way: a body through :func:`response_from_chat`,
an SSE stream through :class:`ResponseEvents`, which re-emits it as the
``response.*`` events, each with a ``sequence_number``. A stream always ends in
``response.completed`` (an answer cut off by ``max_output_tokens`` has status
``incomplete`` inside it, since clients wait for that event) or
``response.failed``. Knowledge citations become ``file_citation`` annotations.

What is refused (400) rather than silently dropped: non-function tools,
``input_image``/``input_file`` parts, item references, ``background``,
``conversation`` and ``prompt``. Fields that do not change the answer
(``metadata``, ``user``, ``truncation``, ``include``, ``reasoning``,
``parallel_tool_calls``, ``service_tier``) are accepted and echoed or ignored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from enclave.errors import EnclaveError, InvalidRequest, error_body
from enclave.input_limits import INT64_MAX
from enclave.wire.protocol import WireModel

TEXT_PARTS = ("input_text", "output_text", "text")
# Error codes the openai SDK's ResponseError accepts; anything else is reported as server_error.
RESPONSE_ERROR_CODES = ("server_error", "rate_limit_exceeded", "invalid_prompt")


def response_id() -> str:
    return f"resp_{uuid.uuid4().hex}"


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesTool(WireModel):
    type: str
    name: str | None = Field(None, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(WireModel):
    format: TextFormat | None = None


class ResponsesRequest(WireModel):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    tools: list[ResponsesTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = Field(None, max_length=200)
    store: bool = True
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> ResponsesRequest:
        if self.background:
            raise ValueError("background responses are not supported")
        for name in ("conversation", "prompt"):
            if (self.model_extra or {}).get(name) is not None:
                raise ValueError(
                    f"'{name}' is not supported; send input (and previous_response_id)"
                )
        for tool in self.tools or ():
            if tool.type != "function" or not tool.name:
                raise ValueError(
                    f"tools of type '{tool.type}' are not supported; send function tools "
                    "({type: function, name, parameters})"
                )
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise ValueError("input must not be an empty list")
        return self

    # -- request: Responses -> chat ----------------------------------------

    def input_messages(self) -> list[dict[str, Any]]:
        """The ``input`` as chat messages (without ``instructions``)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        messages: list[dict[str, Any]] = []
        for index, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if role not in ("user", "system", "developer", "assistant"):
                    raise InvalidRequest(
                        f"input[{index}] has an unsupported role {role!r}.", param="input"
                    )
                messages.append({"role": role, "content": _text(item.get("content"), index)})
            elif kind == "function_call":
                call = {
                    "id": str(item.get("call_id") or item.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(item.get("name") or ""),
                        "arguments": str(item.get("arguments") or "{}"),
                    },
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                output = item.get("output")
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(item.get("call_id") or ""),
                        "content": output if isinstance(output, str) else _text(output, index),
                    }
                )
            elif kind == "reasoning":
                continue  # a reasoning model's summary, sent back by agents; nothing to forward
            else:
                raise InvalidRequest(
                    f"input[{index}] is of type '{kind}', which is not supported; send "
                    "message, function_call or function_call_output items.",
                    param="input",
                )
        return messages

    def to_chat_body(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat completions body: instructions, ``history`` (the previous response's
        conversation), then this request's input."""
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages += history + self.input_messages()
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if self.max_output_tokens is not None:
            body["max_tokens"] = self.max_output_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.user is not None:
            body["user"] = self.user
        if self.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description or "",
                        "parameters": tool.parameters or {"type": "object", "properties": {}},
                    },
                }
                for tool in self.tools
            ]
        if self.tool_choice is not None:
            body["tool_choice"] = _tool_choice(self.tool_choice)
        if self.parallel_tool_calls is not None and self.tools:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_schema":
            if fmt.schema_ is None:
                raise InvalidRequest("text.format json_schema needs a schema.", param="text")
            schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
            if fmt.strict is not None:
                schema["strict"] = fmt.strict
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        enclave = (self.model_extra or {}).get("enclave")
        if enclave is not None:
            body["enclave"] = enclave
        return body

    # -- answer: chat -> Responses -------------------------------------------

    def skeleton(self, rid: str, created: float) -> dict[str, Any]:
        """The response object with everything but its output, status and usage."""
        fmt = self.text.format if self.text and self.text.format else TextFormat()
        text_format: dict[str, Any] = {"type": fmt.type}
        if fmt.type == "json_schema":
            text_format |= {"name": fmt.name, "schema": fmt.schema_ or {}, "strict": fmt.strict}
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": [],
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
            "temperature": self.temperature if self.temperature is not None else 1.0,
            "top_p": self.top_p if self.top_p is not None else 1.0,
            "text": {"format": text_format},
            "tool_choice": self._echo_tool_choice(),
            "tools": [
                {
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                    "strict": tool.strict if tool.strict is not None else False,
                }
                for tool in self.tools or ()
            ],
            "truncation": "disabled",
            "metadata": self.metadata or {},
            "user": self.user,
            "usage": None,
        }

    def _echo_tool_choice(self) -> Any:
        choice = self.tool_choice
        if isinstance(choice, dict):
            return {"type": "function", "name": choice.get("name", "")}
        return choice or "auto"


def _text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"input[{index}].content must be a string or parts.", param="input")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
            continue
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InvalidRequest(
                f"Content parts of type '{kind}' are not supported; send input_text parts.",
                param="input",
            )
        texts.append(part["text"])
    return "".join(texts)


def _tool_choice(choice: str | dict[str, Any]) -> Any:
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                "tool_choice must be 'none', 'auto', 'required' or {type: function, name}.",
                param="tool_choice",
            )
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        f"tool_choice of type '{choice.get('type')}' is not supported; send 'none', 'auto', "
        "'required' or {type: function, name}.",
        param="tool_choice",
    )


def usage_object(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def citation_annotations(text: str, citations: Any) -> list[dict[str, Any]]:
    """Knowledge citations as ``file_citation`` annotations at their ``[n]`` marker."""
    found = []
    for citation in citations if isinstance(citations, list) else ():
        if not isinstance(citation, dict):
            continue
        document = citation.get("document") or {}
        marker = text.find(f"[{citation.get('number')}]")
        found.append(
            {
                "type": "file_citation",
                "file_id": str(document.get("id", "")),
                "filename": str(document.get("name") or citation.get("title") or ""),
                "index": marker if marker >= 0 else len(text),
            }
        )
    return found


def message_item(text: str, notes: list[dict[str, Any]], status: str = "completed") -> dict:
    return {
        "type": "message",
        "id": item_id("msg"),
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": notes, "logprobs": []}],
    }


def function_call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": item_id("fc"),
        "call_id": str(call.get("id") or item_id("call")),
        "name": str(function.get("name") or ""),
        "arguments": str(function.get("arguments") or ""),
        "status": status,
    }


def finish(response: dict[str, Any], finish_reason: str | None) -> None:
    """Set the final status: ``incomplete`` when the token limit cut the answer."""
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        response["status"] = "completed"


def response_from_chat(request: ResponsesRequest, chat: dict[str, Any]) -> dict[str, Any]:
    """A chat completion body as a response object."""
    response = request.skeleton(response_id(), float(chat.get("created") or time.time()))
    choices = chat.get("choices") or [{}]
    message = choices[0].get("message") or {}
    text = message.get("content")
    if isinstance(text, str) and (text or not message.get("tool_calls")):
        response["output"].append(
            message_item(text, citation_annotations(text, chat.get("citations")))
        )
    for call in message.get("tool_calls") or ():
        response["output"].append(function_call_item(call))
    response["usage"] = usage_object(chat.get("usage"))
    finish(response, choices[0].get("finish_reason"))
    return response


def output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A response's output as chat messages, to continue it with previous_response_id."""
    text: str | None = None
    calls = []
    for item in response.get("output") or ():
        if item.get("type") == "message":
            text = "".join(part.get("text", "") for part in item.get("content") or ())
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return [message]


def failure(exc_or_error: BaseException | dict[str, Any]) -> dict[str, Any]:
    """The ``error`` of a failed response, with a code the SDK's ResponseError accepts."""
    if isinstance(exc_or_error, dict):
        error = exc_or_error
    elif isinstance(exc_or_error, EnclaveError):
        error = error_body(exc_or_error, "/v1")["error"]
    else:
        error = {"message": "The generation failed. The details are in the server log."}
    code = error.get("code")
    if code not in RESPONSE_ERROR_CODES:
        code = "rate_limit_exceeded" if error.get("type") == "rate_limit_error" else "server_error"
    return {"code": code, "message": str(error.get("message") or "The generation failed.")}


# -- streaming ----------------------------------------------------------------


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class _Call:
    item: dict[str, Any]
    output_index: int


@dataclass
class ResponseEvents:
    """Re-emit a chat SSE stream as the Responses API's ``response.*`` events.

    ``on_complete`` gets the final response object when the stream completes
    (to store it). An error event in the chat stream ends it with
    ``response.failed``.
    """

    request: ResponsesRequest
    on_complete: Callable[[dict[str, Any]], None] | None = None
    response: dict[str, Any] = field(init=False)
    _sequence: int = 0
    _message: dict[str, Any] | None = None
    _message_index: int = 0
    _calls: dict[int, _Call] = field(default_factory=dict)
    _finish_reason: str | None = None
    _citations: Any = None
    _pending: bytes = b""
    _closed: bool = False

    def __post_init__(self) -> None:
        self.response = self.request.skeleton(response_id(), time.time())

    def _emit(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return sse_event(payload)

    def start(self) -> list[bytes]:
        return [
            self._emit("response.created", response=dict(self.response)),
            self._emit("response.in_progress", response=dict(self.response)),
        ]

    async def translate(self, chat: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            for data in self.start():
                yield data
            async for data in chat:
                for out in self.feed(data):
                    yield out
                if self._closed:
                    break
            if not self._closed:
                for out in self._fail({"message": "The answer ended early."}):
                    yield out
        except Exception as exc:
            if not self._closed:
                for out in self._fail(exc):
                    yield out
        finally:
            close = getattr(chat, "aclose", None)
            if close is not None:
                await close()

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        *events, self._pending = (self._pending + data).split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data:") and not self._closed:
                    out += self._read(line[5:].strip())
        return out

    def _read(self, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return self._complete()
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            error = chunk["error"]
            return self._fail(error if isinstance(error, dict) else {"message": str(error)})
        if isinstance(chunk.get("usage"), dict):
            self.response["usage"] = usage_object(chunk["usage"])
        if "citations" in chunk:
            self._citations = chunk["citations"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._text(content)
            for call in delta.get("tool_calls") or ():
                out += self._tool_call(call)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return out

    def _text(self, delta: str) -> list[bytes]:
        out = []
        if self._message is None:
            self._message = message_item("", [], "in_progress")
            self._message_index = len(self.response["output"])
            self.response["output"].append(self._message)
            out.append(
                self._emit(
                    "response.output_item.added",
                    output_index=self._message_index,
                    item={**self._message, "content": []},
                )
            )
            out.append(
                self._emit(
                    "response.content_part.added",
                    item_id=self._message["id"],
                    output_index=self._message_index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        self._message["content"][0]["text"] += delta
        out.append(
            self._emit(
                "response.output_text.delta",
                item_id=self._message["id"],
                output_index=self._message_index,
                content_index=0,
                delta=delta,
                logprobs=[],
            )
        )
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        current = self._calls.get(index)
        if current is None:
            item = function_call_item({"id": call.get("id"), "function": {}}, "in_progress")
            item["name"] = str(function.get("name") or "")
            current = self._calls[index] = _Call(item, len(self.response["output"]))
            self.response["output"].append(item)
            out.append(
                self._emit(
                    "response.output_item.added",
                    output_index=current.output_index,
                    item=dict(item),
                )
            )
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            current.item["arguments"] += arguments
            out.append(
                self._emit(
                    "response.function_call_arguments.delta",
                    item_id=current.item["id"],
                    output_index=current.output_index,
                    delta=arguments,
                )
            )
        return out

    def _complete(self) -> list[bytes]:
        out = []
        finish(self.response, self._finish_reason)
        status = "incomplete" if self.response["status"] == "incomplete" else "completed"
        if self._message is not None:
            part = self._message["content"][0]
            text = part["text"]
            part["annotations"] = citation_annotations(text, self._citations)
            ids = {"item_id": self._message["id"], "output_index": self._message_index}
            for number, note in enumerate(part["annotations"]):
                out.append(
                    self._emit(
                        "response.output_text.annotation.added",
                        **ids,
                        content_index=0,
                        annotation_index=number,
                        annotation=note,
                    )
                )
            out.append(
                self._emit(
                    "response.output_text.done", **ids, content_index=0, text=text, logprobs=[]
                )
            )
            out.append(self._emit("response.content_part.done", **ids, content_index=0, part=part))
            self._message["status"] = status
            out.append(
                self._emit(
                    "response.output_item.done",
                    output_index=self._message_index,
                    item=self._message,
                )
            )
        for current in self._calls.values():
            item = current.item
            item["status"] = status
            out.append(
                self._emit(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=current.output_index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            out.append(
                self._emit(
                    "response.output_item.done", output_index=current.output_index, item=item
                )
            )
        # Always response.completed (a cut-off answer has status incomplete in it): the SDK's
        # stream helper and agent frameworks wait for that event and no other.
        out.append(self._emit("response.completed", response=self.response))
        self._closed = True
        if self.on_complete is not None:
            self.on_complete(self.response)
        return out

    def _fail(self, error: BaseException | dict[str, Any]) -> list[bytes]:
        self.response["status"] = "failed"
        self.response["error"] = failure(error)
        self._closed = True
        return [self._emit("response.failed", response=self.response)]
