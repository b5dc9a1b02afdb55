"""A fast, scriptable OpenAI-compatible upstream for tests and benchmarks.

The server is hand-written HTTP/1.1 on a raw ``asyncio.Protocol`` (uvloop's
loop when it is importable, never required): keep-alive, pipelined requests
and ``Content-Length`` bodies, nothing more. Chunked request bodies are not
supported. The gateway it stands in front of must add less than 2 ms per
request, so the mock has to cost far less than that. Responses are assembled
from byte templates that are cached per (endpoint, model, chunk count). A
request costs one ``orjson.loads`` of its body, plus one ``orjson.dumps``
for non-streamed or embedding answers. No JSON is encoded per stream chunk.

Endpoints (``/v1`` prefix optional):

``POST /v1/chat/completions`` and ``POST /v1/completions``
    K one-token pieces ``"tok0 "``, ``"tok1 "``, ... Non-streamed answers
    carry their concatenation. Streamed answers are ``text/event-stream`` in
    ``Transfer-Encoding: chunked``: K chunks (the last has
    ``finish_reason: "stop"``), then a usage chunk with ``"choices": []`` if
    the request asked for ``stream_options.include_usage``, then
    ``data: [DONE]``. ``prompt_tokens`` is the number of whitespace-separated
    words in the prompt (all message contents), at least 1.
    ``completion_tokens`` is K. A server made with a fixed ``reply`` (the
    ``--reply`` option) answers that text instead, split after each space
    into pieces ("Here ", "is ", ...), so K is the number of pieces and
    ``x-mock-chunks`` has no effect.
``POST /v1/embeddings``
    One deterministic unit vector per input, derived from the input's text.
    ``encoding_format: "base64"`` (what the ``openai`` client sends by
    default) returns little-endian float32.
``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``

Responses echo the request's ``model``. The number of chunks K and the delay
before each chunk come from the server's settings. A request can override
them with the ``x-mock-chunks`` and ``x-mock-delay`` headers. A non-streamed
answer waits K times the delay.

Tests steer failures through attributes that they may set at any time, from
the server's loop or from another thread. They are checked in this order:

``fail_status``
    Answer every request with this status and an OpenAI-shaped error body.
``die_before_headers``
    Close the connection after reading a request, sending nothing.
``die_after_chunks``
    For streams, send the headers and this many content chunks, then abort
    the connection: no terminating chunk, no usage chunk, no ``[DONE]``.

Every request is recorded in ``requests`` before any failure control acts
(unless the server was made with ``record=False``, as the command line does),
so a test can assert exactly what reached the upstream, and
``connections_accepted`` counts TCP connections (to check pooling).
``reset()`` clears the log, the count and the controls.
``running_mock_upstream()`` runs a server on its own loop in a background
thread for synchronous tests and for subprocess servers.
``python -m enclave.testing.mock_upstream`` serves until it is interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import math
import re
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

__all__ = ["MockRequest", "MockUpstream", "main", "running_mock_upstream"]

_MAX_HEAD = 64 * 1024
_TEMPLATE_CACHE_LIMIT = 1024

_REASONS: dict[int, bytes] = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
)
_DONE = b"data: [DONE]\n\n"
_FRAMED_DONE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_DONE), _DONE)
_USAGE = b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
_HEALTH = b'{"status":"ok"}'


@dataclass(slots=True)
class MockRequest:
    """One request as the upstream received it.

    ``headers`` has lower-cased names. ``body`` is the parsed JSON body, or
    None when there was no body or it was not JSON. ``raw`` is the body's
    bytes either way.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes = b""


class _BadRequest(Exception):
    pass


def _token(i: int) -> str:
    return f"tok{i} "


def _reply_pieces(reply: str) -> list[str]:
    """A fixed reply as stream pieces: split after each space, spaces kept."""
    return [piece for piece in re.split(r"(?<= )", reply) if piece] or [reply]


