"""``enclave test`` end to end against a fake Enclave: drafts, conversations, the command.

:class:`FakeEnclave` is a stdlib HTTP server that implements the drafts and
chat contract with a scripted HR app. Like the real server it calls the
draft's API ``url``, so these tests also prove that the fixture server stands
in for the API and that no header reaches it.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from enclave.apps.evals.gate import run_gate
from enclave.apps.evals.report import Report, TestResult, to_json
from enclave.apps.evals.runner import DraftError, run_tests
from enclave.apps.spec import AppManifest
from enclave.cli import app_tests
from enclave.cli.client import ApiClient

pytestmark = pytest.mark.timeout(60)

KEY = "ek-test-key"

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "HR", "version": "1"},
    "paths": {
        "/vacancies": {
            "get": {"operationId": "listVacancies", "responses": {"200": {"description": "ok"}}}
        },
        "/vacancies/{id}": {
            "get": {
                "operationId": "getVacancy",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {"200": {"description": "ok"}},
            }
        },
        "/applications": {
            "post": {
                "operationId": "createApplication",
                "requestBody": {
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"vacancy_id": {"type": "integer"}},
                            }
                        }
                    }
                },
                "responses": {"201": {"description": "created"}},
            }
        },
    },
}

VACANCIES = {"GET /vacancies": {"json": [{"id": 12, "title": "Data Engineer"}]}}


def app_document(tests: list[dict[str, Any]], name: str = "hr-assistant") -> dict[str, Any]:
    return {
        "apiVersion": "enclave/v1",
        "kind": "App",
        "metadata": {"name": name},
        "spec": {
            "system_prompt": "You help HR staff.",
            "apis": [
                {
                    "name": "hr",
                    "url": "https://hr.example.com/api",
                    "schema": OPENAPI,
                    "headers": {"Authorization": "env:HR_TOKEN"},
                }
            ],
            "tests": tests,
        },
    }


def manifest(*tests: dict[str, Any]) -> AppManifest:
    return AppManifest.model_validate(app_document(list(tests)))


# -- the fake server -------------------------------------------------------------


class FakeEnclave:
    """Drafts and chat completions for a scripted HR app, on a loopback port.

    The app answers by keywords in the last user message: ``vacancies`` lists
    them through the API, ``vacancy N`` reads one, ``apply N`` holds an action,
    ``policy`` cites a document, ``moon`` abstains, ``json`` answers JSON,
    ``flaky`` alternates between two answers, ``boom`` is a server error,
    ``slow`` takes half a second;
    anything else is echoed. The judge passes answers that say "please".
    """

    def __init__(self) -> None:
        self.drafts: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.chats: list[dict[str, Any]] = []
        self.judged: list[dict[str, Any]] = []
        self.reject_drafts: str | None = None
        self.judge_reply: str | None = None
        self._ids = itertools.count(1)
        self._flaky = itertools.count()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any = None) -> None:
                payload = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {KEY}":
                    return True
                self.reply(401, {"error": {"message": "invalid API key"}})
                return False

            def do_POST(self) -> None:
                if not self.authorised():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                if self.path == "/api/apps/drafts":
                    self.reply(*fake.create_draft(body))
                elif self.path == "/v1/chat/completions":
                    self.reply(*fake.chat(body))
                else:
                    self.reply(404, {"error": {"message": "not found"}})

            def do_DELETE(self) -> None:
                if self.authorised():
                    draft_id = self.path.rsplit("/", 1)[-1]
                    fake.deleted.append(draft_id)
                    self.reply(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> FakeEnclave:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def create_draft(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.reject_drafts:
            return 400, {"error": {"message": self.reject_drafts}}
        draft_id = f"drf_{next(self._ids)}"
        spec = body["spec"]
        self.drafts[draft_id] = spec
        model = f"app/{spec['metadata']['name']}@{draft_id}"
        return 201, {"id": draft_id, "model": model, "expires_at": "2030-01-01T00:00:00Z"}

    def chat(self, body: dict[str, Any]) -> tuple[int, Any]:
        if "response_format" in body:
            return 200, self.judge(body)
        self.chats.append(body)
        draft_id = body["model"].partition("@")[2]
        if draft_id not in self.drafts or draft_id in self.deleted:
            return 404, {"error": {"message": f"model {body['model']} not found"}}
        api_url = self.drafts[draft_id]["spec"]["apis"][0]["url"]
        decision = body.get("enclave") or {}
        if "confirm" in decision:
            call = self.call(api_url, "POST", "/applications", {"vacancy_id": 12})
            return 200, self.answer("Your application is in.", [call])
        if "cancel" in decision:
            return 200, self.answer("Cancelled; nothing was sent.")
        prompt = body["messages"][-1]["content"].lower()
        if "slow" in prompt:
            time.sleep(0.5)
        if "boom" in prompt:
            return 500, {"error": {"message": "the model crashed"}}
        if "vacancy " in prompt:
            number = int(prompt.rsplit(" ", 1)[-1])
            call = self.call(api_url, "GET", f"/vacancies/{number}", None, {"id": number})
            return 200, self.answer(f"Vacancy {number}: status {call['status']}.", [call])
        if "vacancies" in prompt:
            call = self.call(api_url, "GET", "/vacancies", None)
            titles = ", ".join(v["title"] for v in call.pop("result") or [])
            return 200, self.answer(f"Open vacancies: {titles}. Please apply soon.", [call])
        if "apply" in prompt:
            pending = {
                "id": "act_7",
                "api": "hr",
                "operation": "POST /applications",
                "operation_id": "createApplication",
                "arguments": {"body": {"vacancy_id": 12}},
                "expires_at": "2030-01-01T00:00:00Z",
            }
            return 200, self.answer("Shall I send the application?", pending=pending)
        if "policy" in prompt:
            citation = {"number": 1, "document": {"id": 3, "name": "leave.md"}, "quote": "25"}
            answer = self.answer("You get 25 days [1].")
            return 200, answer | {"citations": [citation], "grounding": {"abstained": False}}
        if "moon" in prompt:
            answer = self.answer("I could not find that in the documents.")
            return 200, answer | {"citations": [], "grounding": {"abstained": True}}
        if "json" in prompt:
            return 200, self.answer('{"name": "Ada", "age": 36}')
        if "flaky" in prompt:
            return 200, self.answer("yes" if next(self._flaky) % 2 == 0 else "no")
        return 200, self.answer(f"You said: {prompt}")

    def call(
        self,
        api_url: str,
        method: str,
        path: str,
        body: Any,
        arguments: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call the draft's API as the real server would, and describe the call."""
        response = httpx.request(method, api_url + path, json=body, timeout=5)
        operation = "GET /vacancies/{id}" if path.startswith("/vacancies/") else path
        return {
            "id": "call_1",
            "api": "hr",
            "operation": operation if " " in operation else f"{method} {operation}",
            "operation_id": None,
            "arguments": arguments if arguments is not None else {"body": body} if body else {},
            "status": response.status_code,
            "latency_ms": 1,
            "error": None if response.is_success else response.text,
            "result": response.json() if response.is_success else None,
        }

    @staticmethod
    def answer(
        content: str, calls: list[dict[str, Any]] | None = None, pending: Any = None
    ) -> dict[str, Any]:
        for call in calls or []:
            call.pop("result", None)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "app": {
                "name": "hr-assistant",
                "version": None,
                "tool_calls": calls or [],
                "pending_action": pending,
            },
        }

    def judge(self, body: dict[str, Any]) -> dict[str, Any]:
        self.judged.append(body)
        case = json.loads(body["messages"][1]["content"])
        polite = "please" in case["answer"].lower()
        verdict = {"verdict": "pass" if polite else "fail", "reason": f"polite: {polite}"}
        content = self.judge_reply if self.judge_reply is not None else json.dumps(verdict)
        return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.fixture
