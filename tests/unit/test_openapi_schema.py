"""The OpenAPI document against the running app, with schemathesis.

Every operation in ``/api/openapi.json`` gets generated requests (bounded: a
few examples each, no deadline per example, a whole-test time limit), sent to
the app in-process with an admin key. No answer may be a 5xx, and every answer
must be one the document declares, in the declared shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from enclave.settings import Settings
from tests.conftest import ADMIN_KEY, ScriptedApp

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Knowledge on (with the scripted embedder), so its routes answer instead of 503."""
    configured = Settings(home=tmp_path / "home", admin_key=ADMIN_KEY, max_body_bytes=64 * 1024)
    configured.knowledge.embedding_model = "scripted-words"
    return configured


MAX_EXAMPLES = 20  # per operation; with ~50 operations about 10 s in all


@pytest.mark.timeout(300)
def test_every_answer_is_documented_and_none_is_a_5xx(scripted: ScriptedApp) -> None:
    document = scripted.client.get("/api/openapi.json", headers=scripted.auth()).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 40

    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_as_documented(case: Any) -> None:
            if case.path == "/api/keys/{key_id}" and case.method == "DELETE":
                case.path_parameters = {"key_id": 10**6}  # never revoke the admin key
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=scripted.auth())
            response = scripted.client.request(**kwargs)
            case.validate_response(response, checks=CHECKS)

        try:
            answers_as_documented()
        except (Exception, BaseExceptionGroup) as exc:  # collect them all, then fail once
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)


def test_the_document_lists_the_gateway_endpoints_and_no_422(scripted: ScriptedApp) -> None:
    document = scripted.client.get("/api/openapi.json", headers=scripted.auth()).json()
    paths = document["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        operation = paths[path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].startswith("#/components/schemas/")
        assert "400" in operation["responses"] and "401" in operation["responses"]
    chat = document["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    declared = {
        status for item in paths.values() for op in item.values() for status in op["responses"]
    }
    assert "422" not in declared
    # A validation error really is a 400, as declared.
    answer = scripted.client.post("/api/keys", json={"name": 5}, headers=scripted.auth())
    assert answer.status_code == 400


def test_every_integer_parameter_is_bounded_to_64_bits(scripted: ScriptedApp) -> None:
    document = scripted.client.get("/api/openapi.json", headers=scripted.auth()).json()
    unbounded = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                options = schema.get("anyOf", [schema])
                for option in options:
                    if option.get("type") == "integer" and option.get("maximum", 2**64) > 2**63 - 1:
                        unbounded.append(f"{method.upper()} {path} {parameter['name']}")
    assert not unbounded, f"integer parameters without a 64-bit bound: {unbounded}"
