"""The real tiny model fills in API arguments under the grammar built from an operation's
``arguments_schema``, and every result, tidied, validates against its ``validation_schema``.

The HR document has what small models get wrong without a grammar: a bounded
integer path parameter, enum and nullable query parameters, optional parameters
and a nested JSON body with required fields. Only properties are checked (it
parses, it validates, required fields are there), never which values the
model chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from enclave.apps.calls import call_operation
from enclave.apps.openapi import Operation, load_operations, tidy_arguments
from enclave.apps.runner import arguments_prompt
from enclave.providers.base import (
    ChatMessage,
    Finished,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TextDelta,
)
from enclave.providers.llamacpp import LlamaCppProvider
from tests.integration.conftest import Loop

pytestmark = pytest.mark.model

HR_PATH = Path(__file__).parents[1] / "data" / "apps" / "hr-openapi.yaml"
HR = {op.tool_name: op for op in load_operations(yaml.safe_load(HR_PATH.read_text()), "hr")}

CASES = [
    ("getVacancy", "Show me vacancy 4521.", None),
    ("listVacancies", "Which vacancies are still open? At most 10.", None),
    ("listCandidates", "Who applied for vacancy 77 and is at the interview stage?", None),
    ("deleteVacancy", "Delete vacancy 12, it was filled.", None),
    (
        "createVacancy",
        "Create a vacancy for a welder in Operations, 40 hours a week, "
        "on a temporary contract of 6 months, starting 2025-03-01.",
        None,
    ),
    ("createVacancy", "We need a part-time accountant in Finance.", 1),
    ("createVacancy", "Open a position: senior nurse, 36 hours.", 2),
    ("listCandidates", "Candidates for vacancy 3 please.", 3),
]


def arguments_request(operation: Operation, prompt: str, seed: int | None) -> GenerationRequest:
    """The app runner's argument step: its system prompt, under the arguments grammar."""
    system = arguments_prompt(operation)
    sampling = (
        SamplingParams(temperature=0, max_tokens=300)
        if seed is None
        else SamplingParams(temperature=1.0, seed=seed, max_tokens=300)
    )
    return GenerationRequest(
        model="smollm2-135m",
        messages=(ChatMessage("system", system), ChatMessage("user", prompt)),
        sampling=sampling,
        response_format=ResponseFormat("json_schema", operation.arguments_schema),
    )


async def generate(provider: LlamaCppProvider, request: GenerationRequest) -> tuple[str, Finished]:
    stream = await provider.generate(request)
    text, finished = "", None
    async for event in stream:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finished):
            finished = event
    assert finished is not None
    return text, finished


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("tool", "prompt", "seed"), CASES)
def test_generated_arguments_validate(
    loop: Loop, llama: LlamaCppProvider, tool: str, prompt: str, seed: int | None
) -> None:
    operation = HR[tool]
    text, finished = loop.run(generate(llama, arguments_request(operation, prompt, seed)))
    assert finished.finish_reason == "stop", text
    generated = json.loads(text)
    jsonschema.validate(generated, operation.arguments_schema)  # what the grammar promises
    arguments = tidy_arguments(operation, generated)
    jsonschema.validate(arguments, operation.validation_schema)  # what the API asks for
    for name in operation.validation_schema.get("required", []):
        assert name in arguments
    if "body" in arguments:
        assert isinstance(arguments["body"].get("title"), str)


def test_generated_arguments_make_a_call(loop: Loop, llama: LlamaCppProvider) -> None:
    """From the model's text to the request the API receives, without a human in between."""
    import httpx

    operation = HR["getVacancy"]
    text, _ = loop.run(generate(llama, arguments_request(operation, "Open vacancy 31.", None)))
    arguments = json.loads(text)
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": arguments["id"], "title": "Welder"})

    async def go() -> int | None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as client:
            result = await call_operation(
                operation,
                arguments,
                base_url="http://hr.test/api",
                headers={},
                timeout_s=5,
                max_bytes=10_000,
                client=client,
            )
        return result.status

    assert loop.run(go()) == 200
    assert seen[0].url.path == f"/api/vacancies/{arguments['id']}"
