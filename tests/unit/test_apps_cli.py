"""``enclave apply`` and ``enclave apps`` against an in-memory stand-in for ``/api/apps``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from enclave.apps.manifest import (
    ManifestError,
    canonical,
    diff,
    load_app_file,
    parse_app_document,
    to_yaml,
)
from enclave.apps.spec import AppManifest
from enclave.cli import client as client_module
from enclave.cli.apps import app as apps_app
from enclave.cli.apps import apply_command

DATA = Path(__file__).parents[1] / "data" / "apps" / "manifests"
KEY = "ek-test"

cli = typer.Typer()
cli.command("apply")(apply_command)
cli.add_typer(apps_app, name="apps")


class FakeAppServer:
    """The ``/api/apps`` routes in memory, using the same canonical form as the server.

    A spec whose model is ``missing`` is refused with 400, like an unknown model.
    """

    def __init__(self) -> None:
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.current: dict[str, int] = {}
        self.requests: list[tuple[str, str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        body: Any = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        parts = request.url.path.strip("/").split("/")[2:]
        if not parts:
            return httpx.Response(
                200, json={"data": [self.summary(n) for n in sorted(self.current)]}
            )
        name, rest = parts[0], parts[1:]
        if request.method == "PUT":
            return self.apply(name, body)
        if name not in self.current:
            return httpx.Response(404, json={"error": {"message": f"no app named '{name}'"}})
        if request.method == "GET" and not rest:
            spec = self.spec(name)
            return httpx.Response(
                200,
                json={
                    "name": name,
                    "version": self.current[name],
                    "spec": spec,
                    "yaml": to_yaml(spec),
                    "created_at": "2026-11-01T09:00:00+00:00",
                    "updated_at": "2026-11-02T10:30:00+00:00",
                },
            )
        if request.method == "GET" and rest == ["versions"]:
            data = [
                {
                    "version": number,
                    "created_at": f"2026-11-0{number}T10:00:00+00:00",
                    "created_by": 7,
                    "current": number == self.current[name],
                    "source": version["source"],
                }
                for number, version in enumerate(self.versions[name], start=1)
            ]
            return httpx.Response(200, json={"data": data})
        if request.method == "POST" and rest == ["rollback"]:
            old = self.versions[name][body["to"] - 1]["spec"]
            self.store(name, old, f"rollback to {body['to']}")
            return httpx.Response(
                200, json={"name": name, "version": self.current[name], "from": body["to"]}
            )
        if request.method == "DELETE":
            del self.current[name], self.versions[name]
            return httpx.Response(204)
        return httpx.Response(405)

    def apply(self, name: str, body: dict[str, Any]) -> httpx.Response:
        try:
            manifest = parse_app_document(body["spec"])
        except ManifestError as exc:
            return httpx.Response(400, json={"error": {"message": "; ".join(exc.problems)}})
        if manifest.spec.model == "missing":
            return httpx.Response(
                400, json={"error": {"message": "spec.model: no model 'missing'"}}
            )
        spec = canonical(manifest)
        current = self.spec(name) if name in self.current else None
        if current == spec:
            answer = {"changed": False, "created": False, "diff": ""}
            return httpx.Response(200, json={"name": name, "version": self.current[name], **answer})
        version = len(self.versions.get(name, [])) + 1
        changes = diff(current, spec, name)
        if not body["dry_run"]:
            self.store(name, spec, "apply")
        answer = {"changed": True, "created": current is None, "diff": changes}
        return httpx.Response(200, json={"name": name, "version": version, **answer})

    def store(self, name: str, spec: dict[str, Any], source: str) -> None:
        self.versions.setdefault(name, []).append({"spec": spec, "source": source})
        self.current[name] = len(self.versions[name])

    def spec(self, name: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.versions[name][self.current[name] - 1]["spec"]
        return spec

    def summary(self, name: str) -> dict[str, Any]:
        spec = self.spec(name)
        return {
            "name": name,
            "description": spec["metadata"].get("description", ""),
            "version": self.current[name],
            "model": spec["spec"].get("model", "default"),
            "updated_at": "2026-11-02T10:30:00+00:00",
            "avatar_url": None,
        }

    def writes(self) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if r[0] != "GET" and not (r[2] or {}).get("dry_run")]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeAppServer:
    """Route every ApiClient request to a fresh FakeAppServer."""
    server = FakeAppServer()
    real = httpx.Client

    def make(**kwargs: Any) -> httpx.Client:
        return real(transport=httpx.MockTransport(server.handle), **kwargs)

    monkeypatch.setattr(client_module.httpx, "Client", make)
    monkeypatch.setenv("ENCLAVE_URL", "http://enclave.test")
    monkeypatch.setenv("ENCLAVE_API_KEY", KEY)
    return server


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    shutil.copytree(DATA, tmp_path / "app")
    return tmp_path / "app"


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input)


def test_apply_creates_then_leaves_unchanged_then_configures(
    fake: FakeAppServer, app_dir: Path
) -> None:
    path = app_dir / "hr.yaml"
    result = run("apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == "hr-assistant: created (version 1)\n"
    method, url_path, body = fake.requests[-1]
    assert (method, url_path) == ("PUT", "/api/apps/hr-assistant")
    assert body == {"spec": canonical(load_app_file(path)), "dry_run": False}
    assert body["spec"]["spec"]["apis"][0]["schema"]["openapi"] == "3.0.3"

    result = run("apply", "-f", str(path))
    assert result.stdout == "hr-assistant: unchanged (version 1)\n"

    path.write_text(path.read_text().replace("Be brief.", "Be brief and kind."))
    result = run("apply", "-f", str(path))
    assert result.stdout == "hr-assistant: configured (version 2)\n"
    assert fake.current == {"hr-assistant": 2}


def test_dry_run_shows_the_diff_and_writes_nothing(fake: FakeAppServer, app_dir: Path) -> None:
    path = app_dir / "hr.yaml"
    result = run("apply", "-f", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "hr-assistant: would be created (version 1)"
    assert lines[1:4] == ["--- /dev/null", "+++ hr-assistant (new)", lines[3]]
    assert "+apiVersion: enclave/v1" in lines
    assert fake.current == {}

    run("apply", "-f", str(path))
    result = run("apply", "-f", str(path), "--dry-run")
    assert result.stdout == "hr-assistant: no changes (version 1)\n"

    path.write_text(path.read_text().replace("Be brief.", "Be brief and kind."))
    result = run("apply", "-f", str(path), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "hr-assistant: would be configured (version 2)"
    assert "-    You help HR staff. Be brief." in lines
    assert "+    You help HR staff. Be brief and kind." in lines
    assert fake.current == {"hr-assistant": 1}


def test_an_invalid_file_applies_nothing(fake: FakeAppServer, app_dir: Path) -> None:
    (app_dir / "other.yaml").write_text(
        (app_dir / "hr.yaml").read_text().replace("name: hr-assistant", "name: other")
    )
    path = app_dir / "hr.yaml"
    path.write_text(path.read_text().replace("http://hr.internal/api/", "hr.internal"))
    result = run("apply", "-f", str(app_dir))
    assert result.exit_code == 1
    assert (
        f"{path}, line 16: field 'spec.apis[0].url': must be an http:// or https:// URL with a host"
        in result.stderr
    )
    assert "nothing applied" in result.stderr
    assert fake.requests == []


def test_a_folder_is_applied_only_if_the_server_accepts_every_app(
    fake: FakeAppServer, app_dir: Path
) -> None:
    text = (app_dir / "hr.yaml").read_text()
    (app_dir / "z-other.yaml").write_text(
        text.replace("name: hr-assistant", "name: other").replace(
            "model: default", "model: missing"
        )
    )
    result = run("apply", "-f", str(app_dir))
    assert result.exit_code == 1
    assert "spec.model: no model 'missing'" in result.stderr
    assert fake.writes() == []

    (app_dir / "z-other.yaml").write_text(text.replace("name: hr-assistant", "name: other"))
    result = run("apply", "-f", str(app_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout == "hr-assistant: created (version 1)\nother: created (version 1)\n"


def test_the_same_app_twice_is_refused(fake: FakeAppServer, app_dir: Path) -> None:
    shutil.copy(app_dir / "hr.yaml", app_dir / "copy.yaml")
    result = run("apply", "-f", str(app_dir))
    assert result.exit_code == 1
    assert f"app 'hr-assistant' is also in {app_dir / 'copy.yaml'}" in result.stderr
    assert fake.requests == []


@pytest.mark.parametrize("passed", [True, False])
def test_apply_with_tests_applies_only_when_they_pass(
    fake: FakeAppServer, app_dir: Path, monkeypatch: pytest.MonkeyPatch, passed: bool
) -> None:
    gated: list[str] = []

    def run_gate(client: Any, manifest: AppManifest, **_: Any) -> bool:
        gated.append(manifest.name)
        return passed

    monkeypatch.setattr("enclave.apps.evals.gate.run_gate", run_gate)
    result = run("apply", "-f", str(app_dir / "hr.yaml"), "--test")
    assert gated == ["hr-assistant"]
    if passed:
        assert result.exit_code == 0, result.output
        assert result.stdout == "hr-assistant: created (version 1)\n"
    else:
        assert result.exit_code == 1
        assert "hr-assistant: tests failed, not applied" in result.stderr
        # Only the validation before the tests reached the server; nothing was applied.
        assert [(m, body["dry_run"]) for m, _, body in fake.requests] == [("PUT", True)]
        assert fake.current == {}


def test_apply_with_tests_validates_on_the_server_before_running_them(
    fake: FakeAppServer, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec the server refuses (here an unknown model; in the README's case a header
    secret outside apps.secret_env) fails at once, not after minutes of tests."""
    gated: list[str] = []
    monkeypatch.setattr(
        "enclave.apps.evals.gate.run_gate", lambda _c, m, **_: gated.append(m.name) or True
    )
    manifest = app_dir / "hr.yaml"
    manifest.write_text(manifest.read_text().replace("model: default", "model: missing"))
    result = run("apply", "-f", str(manifest), "--test")
    assert result.exit_code != 0
    assert gated == []
    assert fake.current == {}


