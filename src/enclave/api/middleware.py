"""Pure ASGI middleware: the body size and JSON depth limits, and per-route metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses pass through
untouched and the per-request cost stays in the microseconds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclave.errors import PayloadTooLarge, error_body
from enclave.input_limits import json_too_deep
from enclave.metrics import Metrics


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by header or while reading.

    ``larger`` gives some paths (document uploads) a limit of their own. A JSON
    body (or any body to ``/v1``, which is always read as JSON) that nests
    deeper than ``max_json_depth`` is refused with 400 once it has arrived,
    before anything parses it: recursive parsers fail on deep documents.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        larger: Sequence[tuple[re.Pattern[str], int]] = (),
        max_json_depth: int | None = None,
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.larger = tuple(larger)
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.default_max_bytes
        for pattern, bytes_allowed in self.larger:
            if pattern.match(scope["path"]):
                limit = bytes_allowed
                break
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return
        received = 0
        depth_limit = self.max_json_depth if _is_json(scope) else None
        chunks: list[bytes] = []

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > limit:
                    # FastAPI re-raises HTTPException from body reading; the
                    # error translator renders it as PayloadTooLarge.
                    raise HTTPException(413, self._message(limit))
                if depth_limit is not None:
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                        chunks.clear()
                        if json_too_deep(body, depth_limit):
                            raise HTTPException(400, _too_deep(depth_limit))
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"The request body is larger than the limit of {limit} bytes."

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        message = self._message(limit)
        body = json.dumps(error_body(PayloadTooLarge(message), scope["path"])).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Count requests and time them to the end of the body, by route and model.

    The route is the matched path template (``/v1/models/{model_id}``), so
    label cardinality stays bounded; routes set ``request.state.model``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope.setdefault("state", {})["received"] = started  # the gateway's overhead clock
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            state: dict[str, Any] = scope.get("state") or {}
            model = str(state.get("model", ""))
            self.metrics.requests.labels(scope["method"], template, model, str(status)).inc()
            self.metrics.latency.labels(template, model).observe(time.perf_counter() - started)


def _is_json(scope: Scope) -> bool:
    if scope["path"].startswith("/v1/"):
        return True
    content_type = _header(scope, b"content-type")
    return content_type is None or "json" in content_type.lower()


def _too_deep(limit: int) -> str:
    return f"The request body nests JSON deeper than {limit} levels (input_limits.max_json_depth)."


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
