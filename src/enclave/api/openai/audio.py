"""``/v1/audio/transcriptions`` and ``/v1/audio/translations``: speech to text, OpenAI's shape.

The route parses the multipart form (``file``, ``model``, ``language``,
``prompt``, ``response_format``, ``temperature``, ``timestamp_granularities[]``)
and hands the audio to :meth:`enclave.gateway.service.Gateway.transcribe`,
which runs it on an embedded engine, classifies and audits the transcript.
A file over ``audio.max_file_bytes`` is 413; one that is not audio is 400.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.responses import Response

from enclave.api.deps import Services, require_principal, services
from enclave.auth.principals import Principal
from enclave.errors import InvalidRequest, PayloadTooLarge
from enclave.gateway.classification import CLASSIFICATION_HEADER
from enclave.input_limits import check_text
from enclave.wire.audio import TranscriptionRequest, render

router = APIRouter(prefix="/v1/audio", dependencies=[Depends(require_principal)])

# Audio uploads get audio.max_file_bytes instead of max_body_bytes (see create_app).
AUDIO_PATH = re.compile(r"^/v1/audio/(transcriptions|translations)/?$")
FORM_FIELDS = ("model", "language", "prompt", "response_format", "temperature")


def _read(upload: UploadFile, limit: int) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The audio file is larger than the limit of {limit} bytes (audio.max_file_bytes).",
            param="file",
        )
    return data


async def _transcribe(
    request: Request,
    principal: Principal,
    svc: Services,
    task: Literal["transcribe", "translate"],
) -> Response:
    form = await request.form(max_files=1)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Send the audio as a multipart 'file' field.", param="file")
        fields: dict[str, Any] = {
            name: form[name] for name in FORM_FIELDS if isinstance(form.get(name), str)
        }
        granularities = form.getlist("timestamp_granularities[]") or form.getlist(
            "timestamp_granularities"
        )
        if granularities:
            fields["timestamp_granularities"] = granularities
        try:
            wire = TranscriptionRequest.model_validate(fields)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            ) from None
        limits = svc.settings.input_limits
        check_text(wire.model, "model", limits.max_model_name_chars, "max_model_name_chars")
        audio = _read(upload, svc.settings.audio.max_file_bytes)
    finally:
        await form.close()
    request.state.model = wire.model
    transcript, headers = await svc.gateway.transcribe(
        principal,
        wire.model,
        audio,
        wire.to_options(task),
        classification_header=request.headers.get(CLASSIFICATION_HEADER),
    )
    body, media_type = render(
        transcript, wire.response_format, task, list(wire.timestamp_granularities)
    )
    return Response(body, 200, headers=headers, media_type=media_type)


@router.post("/transcriptions", summary="Transcribe audio")
async def create_transcription(
    request: Request,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> Response:
    """Speech to text in the spoken language (multipart form, as OpenAI's)."""
    return await _transcribe(request, principal, svc, "transcribe")


@router.post("/translations", summary="Translate audio into English")
async def create_translation(
    request: Request,
    principal: Principal = Depends(require_principal),
    svc: Services = Depends(services),
) -> Response:
    """Speech in any language to English text (multipart form, as OpenAI's)."""
    return await _transcribe(request, principal, svc, "translate")