def test_export_applies_back_unchanged(fake: FakeAppServer, app_dir: Path) -> None:
    run("apply", "-f", str(app_dir / "hr.yaml"))
    result = run("apps", "export", "hr-assistant")
    assert result.exit_code == 0, result.output
    assert result.stdout == to_yaml(fake.spec("hr-assistant"))
    assert "avatar: data:image/png;base64," in result.stdout
    exported = app_dir.parent / "exported.yaml"
    exported.write_text(result.stdout)
    result = run("apply", "-f", str(exported))
    assert result.stdout == "hr-assistant: unchanged (version 1)\n"


def test_list_and_get(fake: FakeAppServer, app_dir: Path) -> None:
    result = run("apps", "list")
    assert result.stdout == "no apps yet (enclave apply -f app.yaml)\n"
    run("apply", "-f", str(app_dir / "hr.yaml"))
    result = run("apps", "list")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0] == ["NAME", "VERSION", "MODEL", "UPDATED", "DESCRIPTION"]
    assert rows[1][:5] == ["hr-assistant", "1", "default", "2026-11-02", "10:30"]
    assert " ".join(rows[1][5:]) == "Answers HR questions and looks up vacancies."
    assert len(rows) == 2
    result = run("apps", "get", "hr-assistant")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "hr-assistant (version 1)"
    assert "model:          default" in lines
    assert "knowledge:      hr-policies" in lines
    assert "apis:           hr (2 operations, http://hr.internal/api)" in lines
    assert "tests:          capital needs no API; vacancies call the API" in lines
    result = run("apps", "get", "hr-assistant", "--json")
    assert json.loads(result.stdout)["spec"] == fake.spec("hr-assistant")