def fake() -> Iterator[FakeEnclave]:
    with FakeEnclave() as server:
        yield server


@pytest.fixture
def client(fake: FakeEnclave) -> Iterator[ApiClient]:
    with ApiClient(fake.url, KEY, timeout=10) as api:
        yield api


# -- the runner ------------------------------------------------------------------


def test_a_passing_test_runs_on_a_draft_that_calls_only_the_fixtures(
    fake: FakeEnclave, client: ApiClient
) -> None:
    app = manifest(
        {
            "name": "lists vacancies",
            "fixtures": {"hr": VACANCIES},
            "steps": [
                {
                    "prompt": "Which vacancies are open?",
                    "expect": {
                        "contains": "Data Engineer",
                        "called": {"api": "hr", "operation": "GET /vacancies"},
                        "not_called": {"api": "hr", "operation": "POST /applications"},
                    },
                }
            ],
        }
    )
    seen: list[tuple[str, int, int]] = []
    report = run_tests(client, app, progress=lambda *args: seen.append(args))
    [result] = report.results
    assert (result.app, result.name, result.runs, result.passed) == (
        "hr-assistant",
        "lists vacancies",
        1,
        1,
    )
    assert result.status == "passed" and result.failures == []
    assert seen == [("lists vacancies", 1, 1)]
    # The draft: APIs point at the fixture server, carry no headers; no tests inside.
    [(draft_id, spec)] = fake.drafts.items()
    api = spec["spec"]["apis"][0]
    assert api["url"].startswith("http://127.0.0.1:") and api["url"].endswith("/hr")
    assert "headers" not in api and "tests" not in spec["spec"]
    assert api["schema"] == OPENAPI
    assert fake.deleted == [draft_id]
    [chat] = fake.chats
    assert chat["model"] == f"app/hr-assistant@{draft_id}" and chat["temperature"] == 0
    assert chat["messages"] == [{"role": "user", "content": "Which vacancies are open?"}]


