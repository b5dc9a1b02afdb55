"""The OpenAPI document at ``/api/openapi.json``, as the API really behaves.

FastAPI's generated document is corrected in three ways:

* the token-spending ``/v1`` endpoints are plain Starlette routes (see
  :mod:`enclave.api.openai.routes`), so FastAPI does not see them; they are
  added here with their request bodies, taken from the same pydantic models
  that parse them;
* a request that fails validation gets 400 from the one error translator
  (:mod:`enclave.api.errors`), never FastAPI's 422, so 422 is replaced;
* every operation lists the error statuses it can answer, each with the error
  shape of its prefix: OpenAI's on ``/v1``, the platform's elsewhere.

``tests/unit/test_openapi_schema.py`` runs schemathesis against the app with
this document, so a status or shape that drifts from it fails a test.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from enclave.wire.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from enclave.wire.responses_api import ResponsesRequest

_GATEWAY: dict[str, tuple[type[BaseModel], str, bool]] = {
    "/v1/chat/completions": (ChatCompletionRequest, "Create a chat completion", True),
    "/v1/completions": (CompletionRequest, "Create a text completion", True),
    "/v1/embeddings": (EmbeddingRequest, "Create embeddings", False),
    "/v1/responses": (ResponsesRequest, "Create a model response (Responses API)", True),
}

_DESCRIPTIONS = {
    "400": "Invalid request: a parameter, the body or an input limit.",
    "401": "No valid API key.",
    "403": "The key or the data's classification does not allow this.",
    "404": "Not found.",
    "409": "Conflicts with the current state.",
    "413": "The request body is too large.",
    "429": "A rate limit, budget or queue is full (see Retry-After).",
    "502": "The provider failed.",
    "503": "The feature is not available (its model or service is off).",
}

_PLATFORM_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": ["string", "null"]},
                "message": {"type": "string"},
                "param": {"type": "string"},
            },
        }
    },
}
_OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _statuses(path: str, method: str, authenticated: bool, has_body: bool) -> list[str]:
    """The error statuses an operation can answer."""
    statuses = ["400", "404"]  # a bad parameter; a missing object (or model)
    if authenticated:
        statuses += ["401", "403"]
    if has_body or method in ("post", "put", "patch"):
        statuses.append("413")
    if path.startswith("/v1") or path.startswith("/api/conversations"):
        statuses += ["429", "502", "503"]
    if path.startswith(("/api/knowledge", "/api/apps", "/api/actions", "/api/conversations")):
        statuses += ["409", "503"]
    return sorted(set(statuses))


def _error_response(status: str, path: str) -> dict[str, Any]:
    name = "OpenAIError" if path.startswith("/v1") else "PlatformError"
    return {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
    }


def _gateway_operation(
    model: type[BaseModel], summary: str, streams: bool, schemas: dict[str, Any]
) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if streams:
        content["text/event-stream"] = {
            "schema": {"type": "string"},
            "description": "With stream: true, server-sent events ending in data: [DONE] "
            "(/v1/responses: response.* events ending in response.completed or .failed).",
        }
    return {
        "tags": ["openai"],
        "summary": summary,
        "operationId": model.__name__.removesuffix("Request").lower(),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        },
        "responses": {"200": {"description": "The OpenAI-shaped result.", "content": content}},
        "security": [{"bearer": []}],
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The corrected document (built once, then cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schemas["PlatformError"] = _PLATFORM_ERROR
    schemas["OpenAIError"] = _OPENAI_ERROR
    paths: dict[str, Any] = document.setdefault("paths", {})
    for path, (model, summary, streams) in _GATEWAY.items():
        paths[path] = {"post": _gateway_operation(model, summary, streams, schemas)}

    for path, item in paths.items():
        for method, operation in item.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            responses.pop("422", None)
            # Every /v1 and /api route needs a key (require_principal or require_admin).
            needs_key = path.startswith(("/v1/", "/api/", "/ui/")) or path == "/metrics"
            if needs_key:
                operation.setdefault("security", [{"bearer": []}])
            for status in _statuses(path, method, needs_key, "requestBody" in operation):
                responses.setdefault(status, _error_response(status, path))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = document
    return document


def install_openapi(app: FastAPI) -> None:
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
