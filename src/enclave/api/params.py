"""Shared parameter types of the HTTP API: every integer a client sends fits 64 bits.

SQLite and Postgres store integers in 64 bits; a larger one used to reach
the database and fail there with a 500. Path, query and body integers use
these types instead of a bare ``int``, so anything out of range is a 400
before a route runs. ``tests/unit/test_input_limits.py`` walks the OpenAPI
document and fails on any integer parameter without these bounds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query
from pydantic import Field

from enclave.api.deps import Services, services
from enclave.input_limits import INT64_MAX, INT64_MIN
from enclave.settings import InputLimitsConfig

ResourceId = Annotated[int, Path(ge=1, le=INT64_MAX, description="A numeric id.")]
"""A numeric id in a path (``/conversations/{conversation_id}``)."""

Offset = Annotated[int, Query(ge=0, le=INT64_MAX, description="Items to skip.")]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
"""Any integer in a body or query: at most 64 bits."""
PositiveInt64 = Annotated[int, Field(ge=1, le=INT64_MAX)]
PageSize = Annotated[int, Query(ge=1, le=500, description="Items per page.")]


def input_limits(svc: Services = Depends(services)) -> InputLimitsConfig:
    """The ``input_limits:`` settings, for routes that check names, titles and prompts."""
    return svc.settings.input_limits