def test_failures_name_the_run_and_step_and_missing_fixtures(
    fake: FakeEnclave, client: ApiClient
) -> None:
    app = manifest(
        {
            "name": "reads a vacancy",
            "fixtures": {"hr": {"GET /vacancies/{id}": {"json": {"id": 12}}}},
            "steps": [
                {"prompt": "Show vacancy 12", "expect": {"contains": "status 200"}},
                {"prompt": "Show vacancy 99", "expect": {"called": "hr"}},
                {"prompt": "Which vacancies are open?", "expect": {"contains": "Engineer"}},
                {"prompt": "never sent", "expect": {"contains": "x"}},
            ],
        }
    )
    report = run_tests(client, app, repeat=2)
    [result] = report.results
    assert (result.runs, result.passed, result.status) == (2, 0, "failed")
    assert result.failures[0].startswith("run 1/2, step 3: expected the answer to contain")
    assert result.failures[:2] == [
        "run 1/2, step 3: expected the answer to contain 'Engineer'; "
        "it was 'Open vacancies: . Please apply soon.'",
        "run 1/2, step 3: note: the app called hr GET /vacancies, which has no fixture",
    ]
    assert result.failures[2:] == [
        line.replace("run 1/2", "run 2/2") for line in result.failures[:2]
    ]
    # Each run is a fresh conversation; the step after a failure is not sent.
    assert [len(chat["messages"]) for chat in fake.chats] == [1, 3, 5, 1, 3, 5]
    assert fake.chats[2]["messages"][:2] == [
        {"role": "user", "content": "Show vacancy 12"},
        {"role": "assistant", "content": "Vacancy 12: status 200."},
    ]


