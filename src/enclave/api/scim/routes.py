"""``/scim/v2``: SCIM 2.0 provisioning for the identity provider (``identity.scim``).

Mounted only when ``identity.scim`` is configured (otherwise every path here is a
404). The route only translates: it checks the SCIM token before reading
anything, reads the body (at most :data:`MAX_BODY_BYTES`), hands a framework-free
``ScimRequest`` to :class:`~enclave.auth.provisioning.Provisioning` on a worker
thread, and sends its ``ScimResponse`` back as ``application/scim+json``.
Every answer, errors included, is a SCIM body (``urn:ietf:params:scim:api:
messages:2.0:Error`` with ``status`` and, where RFC 7644 has one, ``scimType``),
except a body refused by the server-wide ``max_body_bytes`` before it reaches
this route. The endpoints are in ``docs/api.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from scim2_models import (
    InvalidSyntaxException,
    PayloadTooLargeException,
    SCIMException,
    UnauthorizedException,
)
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from starlette.exceptions import HTTPException

from enclave.api.deps import Services, services
from enclave.auth.provisioning import SCIM_PATH
from enclave.errors import NotFound

log = logging.getLogger(__name__)

# SCIM bodies are small (a user, a group's member changes); larger ones are refused.
MAX_BODY_BYTES = 1024 * 1024

router = APIRouter(prefix=SCIM_PATH)


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def scim(path: str, request: Request, svc: Services = Depends(services)) -> Response:
    provisioning = svc.provisioning
    if provisioning is None:
        raise NotFound("SCIM provisioning is off (identity.scim).")
    if not provisioning.accepts(request.headers.get("authorization")):
        log.info("scim: refused %s /%s: no valid SCIM token", request.method, path[:100])
        return send(provisioning.refuse(UnauthorizedException(detail="Send the SCIM token.")))
    try:
        body = await read_body(request)
    except SCIMException as exc:
        return send(provisioning.refuse(exc))
    scim_request = ScimRequest(
        method=request.method,
        base_url=provisioning.base_url,
        path="/" + path,
        query=dict(request.query_params),
        headers=list(request.headers.items()),
        body=body,
    )
    return send(await asyncio.to_thread(provisioning.serve, scim_request))


async def read_body(request: Request) -> bytes:
    """The body, or a SCIM error: too large (413), or JSON nested too deep (400)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLargeException(
                    detail=f"The request body is larger than {MAX_BODY_BYTES} bytes."
                )
            chunks.append(chunk)
    except HTTPException as exc:  # BodyLimitMiddleware: max_body_bytes, JSON depth
        error = PayloadTooLargeException if exc.status_code == 413 else InvalidSyntaxException
        raise error(detail=str(exc.detail)) from None
    return b"".join(chunks)


def send(response: ScimResponse) -> Response:
    content = b"" if response.body is None else json.dumps(response.body).encode()
    return Response(content, status_code=int(response.status), headers=response.headers)
