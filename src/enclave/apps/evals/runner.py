"""Running an app's tests against a live server: drafts, conversations, repeats.

:func:`run_tests` starts a :class:`~.fixtures.FixtureServer` (and, for an
app with ``mcps``, stand-in MCP servers, :mod:`.mcp_fixtures`) and creates a
draft of the app (``POST /api/apps/drafts``) whose every API ``url`` points at
it and whose ``headers`` are gone, so the server under test calls canned
responses and no credential ever leaves for a test. Each test runs
``repeat`` times; a run is a fresh conversation with the test's fixtures
loaded. A step sends its prompt (or confirms / cancels the last pending
action with ``"enclave": {"confirm": id}``) with the whole conversation so
far, then checks the answer: :func:`~.assertions.check` first, then the
judge when the step has a rubric and everything else held.

A run stops at its first failing step: later steps build on an answer that is
already wrong, and their failures would only repeat it. Server and network
errors fail the run with the reason; they never abort the other tests. The
draft is deleted at the end whatever happened (drafts also expire).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from enclave.apps.evals.assertions import StepAnswer, check
from enclave.apps.evals.fixtures import FixtureServer
from enclave.apps.evals.judge import judge
from enclave.apps.evals.mcp_fixtures import McpFixtureServer
from enclave.apps.evals.report import Report, TestResult
from enclave.apps.manifest import canonical
from enclave.apps.spec import AppManifest, AppTest
from enclave.cli.client import error_message

__all__ = ["DraftError", "ProgressCallback", "draft_spec", "run_tests"]

# Called before each run with (test name, run number from 1, runs per test).
ProgressCallback = Callable[[str, int, int], None]


class HasHttp(Protocol):
    """What the runner needs of :class:`enclave.cli.client.ApiClient`."""

    http: httpx.Client


class DraftError(Exception):
    """The server did not create the draft. ``status`` is its HTTP status, None if unreachable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _StepError(Exception):
    pass


def draft_spec(
    manifest: AppManifest, fixtures: FixtureServer, mcp_fixtures: McpFixtureServer | None = None
) -> dict[str, Any]:
    """The canonical app with every API (and MCP server) pointed at ``fixtures``, no headers,
    no ``auth`` (the fixtures need no user) and no tests. A stdio MCP server becomes a URL
    one: its stand-in runs here."""
    spec = copy.deepcopy(canonical(manifest))
    body = spec["spec"]
    body.pop("tests", None)
    for api in body.get("apis") or []:
        api["url"] = fixtures.url_for(api["name"])
        api.pop("headers", None)
        api.pop("auth", None)
    for mcp in body.get("mcps") or []:
        if mcp_fixtures is not None and mcp["name"] in mcp_fixtures.tools:
            mcp["url"] = mcp_fixtures.url_for(mcp["name"])
            mcp.pop("command", None)
            mcp.pop("headers", None)
    return spec