def test_confirm_and_cancel_answer_the_last_pending_action(
    fake: FakeEnclave, client: ApiClient
) -> None:
    apply = {
        "prompt": "Please apply for the Data Engineer job",
        "expect": {
            "pending": {"api": "hr", "operation": "createApplication"},
            "not_called": "hr",
        },
    }
    app = manifest(
        {
            "name": "applies after confirmation",
            "fixtures": {"hr": {"POST /applications": {"status": 201, "json": {"id": 5}}}},
            "steps": [
                apply,
                {
                    "confirm": True,
                    "expect": {
                        "called": {
                            "api": "hr",
                            "operation": "POST /applications",
                            "arguments": {"body": {"vacancy_id": 12}},
                        },
                        "contains": "application is in",
                    },
                },
            ],
        },
        {
            "name": "cancels",
            "steps": [apply, {"confirm": False, "expect": {"not_called": "hr"}}],
        },
        {"name": "confirms nothing", "steps": [{"confirm": True}]},
    )
    report = run_tests(client, app)
    statuses = {r.name: (r.status, r.failures) for r in report.results}
    assert statuses["applies after confirmation"] == ("passed", [])
    assert statuses["cancels"] == ("passed", [])
    assert statuses["confirms nothing"] == (
        "failed",
        ["step 1: nothing to confirm: no earlier answer held an action"],
    )
    confirm, cancel = (chat for chat in fake.chats if "enclave" in chat)
    assert confirm["enclave"] == {"confirm": "act_7"}
    assert cancel["enclave"] == {"cancel": "act_7"}
    # No new user message: the conversation so far, with the question that held it.
    assert confirm["messages"][-1] == {
        "role": "assistant",
        "content": "Shall I send the application?",
    }


def test_judge_runs_after_the_other_checks_hold(fake: FakeEnclave, client: ApiClient) -> None:
    app = manifest(
        {
            "name": "polite",
            "fixtures": {"hr": VACANCIES},
            "steps": [{"prompt": "List vacancies", "expect": {"judge": "Answers politely."}}],
        },
        {"name": "rude", "steps": [{"prompt": "hello", "expect": {"judge": "Is polite."}}]},
        {
            "name": "not judged",
            "steps": [{"prompt": "hi", "expect": {"contains": "zzz", "judge": "Is polite."}}],
        },
    )
    report = run_tests(client, app, judge_model="judge-model")
    outcome = {r.name: r.failures for r in report.results}
    assert outcome == {
        "polite": [],
        "rude": ["step 1: judge: polite: False"],
        "not judged": ["step 1: expected the answer to contain 'zzz'; it was 'You said: hi'"],
    }
    assert [body["model"] for body in fake.judged] == ["judge-model", "judge-model"]
    case = json.loads(fake.judged[0]["messages"][1]["content"])
    assert case["conversation"] == [{"role": "user", "content": "List vacancies"}]
    assert case["rubric"] == "Answers politely."

    fake.judge_reply = "PASS!!"
    [polite] = run_tests(client, app, only=["polite"]).results
    assert polite.failures == ["step 1: judge: the judge's output is not a verdict: PASS!!"]


def test_grounding_json_and_repeats_give_a_pass_rate(client: ApiClient) -> None:
    app = manifest(
        {"name": "cites", "steps": [{"prompt": "leave policy?", "expect": {"cites": "leave.md"}}]},
        {"name": "abstains", "steps": [{"prompt": "the moon?", "expect": {"abstains": True}}]},
        {
            "name": "json",
            "steps": [
                {
                    "prompt": "json please",
                    "expect": {"json_schema": {"type": "object", "required": ["name"]}},
                }
            ],
        },
        {"name": "flaky", "steps": [{"prompt": "flaky?", "expect": {"contains": "yes"}}]},
    )
    report = run_tests(client, app, repeat=4, only=["cites", "abstains", "json", "flaky"])
    rates = {r.name: (r.passed, r.runs) for r in report.results}
    assert rates == {"cites": (4, 4), "abstains": (4, 4), "json": (4, 4), "flaky": (2, 4)}
    flaky = report.results[3]
    assert flaky.status == "failed" and len(flaky.failures) == 2
    lenient = run_tests(client, app, repeat=2, only=["flaky"], min_pass_rate=0.5)
    assert lenient.results[0].status == "passed"