def test_history_and_rollback(fake: FakeAppServer, app_dir: Path) -> None:
    path = app_dir / "hr.yaml"
    run("apply", "-f", str(path))
    path.write_text(path.read_text().replace("Be brief.", "Be brief and kind."))
    run("apply", "-f", str(path))
    result = run("apps", "rollback", "hr-assistant", "--to", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hr-assistant: rolled back to version 1 (now version 3)\n"
    assert fake.requests[-1] == ("POST", "/api/apps/hr-assistant/rollback", {"to": 1})
    assert fake.spec("hr-assistant") == fake.versions["hr-assistant"][0]["spec"]

    result = run("apps", "history", "hr-assistant")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        ["VERSION", "CREATED", "BY", "SOURCE"],
        ["1", "2026-11-01", "10:00", "7", "apply"],
        ["2", "2026-11-02", "10:00", "7", "apply"],
        ["3", "*", "2026-11-03", "10:00", "7", "rollback", "to", "1"],
    ]


def test_delete_asks_first(fake: FakeAppServer, app_dir: Path) -> None:
    run("apply", "-f", str(app_dir / "hr.yaml"))
    result = run("apps", "delete", "hr-assistant", input="n\n")
    assert result.exit_code == 1
    assert fake.current == {"hr-assistant": 1}
    result = run("apps", "delete", "hr-assistant", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout == "deleted app 'hr-assistant'\n"
    assert fake.current == {}


@pytest.mark.parametrize(
    "command",
    [
        lambda: run("apps", "get", "nope"),
        lambda: run("apps", "export", "nope"),
        lambda: run("apps", "rollback", "nope", "--to", "1"),
    ],
)
def test_server_errors_exit_1_with_the_reason(
    fake: FakeAppServer, command: Callable[[], Any]
) -> None:
    result = command()
    assert result.exit_code == 1
    assert "answered 404: no app named 'nope'" in result.stderr


def test_a_missing_path_is_a_problem(fake: FakeAppServer, tmp_path: Path) -> None:
    result = run("apply", "-f", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 1
    assert f"{tmp_path / 'missing.yaml'}: no such file or folder" in result.stderr
    assert fake.requests == []
