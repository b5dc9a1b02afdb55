"""``/v1``: the OpenAI-compatible API. Parse, call the inference service, serialise."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from enclave.api.deps import Services, require_principal, services
from enclave.api.openai import responses
from enclave.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from enclave.auth.principals import Principal
from enclave.providers.base import ModelCard

router = APIRouter(prefix="/v1", dependencies=[Depends(require_principal)])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def model_object(card: ModelCard) -> dict[str, Any]:
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": card.provider}


@router.get("/models", summary="List models")
async def list_models(svc: Services = Depends(services)) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(card) for card in svc.inference.list_models()]}


@router.get("/models/{model_id:path}", summary="Describe a model")
async def get_model(model_id: str, svc: Services = Depends(services)) -> dict[str, Any]:
    return model_object(svc.inference.get_model(model_id))


@router.post("/chat/completions", summary="Chat completion", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> dict[str, Any] | StreamingResponse:
    generation = await svc.inference.generate(body.to_generation_request(principal.tenant))
    request.state.model = generation.card.id
    if body.stream:
        events = responses.chat_completion_events(generation, include_usage=body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    return await responses.chat_completion_body(generation)


@router.post("/completions", summary="Text completion", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> dict[str, Any] | StreamingResponse:
    prompts = body.prompts()
    generations = []
    try:
        for prompt in prompts:
            request_ = body.to_generation_request(prompt, principal.tenant)
            generations.append(await svc.inference.generate(request_))
    except BaseException:
        for generation in generations:
            await generation.aclose()
        raise
    request.state.model = generations[0].card.id
    echo = prompts if body.echo else []
    if body.stream:
        events = responses.completion_events(generations, echo, include_usage=body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    return await responses.completion_body(generations, echo)


@router.post("/embeddings", summary="Embeddings")
async def embeddings(
    body: EmbeddingRequest, request: Request, svc: Services = Depends(services)
) -> dict[str, Any]:
    card, result = await svc.inference.embed(body.model, body.inputs(), dimensions=body.dimensions)
    request.state.model = card.id
    return responses.embeddings_body(card.id, result, body.encoding_format)