def _frame(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error_body(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def _count_words(value: Any) -> int:
    """Words in a prompt: strings, content parts, token arrays, or lists of them."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, dict):
        return _count_words(value.get("text"))
    return 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        words = sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
    else:
        words = _count_words(body.get("prompt"))
    return max(1, words)


def _embedding(text: str, dim: int) -> list[float]:
    """A unit vector that depends only on ``text`` and ``dim``."""
    digest = hashlib.shake_128(text.encode()).digest(2 * dim)
    raw = [u / 32767.5 - 1.0 for u in struct.unpack(f"<{dim}H", digest)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


@dataclass(slots=True)
class _Templates:
    """Everything about an answer that depends only on (endpoint, model, K)."""

    stream_chunks: list[bytes]  # HTTP-framed SSE events, one per token
    stream_all: bytes  # the same, joined
    usage_head: bytes  # an SSE usage event up to its "usage" member
    body_head: bytes  # a non-streamed body up to its "usage" member


def _build_templates(chat: bool, model: str, pieces: Sequence[str]) -> _Templates:
    created = int(time.time())
    if chat:
        ident, obj, chunk_obj = "chatcmpl-mock", "chat.completion", "chat.completion.chunk"
    else:
        ident, obj, chunk_obj = "cmpl-mock", "text_completion", "text_completion"
    base = {"id": ident, "object": chunk_obj, "created": created, "model": model}
    if chat:
        base["system_fingerprint"] = "fp_mock"
    chunks = []
    k = len(pieces)
    for i, piece in enumerate(pieces):
        finish = "stop" if i == k - 1 else None
        choice: dict[str, Any]
        if chat:
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        event = b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
        chunks.append(_frame(event))
    # Drop the closing brace so the per-request usage member can follow.
    usage_head = b"data: " + orjson.dumps({**base, "choices": []})[:-1] + b","
    text = "".join(pieces)
    if chat:
        answer: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": "stop",
        }
    else:
        answer = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
    body = {**base, "object": obj, "choices": [answer]}
    return _Templates(
        stream_chunks=chunks,
        stream_all=b"".join(chunks),
        usage_head=usage_head,
        body_head=orjson.dumps(body)[:-1] + b",",
    )


class MockUpstream:
    """An OpenAI-compatible HTTP server with scripted answers and failures."""

    def __init__(
        self,
        *,
        models: Sequence[str] = ("mock",),
        chunks: int = 20,
        delay: float = 0.0,
        embedding_dim: int = 8,
        record: bool = True,
        reply: str | None = None,
    ) -> None:
        if not models:
            raise ValueError("models must name at least one model")
        if chunks < 1:
            raise ValueError("chunks must be at least 1")
        if delay < 0:
            raise ValueError("delay must not be negative")
        if embedding_dim < 1:
            raise ValueError("embedding_dim must be at least 1")
        self.models = list(models)
        self.chunks = chunks
        self.delay = delay
        self.embedding_dim = embedding_dim
        # A fixed answer (e.g. hostile Markdown for the UI's rendering tests).
        self.reply = reply
        # A server that runs for a whole benchmark turns this off: nobody reads
        # its log, and a million records would be a gigabyte.
        self.record = record
        self.requests: list[MockRequest] = []
        self.fail_status: int | None = None
        self.die_before_headers = False
        self.die_after_chunks: int | None = None
        self.connections_accepted = 0
        self._host = "127.0.0.1"
        self._port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._templates: dict[tuple[bool, str, int, str | None], _Templates] = {}
        self._models_body = orjson.dumps(
            {"object": "list", "data": [self._model_card(m) for m in self.models]}
        )

    @staticmethod
    def _model_card(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "mock"}

    # ------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._server is not None:
            raise RuntimeError("mock upstream already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, backlog=4096
        )
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            conn.shut()
        await server.wait_closed()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://{self._host}:{self._port}/v1"

    def reset(self) -> None:
        """Forget logged requests and connections, and switch every failure control off."""
        self.requests.clear()
        self.fail_status = None
        self.die_before_headers = False
        self.die_after_chunks = None
        self.connections_accepted = 0

    # -------------------------------------------------------------- answers
    def _templates_for(self, chat: bool, model: str, k: int) -> _Templates:
        """The answer's templates: K tokens, or the fixed reply (K is then ignored)."""
        reply = self.reply
        key = (chat, model, 0 if reply is not None else k, reply)
        found = self._templates.get(key)
        if found is None:
            if len(self._templates) >= _TEMPLATE_CACHE_LIMIT:
                self._templates.clear()
            pieces = _reply_pieces(reply) if reply is not None else [_token(i) for i in range(k)]
            found = self._templates[key] = _build_templates(chat, model, pieces)
        return found

    def _embeddings_body(self, body: dict[str, Any], model: str) -> bytes:
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise _BadRequest("'input' must be a string or a non-empty list")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _embedding(item if isinstance(item, str) else repr(item), self.embedding_dim)
            encoded: Any = vector
            if as_base64:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = max(1, _count_words(inputs))
        return orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _model_listing(self, model: str | None) -> bytes | None:
        if model is None:
            return self._models_body
        if model in self.models:
            return orjson.dumps(self._model_card(model))
        return None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests in order and answers each."""

    __slots__ = ("buf", "busy", "closed", "server", "task", "transport")

    def __init__(self, server: MockUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # an answer that sleeps is in flight; later requests wait
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)
        self.server._connections.add(self)
        self.server.connections_accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def shut(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.process()

    # -------------------------------------------------------------- parsing
    def process(self) -> None:
        buf = self.buf
        while not self.busy and not self.closed:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self.send(400, _error_body(400, "request head too large"), keep=False)
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self.send(400, _error_body(400, "bad request line"), keep=False)
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.send(400, _error_body(400, "chunked request bodies are not supported"), False)
                return
            try:
                length = int(headers.get("content-length") or 0)
            except ValueError:
                self.send(400, _error_body(400, "bad content-length"), keep=False)
                return
            start = end + 4
            if len(buf) < start + length:
                return
            raw = bytes(buf[start : start + length])
            del buf[: start + length]
            keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            self.handle(method, target.partition("?")[0], headers, raw, keep)

    # ------------------------------------------------------------- writing
    def send(
        self, status: int, body: bytes, keep: bool, content_type: bytes = b"application/json"
    ) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (
                status,
                _REASONS.get(status, b"Status"),
                content_type,
                len(body),
                b"" if keep else b"Connection: close\r\n",
                body,
            )
        )
        if not keep:
            self.closed = True
            self.transport.close()

    def later(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run an answer that sleeps; hold back pipelined requests until it ends."""
        self.busy = True
        self.task = asyncio.get_running_loop().create_task(self._run_later(work))

    async def _run_later(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        finally:
            self.task = None
            self.busy = False
            if not self.closed and self.buf:
                self.process()

    # ------------------------------------------------------------ routing
    def handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, keep: bool
    ) -> None:
        server = self.server
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        if server.record:
            server.requests.append(MockRequest(method, path, headers, body, raw))

        if server.die_before_headers:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
            return
        status = server.fail_status
        if status is not None:
            self.send(status, _error_body(status, f"mock upstream failure ({status})"), keep)
            return

        route = path[3:] if path.startswith("/v1/") else path
        try:
            if route in ("/chat/completions", "/completions"):
                if method != "POST":
                    self.send(405, _error_body(405, "use POST"), keep)
                elif not isinstance(body, dict):
                    self.send(400, _error_body(400, "body must be a JSON object"), keep)
                else:
                    self.complete(route == "/chat/completions", headers, body, keep)
            elif route == "/embeddings":
                if method != "POST":
                    self.send(405, _error_body(405, "use POST"), keep)
                elif not isinstance(body, dict):
                    self.send(400, _error_body(400, "body must be a JSON object"), keep)
                else:
                    model = str(body.get("model") or server.models[0])
                    self.send(200, server._embeddings_body(body, model), keep)
            elif route == "/models" or route.startswith("/models/"):
                found = server._model_listing(route[8:] or None)
                if found is None:
                    self.send(404, _error_body(404, "model not found"), keep)
                else:
                    self.send(200, found, keep)
            elif route == "/health":
                self.send(200, _HEALTH, keep)
            else:
                self.send(404, _error_body(404, f"no route for {method} {path}"), keep)
        except _BadRequest as exc:
            self.send(400, _error_body(400, str(exc)), keep)

    def complete(
        self, chat: bool, headers: dict[str, str], body: dict[str, Any], keep: bool
    ) -> None:
        server = self.server
        k, delay = server.chunks, server.delay
        try:
            if "x-mock-chunks" in headers:
                k = max(1, int(headers["x-mock-chunks"]))
            if "x-mock-delay" in headers:
                delay = max(0.0, float(headers["x-mock-delay"]))
        except ValueError as exc:
            raise _BadRequest(f"bad x-mock-* header: {exc}") from None
        model = str(body.get("model") or server.models[0])
        prompt = _prompt_tokens(body)
        tpl = server._templates_for(chat, model, k)
        k = len(tpl.stream_chunks)
        usage = _USAGE % (prompt, k, prompt + k)

        if not body.get("stream"):
            answer = tpl.body_head + usage
            if delay > 0:

                async def slow_answer() -> None:
                    await asyncio.sleep(delay * k)
                    if not self.closed:
                        self.send(200, answer, keep)

                self.later(slow_answer)
            else:
                self.send(200, answer, keep)
            return

        options = body.get("stream_options")
        tail = b""
        if isinstance(options, dict) and options.get("include_usage"):
            tail = _frame(tpl.usage_head + usage + b"\n\n")
        tail += _FRAMED_DONE
        head = _STREAM_HEAD + (b"\r\n" if keep else b"Connection: close\r\n\r\n")
        die_after = server.die_after_chunks
        transport = self.transport
        assert transport is not None

        if delay <= 0:
            if die_after is None:
                transport.write(head + tpl.stream_all + tail)
                if not keep:
                    self.closed = True
                    transport.close()
            else:
                transport.write(head + b"".join(tpl.stream_chunks[:die_after]))
                self.die()
            return

        async def slow_stream() -> None:
            transport.write(head)
            for i, chunk in enumerate(tpl.stream_chunks):
                if die_after is not None and i >= die_after:
                    break
                await asyncio.sleep(delay)
                if self.closed:
                    return
                transport.write(chunk)
            if die_after is not None:
                self.die()
            else:
                transport.write(tail)
                if not keep:
                    self.closed = True
                    transport.close()

        self.later(slow_stream)

    def die(self) -> None:
        """Drop the connection mid-response, as a crashing upstream would."""
        assert self.transport is not None
        self.closed = True
        # abort() discards data still queued in the transport, so fall back to a
        # close (which still never sends the terminating chunk) if any is left.
        if self.transport.get_write_buffer_size():
            self.transport.close()
        else:
            self.transport.abort()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


@contextlib.contextmanager
def running_mock_upstream(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    models: Sequence[str] = ("mock",),
    chunks: int = 20,
    delay: float = 0.0,
    embedding_dim: int = 8,
    record: bool = True,
    reply: str | None = None,
) -> Iterator[MockUpstream]:
    """Run a ``MockUpstream`` on its own event loop in a daemon thread."""
    server = MockUpstream(
        models=models,
        chunks=chunks,
        delay=delay,
        embedding_dim=embedding_dim,
        record=record,
        reply=reply,
    )
    loop = _new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mock-upstream", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(host, port), loop).result(timeout=10)
        yield server
    finally:
        try:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()


async def _serve(args: argparse.Namespace) -> None:
    server = MockUpstream(
        models=[m for m in args.models.split(",") if m] or ["mock"],
        chunks=args.chunks,
        delay=args.delay,
        embedding_dim=args.embedding_dim,
        record=False,
        reply=args.reply,
    )
    await server.start(args.host, args.port)
    print(f"mock upstream on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m enclave.testing.mock_upstream",
        description="Serve a fast mock OpenAI-compatible upstream until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="0 picks a free port")
    parser.add_argument("--chunks", type=int, default=20, help="tokens per answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each chunk")
    parser.add_argument("--models", default="mock", help="comma-separated model ids")
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument(
        "--reply", default=None, help="answer every completion with this text (split on spaces)"
    )
    args = parser.parse_args(argv)
    loop = _new_event_loop()
    try:
        loop.run_until_complete(_serve(args))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


if __name__ == "__main__":
    main(sys.argv[1:])
