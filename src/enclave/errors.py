"""Every error Enclave raises on purpose, in one tree.

Each class carries the HTTP status and the OpenAI ``type`` it maps to, so the
one translator in :mod:`enclave.api.errors` can render it on ``/v1`` in the
OpenAI shape and on ``/api`` in the platform shape without a lookup table::

    EnclaveError                      500  server_error
    ├── InvalidRequest                400  invalid_request_error
    ├── AuthenticationFailed          401  authentication_error
    ├── PermissionDenied              403  permission_error
    │   └── PolicyDenied              403  policy_error / no_eligible_provider
    ├── NotFound                      404  not_found_error
    │   └── ModelNotFound             404  not_found_error / model_not_found
    ├── PayloadTooLarge               413  invalid_request_error
    ├── RateLimited                   429  rate_limit_error  (+ Retry-After)
    │   └── QueueFull                 429  rate_limit_error / queue_full
    ├── ProviderError                 502  provider_error
    │   └── UpstreamUnavailable       502  provider_error / upstream_unavailable
    └── ServiceUnavailable            503  server_error
    ConfigError                       (start-up only, never reaches HTTP)

Anything else that escapes a route is an internal error: the client sees a
generic 500 message, the traceback goes to the server log only.
"""

from __future__ import annotations

from typing import Any


class EnclaveError(Exception):
    """Root of the product's errors. ``message`` is safe to show to clients."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class InvalidRequest(EnclaveError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(EnclaveError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(EnclaveError):
    status_code = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class PolicyDenied(PermissionDenied):
    """No provider cleared for the request's classification can take it (fail closed)."""

    error_type = "policy_error"
    default_code = "no_eligible_provider"


class NotFound(EnclaveError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


def shorten(text: str, limit: int = 80) -> str:
    """A client's text as it may be quoted back in a message: at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{shorten(model)}' does not exist. "
            "GET /v1/models lists the available models.",
            param="model",
        )


class Conflict(EnclaveError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(EnclaveError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(EnclaveError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(message, code=code, headers={"Retry-After": str(seconds)})
        self.retry_after = seconds


class QueueFull(RateLimited):
    default_code = "queue_full"


class ProviderError(EnclaveError):
    status_code = 502
    error_type = "provider_error"
    default_code = "provider_error"


class UpstreamUnavailable(ProviderError):
    """An upstream could not take the request; another eligible provider may."""

    default_code = "upstream_unavailable"


class ServiceUnavailable(EnclaveError):
    status_code = 503
    error_type = "server_error"
    default_code = "unavailable"


class ConfigError(Exception):
    """A configuration problem found at start-up; the message names field and line."""


def error_body(error: EnclaveError, path: str) -> dict[str, Any]:
    """The error in OpenAI's shape on ``/v1``, else in the platform shape (both in
    :mod:`enclave.api.errors`' docstring); streams send the same body as an event."""
    if path.startswith("/v1"):
        return {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": error.param,
                "code": error.code,
            }
        }
    body: dict[str, Any] = {
        "status": error.status_code,
        "code": error.code,
        "message": error.message,
    }
    if error.param:
        body["param"] = error.param
    return {"error": body}