def _create_draft(http: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        response = http.post("/api/apps/drafts", json={"spec": spec})
    except httpx.HTTPError as exc:
        raise DraftError(f"cannot reach {http.base_url}: {exc}") from None
    if response.status_code >= 400:
        message = error_message(response)
        if "egress.allow" in message:
            message += (
                ". The tests point every API at a local fixture server (--fixture-host, "
                "127.0.0.1 by default), so the server under test must allow that address "
                "in egress.allow (e.g. 127.0.0.1/32)"
            )
        raise DraftError(message, response.status_code)
    try:
        draft = response.json()
        if not isinstance(draft.get("id"), str) or not isinstance(draft.get("model"), str):
            raise ValueError
    except (ValueError, AttributeError):
        raise DraftError(
            f"the draft answer lacks 'id' and 'model': {response.text[:200]}"
        ) from None
    return dict(draft)


def _delete_draft(http: httpx.Client, draft_id: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # else the draft expires on its own
        http.delete(f"/api/apps/drafts/{draft_id}")


def _ask(http: httpx.Client, body: dict[str, Any]) -> StepAnswer:
    try:
        response = http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__  # timeouts can have no message
        raise _StepError(f"no answer from the server: {reason}") from None
    if response.status_code >= 400:
        raise _StepError(f"the server answered {response.status_code}: {error_message(response)}")
    try:
        data = response.json()
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise ValueError
    except ValueError:
        shown = response.text[:200]
        raise _StepError(f"the server's answer is not a chat completion: {shown}") from None
    return StepAnswer.from_chat(data)


def _unmatched_notes(fixtures: FixtureServer) -> list[str]:
    seen: list[str] = []
    for request in fixtures.unmatched():
        note = f"note: the app called {request.api} {request.operation}, which has no fixture"
        if note not in seen:
            seen.append(note)
    return seen


def _run_once(
    http: httpx.Client, model: str, test: AppTest, fixtures: FixtureServer, judge_model: str
) -> list[str]:
    """One fresh conversation through the test's steps; the failures, empty when it passed."""
    fixtures.load(test.fixtures)
    conversation: list[dict[str, Any]] = []
    pending_id: str | None = None
    for number, step in enumerate(test.steps, start=1):
        body: dict[str, Any] = {"model": model, "temperature": 0}
        if step.prompt is not None:
            conversation.append({"role": "user", "content": step.prompt})
        else:
            verb = "confirm" if step.confirm else "cancel"
            if pending_id is None:
                return [f"step {number}: nothing to {verb}: no earlier answer held an action"]
            body["enclave"] = {verb: pending_id}
            pending_id = None
        body["messages"] = list(conversation)
        try:
            answer = _ask(http, body)
        except _StepError as exc:
            return [f"step {number}: {exc}"]
        conversation.append({"role": "assistant", "content": answer.content})
        if answer.pending_action and answer.pending_action.get("id"):
            pending_id = str(answer.pending_action["id"])
        failures = check(step.expect, answer)
        if not failures and step.expect.judge:
            verdict = judge(http, judge_model, step.expect.judge, conversation[:-1], answer.content)
            if not verdict.passed:
                failures.append(f"judge: {verdict.reason}")
        if failures:
            failures += _unmatched_notes(fixtures)
            return [f"step {number}: {failure}" for failure in failures]
    return []


def run_tests(
    client: HasHttp,
    manifest: AppManifest,
    *,
    repeat: int = 1,
    judge_model: str = "default",
    fixture_host: str = "127.0.0.1",
    only: list[str] | None = None,
    progress: ProgressCallback | None = None,
    min_pass_rate: float = 1.0,
) -> Report:
    """Run ``manifest``'s tests (or the ``only`` ones) ``repeat`` times each on a draft.

    Raises :class:`DraftError` when the server will not create the draft; every
    later problem is a failed run in the report.
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    started = time.monotonic()
    tests = [test for test in manifest.spec.tests if only is None or test.name in only]
    report = Report()
    if not tests:
        return report
    http = client.http
    with (
        FixtureServer(fixture_host) as fixtures,
        McpFixtureServer(fixtures, manifest) as mcp_fixtures,
    ):
        draft = _create_draft(http, draft_spec(manifest, fixtures, mcp_fixtures))
        try:
            for test in tests:
                result = TestResult(manifest.name, test.name, min_pass_rate=min_pass_rate)
                for run in range(1, repeat + 1):
                    if progress is not None:
                        progress(test.name, run, repeat)
                    run_started = time.monotonic()
                    failures = _run_once(http, draft["model"], test, fixtures, judge_model)
                    result.duration_s += time.monotonic() - run_started
                    result.runs += 1
                    if not failures:
                        result.passed += 1
                    elif repeat > 1:
                        result.failures += [f"run {run}/{repeat}, {line}" for line in failures]
                    else:
                        result.failures += failures
                report.results.append(result)
        finally:
            _delete_draft(http, draft["id"])
    report.duration_s = time.monotonic() - started
    return report