def test_server_errors_fail_the_run_not_the_whole_report(
    fake: FakeEnclave, client: ApiClient
) -> None:
    app = manifest(
        {"name": "crashes", "steps": [{"prompt": "boom"}]},
        {"name": "fine", "steps": [{"prompt": "hello", "expect": {"contains": "hello"}}]},
    )
    report = run_tests(client, app)
    crashed, fine = report.results
    assert crashed.failures == ["step 1: the server answered 500: the model crashed"]
    assert fine.status == "passed"
    assert len(fake.deleted) == 1

    with ApiClient(fake.url, KEY, timeout=0.2) as impatient:
        slow = run_tests(impatient, manifest({"name": "slow", "steps": [{"prompt": "slow"}]}))
    assert slow.results[0].failures == ["step 1: no answer from the server: timed out"]
    assert len(fake.deleted) == 2

    fake.server.shutdown()
    fake.server.server_close()
    with pytest.raises(DraftError, match="cannot reach"):
        run_tests(client, app)


def test_a_rejected_draft_raises_with_the_servers_reason(
    fake: FakeEnclave, client: ApiClient
) -> None:
    fake.reject_drafts = "spec.knowledge: no knowledge base named hr-docs"
    with pytest.raises(DraftError) as caught:
        run_tests(client, manifest({"name": "t", "steps": [{"prompt": "hi"}]}))
    assert caught.value.status == 400 and "hr-docs" in caught.value.message
    # No tests: no draft at all.
    assert run_tests(client, manifest()).results == []
    assert fake.drafts == {}


def test_a_draft_refused_by_the_outbound_guard_says_how_to_allow_the_fixtures(
    fake: FakeEnclave, client: ApiClient
) -> None:
    fake.reject_drafts = (
        "spec.apis[0].url: refused http://127.0.0.1:5000/hr: 127.0.0.1 is a loopback "
        "address (an admin can allow it in egress.allow)."
    )
    with pytest.raises(DraftError) as caught:
        run_tests(client, manifest({"name": "t", "steps": [{"prompt": "hi"}]}))
    assert "--fixture-host" in caught.value.message
    assert "egress.allow (e.g. 127.0.0.1/32)" in caught.value.message


def test_the_gate_prints_the_table_and_says_whether_all_passed(client: ApiClient) -> None:
    console = Console(record=True, width=160, color_system=None)
    passing = manifest(
        {"name": "greets", "steps": [{"prompt": "hi", "expect": {"contains": "hi"}}]}
    )
    assert run_gate(client, passing, console=console) is True
    failing = manifest({"name": "greets", "steps": [{"prompt": "hi", "expect": {"contains": "x"}}]})
    assert run_gate(client, failing, console=console) is False
    text = console.export_text()
    assert "1 tests: 1 passed, 0 failed" in text and "1 tests: 0 passed, 1 failed" in text
    assert run_gate(client, manifest(), console=console) is True


# -- the command -----------------------------------------------------------------


def cli() -> typer.Typer:
    command = typer.Typer()
    command.command("test")(app_tests.test_command)

    @command.callback()
    def main() -> None:
        """Keeps `test` a subcommand, as in `enclave test`."""

    return command


def write_app(folder: Path, tests: list[dict[str, Any]], name: str = "hr-assistant") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(app_document(tests, name), indent=1))  # JSON is YAML
    return path


PASSING = {
    "name": "lists vacancies",
    "fixtures": {"hr": VACANCIES},
    "steps": [{"prompt": "Which vacancies?", "expect": {"contains": "Data Engineer"}}],
}
FLAKY = {"name": "flaky", "steps": [{"prompt": "flaky?", "expect": {"contains": "yes"}}]}


def invoke(fake: FakeEnclave, *args: str) -> Any:
    return CliRunner().invoke(cli(), ["test", *args, "--url", fake.url, "--key", KEY])


def test_command_runs_writes_reports_and_exits_0(fake: FakeEnclave, tmp_path: Path) -> None:
    path = write_app(tmp_path / "apps", [PASSING])
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    result = invoke(fake, "-f", str(path), "--junit", str(junit), "--json", str(report))
    assert result.exit_code == 0, result.output
    assert "lists vacancies" in result.stdout and "1 tests: 1 passed, 0 failed" in result.stdout
    assert "hr-assistant: lists vacancies (run 1/1)" in result.stderr  # progress
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("failures")) == ("1", "0")
    assert json.loads(report.read_text())["tests"][0]["status"] == "passed"


