"""Checks of one answer against a step's ``expect``: pure functions, no server.

:func:`check` returns failure messages, empty when every listed check holds.
Each message says what was expected and what the answer had instead, so a
report is readable without re-running the test.

* ``contains`` / ``not_contains``: case-insensitive substrings of the content.
* ``regex``: ``re.search`` on the content (add ``(?i)`` for case-insensitive).
* ``json_schema``: the whole content parsed as JSON and validated.
* ``called`` / ``not_called``: executed tool calls (``app.tool_calls``), by API,
  operation (``'METHOD /path'`` or the operationId) and a subset of the
  arguments. ``GET /vacancies/12`` also names a call of ``GET /vacancies/{id}``
  whose ``id`` argument is 12. An action still waiting for confirmation is not a call; check
  it with ``pending``.
* ``cites``: a document name among the citations (the whole name, or its
  last path parts: ``leave.md`` matches ``policies/leave.md``).
* ``abstains``: ``grounding.abstained``; an answer without grounding did not abstain.

``judge`` needs the server and lives in :mod:`enclave.apps.evals.judge`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import jsonschema.exceptions

from enclave.apps.spec import CallExpectation, Expectation

__all__ = ["StepAnswer", "call_matches", "check", "describe_call"]

_SHOWN = 200  # characters of the answer quoted in a failure message
_PLACEHOLDER = re.compile(r"\{([^{}/]+)\}")


@dataclass(slots=True)
class StepAnswer:
    """What an app answered in one step, taken from the chat completion's JSON."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    pending_action: dict[str, Any] | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    abstained: bool = False

    @classmethod
    def from_chat(cls, data: dict[str, Any]) -> StepAnswer:
        """Read a ``/v1/chat/completions`` answer with Enclave's ``app``/``citations`` fields."""
        choices = data.get("choices") or [{}]
        message = choices[0].get("message") or {}
        app = data.get("app") or {}
        grounding = data.get("grounding") or {}
        return cls(
            content=message.get("content") or "",
            tool_calls=list(app.get("tool_calls") or []),
            pending_action=app.get("pending_action"),
            citations=list(data.get("citations") or []),
            abstained=bool(grounding.get("abstained")),
        )


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


def _same_operation(expected: str, call: dict[str, Any]) -> bool:
    if expected == call.get("operation_id"):
        return True
    method, _, path = expected.strip().partition(" ")
    actual_method, _, actual_path = str(call.get("operation") or "").partition(" ")
    if not path or method.upper() != actual_method.upper():
        return False
    path, actual_path = path.rstrip("/") or "/", actual_path.rstrip("/") or "/"
    if path == actual_path:
        return True
    # 'GET /vacancies/12' names the call of 'GET /vacancies/{id}' with id 12.
    arguments = call.get("arguments") or {}
    resolved = _PLACEHOLDER.sub(
        lambda match: str(arguments.get(match.group(1), match.group(0))), actual_path
    )
    return path == resolved


def call_matches(expected: CallExpectation, call: dict[str, Any]) -> bool:
    """Whether a tool call (or pending action) is the expected API, operation and arguments."""
    if call.get("api") != expected.api:
        return False
    if expected.operation is not None and not _same_operation(expected.operation, call):
        return False
    if expected.arguments:
        arguments = call.get("arguments") or {}
        return all(
            key in arguments and arguments[key] == value
            for key, value in expected.arguments.items()
        )
    return True


def describe_call(call: dict[str, Any] | CallExpectation) -> str:
    """``hr GET /vacancies {"id": 12}``: a call or an expectation in one line."""
    if isinstance(call, CallExpectation):
        call = call.model_dump(exclude_none=True)
    text = str(call.get("api"))
    operation, arguments = call.get("operation"), call.get("arguments")
    if operation:
        text += f" {operation}"
    if arguments:
        text += f" {json.dumps(arguments, sort_keys=True, ensure_ascii=False)}"
    return text


def _calls_made(answer: StepAnswer) -> str:
    if not answer.tool_calls:
        return "no API calls were made"
    return "calls made: " + "; ".join(describe_call(call) for call in answer.tool_calls)


def _check_text(expect: Expectation, answer: StepAnswer) -> list[str]:
    failures = []
    content = answer.content.casefold()
    for text in expect.contains:
        if text.casefold() not in content:
            failures.append(
                f"expected the answer to contain {text!r}; it was {_quote(answer.content)}"
            )
    for text in expect.not_contains:
        if text.casefold() in content:
            failures.append(
                f"expected the answer not to contain {text!r}; it was {_quote(answer.content)}"
            )
    for pattern in expect.regex:
        if re.search(pattern, answer.content) is None:
            failures.append(
                f"expected the answer to match /{pattern}/; it was {_quote(answer.content)}"
            )
    return failures


def _check_json(schema: dict[str, Any], answer: StepAnswer) -> list[str]:
    try:
        document = json.loads(answer.content)
    except ValueError as exc:
        return [f"expected a JSON answer, but it does not parse ({exc}): {_quote(answer.content)}"]
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return [f"the test's json_schema is not a valid JSON schema: {exc.message}"]
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(document))
    if error is None:
        return []
    where = "/".join(str(part) for part in error.absolute_path) or "(root)"
    return [f"the JSON answer does not match json_schema at {where}: {error.message}"]


def _check_calls(expect: Expectation, answer: StepAnswer) -> list[str]:
    failures = []
    for expected in expect.called:
        if not any(call_matches(expected, call) for call in answer.tool_calls):
            failures.append(f"expected a call to {describe_call(expected)}; {_calls_made(answer)}")
    for expected in expect.not_called:
        made = [call for call in answer.tool_calls if call_matches(expected, call)]
        if made:
            failures.append(
                f"expected no call to {describe_call(expected)}, "
                f"but it called {describe_call(made[0])}"
            )
    if expect.pending is not None:
        pending = answer.pending_action
        if pending is None:
            failures.append(
                f"expected a pending action {describe_call(expect.pending)}, but none was held"
            )
        elif not call_matches(expect.pending, pending):
            failures.append(
                f"expected a pending action {describe_call(expect.pending)}, "
                f"but it held {describe_call(pending)}"
            )
    return failures


def _check_grounding(expect: Expectation, answer: StepAnswer) -> list[str]:
    failures = []
    cited = [str((citation.get("document") or {}).get("name")) for citation in answer.citations]
    for name in expect.cites:
        # A name matches the document's whole name or its last path parts
        # ("leave.md" matches "policies/leave.md"), as folders are added with their paths.
        if not any(doc == name or doc.endswith("/" + name.lstrip("/")) for doc in cited):
            shown = ", ".join(sorted(set(cited))) if cited else "nothing"
            failures.append(f"expected a citation of {name!r}; it cited {shown}")
    if expect.abstains is True and not answer.abstained:
        failures.append(f"expected the answer to abstain; it answered {_quote(answer.content)}")
    if expect.abstains is False and answer.abstained:
        failures.append("expected an answer from the knowledge, but it abstained")
    return failures


def check(expect: Expectation, answer: StepAnswer) -> list[str]:
    """Every failed check of ``expect`` (except ``judge``) as a message; empty means pass."""
    failures = _check_text(expect, answer)
    if expect.json_schema is not None:
        failures += _check_json(expect.json_schema, answer)
    failures += _check_calls(expect, answer)
    failures += _check_grounding(expect, answer)
    return failures
