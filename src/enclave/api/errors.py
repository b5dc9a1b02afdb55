"""The one translator from errors to HTTP responses.

On ``/v1`` errors take OpenAI's shape, which the official clients parse::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": null}}

Everywhere else (``/api``, ``/metrics``) they take the platform shape::

    {"error": {"status": 404, "code": "not_found", "message": "..."}}

Unexpected exceptions become a generic 500; the traceback goes to the log,
never to the client.

A path that matches no route but would match with its trailing slash added or
removed is redirected (307). The ``Location`` is built from the configured
``public_url`` (or is a bare path), never from the request's ``Host`` header.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.routing import Match

from enclave.errors import (
    AuthenticationFailed,
    EnclaveError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    error_body,
)

log = logging.getLogger(__name__)

_STATUS_ERRORS: dict[int, type[EnclaveError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    404: NotFound,
    413: PayloadTooLarge,
}


def error_response(error: EnclaveError, path: str) -> JSONResponse:
    headers = dict(error.headers)
    if error.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error_body(error, path), status_code=error.status_code, headers=headers)


# Parts of a pydantic error location that name a union member, not a field.
_UNION_TAG = re.compile(r"[\[\]'\-]|^[A-Z]|^(str|int|float|bool|list|dict|none)$")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = [
        str(part)
        for part in first.get("loc", ())
        if part != "body" and not (isinstance(part, str) and _UNION_TAG.search(part))
    ]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing" and loc:
        return f"Missing required parameter: '{'.'.join(loc)}'.", loc[0]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if loc:
        return f"Invalid parameter '{'.'.join(loc)}': {message}.", loc[0]
    return f"Invalid request: {message}.", None


def slash_redirect(request: Request, public_url: str | None) -> str | None:
    """Where a request for an unrouted path should go: the same path with its
    trailing slash toggled, if that matches a route; ``None`` otherwise."""
    path = request.scope["path"]
    if path == "/" or "//" in path:
        return None
    routes = request.app.router.routes
    if any(route.matches(request.scope)[0] != Match.NONE for route in routes):
        return None  # routed, and the route itself said 404
    other = {**request.scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
    if not any(route.matches(other)[0] != Match.NONE for route in routes):
        return None
    query = request.scope.get("query_string", b"").decode("latin-1")
    location = (public_url or "") + str(request.scope.get("root_path", "")) + other["path"]
    return f"{location}?{query}" if query else location


def install_error_handlers(app: FastAPI, *, public_url: str | None = None) -> None:
    @app.exception_handler(EnclaveError)
    async def _enclave(request: Request, exc: EnclaveError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(InvalidRequest(message, param=param), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            location = slash_redirect(request, public_url)
            if location is not None:
                return RedirectResponse(location, status_code=307)
        kind = _STATUS_ERRORS.get(exc.status_code, EnclaveError)
        error = kind(str(exc.detail))
        error.status_code = exc.status_code
        if exc.status_code == 404:
            error = NotFound(f"No route {request.method} {request.url.path}.")
        elif exc.status_code == 405:
            error.error_type, error.code = "invalid_request_error", "method_not_allowed"
        return error_response(error, request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        error = EnclaveError("Internal server error. The details are in the server log.")
        return error_response(error, request.url.path)
