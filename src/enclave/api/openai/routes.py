"""``/v1``: the OpenAI-compatible API.

``GET /v1/models`` is an ordinary FastAPI route. The three token-spending
endpoints are plain Starlette endpoints on purpose: they are the gateway's
hot path, and FastAPI's per-request dependency and serialisation machinery
would cost more CPU than the rest of the gateway together. Each one
authenticates (:func:`~enclave.api.deps.authenticate_request`: the Bearer
header first, else the UI's session cookie), parses the body with the same
pydantic models, and hands a :class:`~enclave.gateway.service.Call` to the
gateway (chat through :func:`~enclave.chat.dispatch.dispatch_chat`, which
picks an app, grounded chat or the gateway).

Before the gateway sees a request its model name is bounded
(``input_limits.max_model_name_chars``, no NUL) and the JSON in tool-call
arguments is depth-checked. While the work runs, the client's connection is
watched: when it goes, the work is cancelled (queued generations and
embedding batches are dropped) instead of running on for nobody.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from enclave.api.deps import Services, authenticate, require_principal, services
from enclave.apps.service import parse_model_id
from enclave.auth.principals import Principal
from enclave.chat.dispatch import dispatch_chat
from enclave.errors import InvalidRequest, ModelNotFound
from enclave.gateway.classification import CLASSIFICATION_HEADER
from enclave.gateway.service import SSE_HEADERS, Answer, Call, Wire
from enclave.input_limits import check_json_depth, check_text
from enclave.settings import InputLimitsConfig
from enclave.wire.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from enclave.wire.responses_api import ResponsesRequest

router = APIRouter(prefix="/v1", dependencies=[Depends(require_principal)])


def model_object(
    model_id: str, owner: str, created: int, extras: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owner} | (
        extras or {}
    )


def model_extras(svc: Services) -> dict[str, dict[str, Any]]:
    """Per model id: what it serves (``chat``, ``embeddings``, ``transcription``) and the
    answer length a chat request without ``max_tokens`` gets (``max_tokens_default``;
    null: the engine's)."""
    defaults = {
        model.name: model.max_tokens_default
        for provider in svc.settings.providers
        for model in provider.models
    }
    extras: dict[str, dict[str, Any]] = {}
    for provider in svc.registry.providers:
        for card in provider.models():
            serves = [
                name
                for name, yes in (
                    ("chat", card.capabilities.chat),
                    ("embeddings", card.capabilities.embeddings),
                    ("transcription", card.capabilities.transcription),
                )
                if yes
            ]
            extras.setdefault(
                card.id, {"capabilities": serves, "max_tokens_default": defaults.get(card.id)}
            )
    routing = svc.gateway.routing
    for alias, qualified in routing.aliases.items():
        targets = [routing.targets[name] for name in qualified if name in routing.targets]
        if targets and targets[0].model in extras:
            extras[alias] = extras[targets[0].model]
    return extras


@router.get("/models", summary="List models")
async def list_models(
    principal: Principal = Depends(require_principal), svc: Services = Depends(services)
) -> dict[str, Any]:
    """Every model name once (served by one provider or several), the aliases, then the
    workspace's apps as ``app/<name>``. Enclave adds ``capabilities`` (``chat``,
    ``embeddings``, ``transcription``) and ``max_tokens_default`` to each model."""
    routing = svc.gateway.routing
    created = svc.started
    extras = model_extras(svc)
    data = [
        model_object(name, owner, created, extras.get(name)) for name, owner in routing.model_ids()
    ]
    if svc.apps is not None:
        apps = await asyncio.to_thread(svc.apps.list_apps, principal.workspace_id)
        data += [
            model_object(app["model_id"], "app", created, {"capabilities": ["chat"]})
            for app in apps
        ]
    return {"object": "list", "data": data}


@router.get("/models/{model_id:path}", summary="Describe a model")
async def get_model(
    model_id: str,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    for name, owner in svc.gateway.routing.model_ids():
        if name == model_id:
            return model_object(name, owner, svc.started, model_extras(svc).get(name))
    app = parse_model_id(model_id)
    if app is not None and svc.apps is not None:
        await asyncio.to_thread(svc.apps.load, principal.workspace_id, *app)  # 404 if absent
        return model_object(model_id, "app", svc.started, {"capabilities": ["chat"]})
    target = svc.gateway.routing.targets.get(model_id)
    if target is not None:
        return model_object(target.model, target.provider, svc.started)
    raise ModelNotFound(model_id)


Parsed = TypeVar("Parsed", bound=BaseModel)


def _parse(raw: bytes, model: type[Parsed]) -> tuple[dict[str, Any], Parsed]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return body, model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def check_wire(wire: Wire, limits: InputLimitsConfig) -> None:
    """Bounds the gateway relies on: a short model name, shallow tool-call arguments."""
    check_text(wire.model, "model", limits.max_model_name_chars, "max_model_name_chars")
    if isinstance(wire, ChatCompletionRequest):
        for message in wire.messages:
            for call in message.tool_calls or ():
                check_json_depth(call.function.arguments, limits.max_json_depth, param="messages")


def http_response(request: Request, answer: Answer) -> Response:
    """The HTTP response for the gateway's answer: a body, or an SSE stream."""
    request.state.model = answer.headers.get("x-enclave-model", "none")  # metrics label
    if answer.stream is not None:
        return StreamingResponse(
            answer.stream,
            status_code=answer.status,
            media_type=answer.media_type,
            headers={**SSE_HEADERS, **answer.headers},
        )
    return Response(
        answer.body, answer.status, headers=answer.headers, media_type=answer.media_type
    )


def _endpoint(capability: str, model: type[Wire]) -> Any:
    async def endpoint(request: Request) -> Response:
        svc: Services = request.app.state.services
        request.scope["route"] = ROUTES[request.scope["path"]]  # for the metrics' route label
        principal = await authenticate(request, svc)
        request.state.principal = principal
        body, wire = _parse(await request.body(), model)
        check_wire(wire, svc.settings.input_limits)
        call = Call(
            capability=capability,
            principal=principal,
            body=body,
            wire=wire,
            classification_header=request.headers.get(CLASSIFICATION_HEADER),
            received=request.state.received,
        )
        if capability == "chat":
            answer = await dispatch_chat(svc, call)
        else:
            answer = await svc.gateway.handle(call)
        return http_response(request, answer)

    endpoint.__name__ = f"{capability}_endpoint"
    return endpoint


async def responses_endpoint(request: Request) -> Response:
    """``POST /v1/responses``: translated into a chat call (``chat/responses.py``)."""
    svc: Services = request.app.state.services
    request.scope["route"] = ROUTES[request.scope["path"]]
    principal = await authenticate(request, svc)
    request.state.principal = principal
    _, wire = _parse(await request.body(), ResponsesRequest)
    limits = svc.settings.input_limits
    check_text(wire.model, "model", limits.max_model_name_chars, "max_model_name_chars")
    call, conversation = await svc.responses.chat_call(
        principal,
        wire,
        classification_header=request.headers.get(CLASSIFICATION_HEADER),
        received=request.state.received,
    )
    check_wire(call.wire, limits)
    answer = await svc.responses.answer(svc, call, wire, conversation)
    return http_response(request, answer)


@router.get("/responses/{response_id}", summary="Retrieve a stored response")
async def get_response(
    response_id: str,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    """A response created with ``store`` (the default) by this key; 404 otherwise."""
    return await svc.responses.retrieve(principal, response_id)


routes = [
    Route("/v1/chat/completions", _endpoint("chat", ChatCompletionRequest), methods=["POST"]),
    Route("/v1/responses", responses_endpoint, methods=["POST"]),
    Route("/v1/completions", _endpoint("completion", CompletionRequest), methods=["POST"]),
    Route("/v1/embeddings", _endpoint("embeddings", EmbeddingRequest), methods=["POST"]),
]
ROUTES = {route.path: route for route in routes}


class GatewayFastPath:
    """ASGI middleware that serves the token-spending endpoints without FastAPI's stack.

    It sits inside the body-limit and metrics middleware and hands a request
    for one of :data:`routes` straight to its endpoint, skipping FastAPI's
    exception, exit-stack and routing layers (about a third of the gateway's
    CPU per request). Errors go through the app's own exception handlers, so
    responses are exactly those of the routed path. Everything else passes on.
    """

    def __init__(self, app: ASGIApp, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.fastapi_app
        request = Request(scope, receive)
        try:
            await request.body()  # read first: after it, receive() only reports a disconnect
            response = await _unless_disconnected(route.endpoint(request), receive)
        except Exception as exc:
            response = await self._handle_error(request, exc)
        if response is not None:
            await response(scope, receive, send)

    async def _handle_error(self, request: Request, exc: Exception) -> Response:
        handlers = self.fastapi_app.exception_handlers
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                response: Response = await handler(request, exc)
                return response
        raise exc


async def _unless_disconnected(
    work: Coroutine[Any, Any, Response], receive: Receive
) -> Response | None:
    """Run ``work``; cancel it and return ``None`` if the client disconnects first.

    Called once the body has been read, so the only message ``receive`` can still
    deliver is ``http.disconnect``. A streamed answer is watched by Starlette's
    ``StreamingResponse`` from there on.
    """

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server itself is cancelling this request
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()  # the endpoint's own errors are raised here
    task.cancel()
    await asyncio.wait((task,))  # let it unwind: queued work is dropped, slots freed
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it
    return None
