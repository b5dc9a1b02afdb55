"""SCIM 2.0 provisioning (RFC 7643/7644): what ``/scim/v2`` serves, and who may call it.

The protocol is scim2-server's (``ScimService`` and ``ScimHandler``, framework
free) over scim2-models: they parse and check requests, filters (``userName eq
"..."``, ``externalId eq "..."`` and the rest of RFC 7644 §3.4.2.2), PATCH
operations (add, replace, remove, with value filters such as Entra's
``members[value eq "7"]``), paging and ETags, and write ListResponse and Error
bodies. :class:`~enclave.auth.directory.Directory` keeps the resources in the
database. This module describes the service (Users with the enterprise
extension, Groups; PATCH, filters and ETags, no bulk, sorting or password
changes) and checks the caller.

The caller is the identity provider's SCIM client with the one bearer token of
``identity.scim.token``. Only its SHA-256 is kept, and a presented token is
compared with it in constant time; the token is never logged. ``/scim/v2``
accepts nothing else (no API key, no session), and no other route accepts the
token, because it is not an API key. The discovery endpoints need it too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    EnterpriseUser,
    ETag,
    Filter,
    Group,
    Patch,
    PreconditionFailedException,
    ResourceType,
    SCIMException,
    ScimProvider,
    ServiceProviderConfig,
    Sort,
    User,
)
from scim2_server.handler import ScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from scim2_server.service import ScimService

from enclave.auth.directory import Directory

log = logging.getLogger(__name__)

SCIM_PATH = "/scim/v2"
# The most resources one page of a search returns (ServiceProviderConfig filter.maxResults).
MAX_RESULTS = 200
# Attempts at a change that raced another replica's write to the same resource.
RETRIES = 5


def scim_provider() -> ScimProvider:
    """What Enclave serves: its resource types, their schemas, its capabilities."""
    config = ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="Bearer token",
                description="The token of identity.scim.token: 'Authorization: Bearer <token>'.",
                primary=True,
            )
        ],
    )
    return ScimProvider(
        models=[User, EnterpriseUser, Group],
        resource_types=[
            ResourceType.from_resource(User[EnterpriseUser]),
            ResourceType.from_resource(Group),
        ],
        config=config,
    )


class Provisioning:
    """Serves SCIM requests from the provider's client, once its token is checked."""

    def __init__(self, directory: Directory, token: str, base_url: str) -> None:
        self.directory = directory
        self.service = ScimService(scim_provider())
        self.handler = ScimHandler(self.service, directory)
        self.base_url = base_url.rstrip("/") + SCIM_PATH
        self._token_hash = hashlib.sha256(token.encode()).digest()

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the SCIM token (constant time)."""
        scheme, _, token = (authorization or "").partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        return hmac.compare_digest(presented, self._token_hash) and scheme.lower() == "bearer"

    def serve(self, request: ScimRequest) -> ScimResponse:
        """The response to an authenticated request (blocking: the database is read).

        A change reads the resource, applies the operation and writes it only if
        the resource is still the version it read (``Directory`` locks the row).
        When another replica wrote in between, a request that did not ask for a
        version itself (no ``If-Match``) is read and applied again, up to
        :data:`RETRIES` times, so two member changes racing at two replicas both
        count and a removal is never undone by a stale read.
        """
        conditional = request.header("If-Match") is not None
        for attempt in range(1, RETRIES + 1):
            try:
                return self.handler.handle(request)
            except PreconditionFailedException as exc:
                if conditional or attempt == RETRIES:
                    return self._error(request, exc)
                log.info(
                    "scim: %s %s raced another change; applying it again (%d)",
                    request.method,
                    request.path[:100],
                    attempt,
                )
            except Exception as exc:
                return self._error(request, exc)
        raise AssertionError("unreachable")

    def _error(self, request: ScimRequest, exc: Exception) -> ScimResponse:
        if isinstance(exc, SCIMException):  # the client's error, or something not supported
            log.info("scim: %s %s: %s %s", request.method, request.path[:100], exc.status, exc)
            return self.service.error_response(exc)
        log.error("scim: %s %s failed", request.method, request.path[:100], exc_info=exc)
        return self.service.error_response(exc)

    def refuse(self, error: SCIMException) -> ScimResponse:
        """A SCIM Error response (401 carries ``WWW-Authenticate: Bearer``)."""
        return self.service.error_response(error)