def test_command_exits_1_on_a_failed_test_and_takes_folders(
    fake: FakeEnclave, tmp_path: Path
) -> None:
    write_app(tmp_path / "apps", [PASSING])
    write_app(tmp_path / "apps", [FLAKY], name="faq")
    (tmp_path / "apps" / "notes.yaml").write_text("just: notes\n")
    junit = tmp_path / "junit.xml"
    result = invoke(fake, "-f", str(tmp_path / "apps"), "--repeat", "2", "--junit", str(junit))
    assert result.exit_code == 1, result.output
    assert "faq: flaky" in result.stdout and "1/2 50%" in result.stdout
    assert "2 tests: 1 passed, 1 failed" in result.stdout
    suites = {s.get("name"): s.get("failures") for s in ET.parse(junit).getroot()}
    assert suites == {"faq": "1", "hr-assistant": "0"}
    # --min-pass-rate lowers the bar; --only picks tests.
    lenient = invoke(fake, "-f", str(tmp_path / "apps"), "-n", "2", "--min-pass-rate", "0.5")
    assert lenient.exit_code == 0, lenient.output
    only = invoke(fake, "-f", str(tmp_path / "apps"), "--only", "lists vacancies")
    assert only.exit_code == 0 and "flaky" not in only.stdout


def test_command_exits_1_on_a_regression_against_the_baseline(
    fake: FakeEnclave, tmp_path: Path
) -> None:
    path = write_app(tmp_path, [PASSING, FLAKY])
    baseline = tmp_path / "baseline.json"
    app = manifest(PASSING, FLAKY)
    baseline.write_text(
        json.dumps(
            to_json(
                Report(
                    [
                        TestResult(app.name, "lists vacancies", 2, 2),
                        TestResult(app.name, "flaky", 2, 1, ["run 2/2, step 1: no"], 0.1, 0.5),
                    ]
                )
            )
        )
    )
    ok = invoke(
        fake, "-f", str(path), "-n", "2", "--min-pass-rate", "0.5", "--baseline", str(baseline)
    )
    assert ok.exit_code == 0, ok.output
    # Same file, but the app now lists nothing: the vacancy test drops to 0%.
    broken = write_app(
        tmp_path / "broken",
        [PASSING | {"fixtures": {"hr": {"GET /vacancies": {"json": []}}}}, FLAKY],
    )
    result = invoke(
        fake, "-f", str(broken), "-n", "2", "--min-pass-rate", "0.5", "--baseline", str(baseline)
    )
    assert result.exit_code == 1, result.output
    assert "1 regressed against" in result.stdout
    assert "hr-assistant: lists vacancies: pass rate 100% → 0%" in result.stdout


def test_command_usage_errors_exit_2(fake: FakeEnclave, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: enclave/v1\nkind: App\nmetadata: {name: Bad Name}\nspec: {}\n")
    result = invoke(fake, "-f", str(bad))
    assert result.exit_code == 2
    assert "bad.yaml, line 3" in result.stderr and "metadata.name" in result.stderr
    assert invoke(fake, "-f", str(tmp_path / "missing.yaml")).exit_code == 2

    good = write_app(tmp_path / "apps", [PASSING])
    unknown = invoke(fake, "-f", str(good), "--only", "no such test")
    assert unknown.exit_code == 2 and "no test named 'no such test'" in unknown.stderr
    not_a_report = tmp_path / "baseline.json"
    not_a_report.write_text("[]")
    assert invoke(fake, "-f", str(good), "--baseline", str(not_a_report)).exit_code == 2

    fake.reject_drafts = "spec.model: no chat model 'nope'"
    rejected = invoke(fake, "-f", str(good))
    assert rejected.exit_code == 2 and "no chat model 'nope'" in rejected.stderr
    assert fake.chats == []
