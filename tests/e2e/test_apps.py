"""Apps end to end with the default embedded model: the shipped example through
``enclave apply`` and ``enclave test``, the apply gate, a baseline regression, and
a live call to the example's mock HR API with a confirmed write."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import ENCLAVE, EXAMPLE, HR_TOKEN, Server, running_mock_hr_api

pytestmark = pytest.mark.model


def cli(server: Server, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "ENCLAVE_URL": server.url, "ENCLAVE_API_KEY": server.admin_key}
    return subprocess.run(
        [ENCLAVE, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def copy_example(tmp_path: Path, name: str, edit: object = None) -> Path:
    """The example in a scratch folder, renamed, optionally edited (a callable on the dict)."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLE, folder)
    data = yaml.safe_load((folder / "app.yaml").read_text())
    data["metadata"]["name"] = name
    if callable(edit):
        edit(data)
    (folder / "app.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "app.yaml"


@pytest.fixture(scope="module")
def policies(server: Server) -> None:
    """The example's knowledge base, indexed."""
    created = cli(server, "knowledge", "create", "hr-policies")
    assert created.returncode == 0, created.stderr
    added = cli(server, "knowledge", "add", "hr-policies", str(EXAMPLE / "policies"))
    assert added.returncode == 0, added.stdout + added.stderr


def test_the_example_applies_and_passes_its_tests(
    server: Server, policies: None, tmp_path: Path
) -> None:
    applied = cli(server, "apply", "--test", "-f", str(EXAMPLE))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "hr-assistant: created (version 1)" in applied.stdout
    with server.http() as http:
        recorded = http.get("/api/apps/hr-assistant").json()["test_results"]
    assert [t["status"] for t in recorded["tests"]] == ["passed"] * 4
    again = cli(server, "apply", "-f", str(EXAMPLE / "app.yaml"))
    assert "hr-assistant: unchanged (version 1)" in again.stdout

    junit, report = tmp_path / "out.xml", tmp_path / "out.json"
    tested = cli(
        server,
        "test",
        "-f",
        str(EXAMPLE / "app.yaml"),
        "--junit",
        str(junit),
        "--json",
        str(report),
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "4 tests: 4 passed, 0 failed" in tested.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("4", "0")

    # Export, apply what was exported: no new version.
    exported = cli(server, "apps", "export", "hr-assistant")
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "exported.yaml").write_text(exported.stdout)
    dry = cli(server, "apply", "--dry-run", "-f", str(tmp_path / "exported.yaml"))
    assert "no changes" in dry.stdout, dry.stdout
    assert (
        "unchanged (version 1)"
        in cli(server, "apply", "-f", str(tmp_path / "exported.yaml")).stdout
    )

    # A regression against that report fails the command.
    def break_capital_test(data: dict) -> None:
        data["spec"]["tests"][0]["steps"][0]["expect"]["contains"] = ["Zanzibar"]

    broken = copy_example(tmp_path, "hr-assistant", break_capital_test)
    regressed = cli(
        server,
        "test",
        "-f",
        str(broken),
        "--only",
        "capital needs no API",
        "--baseline",
        str(report),
    )
    assert regressed.returncode == 1
    assert "regress" in regressed.stdout.lower()


def test_apply_with_tests_refuses_a_failing_app(
    server: Server, policies: None, tmp_path: Path
) -> None:
    def impossible(data: dict) -> None:
        data["spec"]["tests"] = [
            {
                "name": "impossible",
                "steps": [{"prompt": "Say hello.", "expect": {"contains": ["Zanzibar-42"]}}],
            }
        ]

    path = copy_example(tmp_path, "gated-app", impossible)
    gated = cli(server, "apply", "--test", "-f", str(path))
    assert gated.returncode == 1
    assert "not applied" in gated.stdout + gated.stderr
    with server.http() as http:
        assert http.get("/api/apps/gated-app").status_code == 404


@pytest.fixture
def hr_api() -> Iterator[str]:
    with running_mock_hr_api(HR_TOKEN) as url:
        yield url


def test_a_live_app_calls_the_api_and_writes_only_after_confirmation(
    server: Server, policies: None, hr_api: str, tmp_path: Path
) -> None:
    def live(data: dict) -> None:
        data["spec"]["apis"][0]["url"] = hr_api

    assert cli(server, "apply", "-f", str(copy_example(tmp_path, "hr-live", live))).returncode == 0
    client = server.client()
    answer = client.chat.completions.create(
        model="app/hr-live", messages=[{"role": "user", "content": "Which vacancies are open?"}]
    )
    [call] = (answer.model_extra or {})["app"]["tool_calls"]
    # 200, not 401: the server sent the HR_TOKEN header the mock API demands.
    assert (call["operation_id"], call["status"]) == ("listVacancies", 200)

    answer = client.chat.completions.create(
        model="app/hr-live",
        messages=[{"role": "user", "content": "Create a new vacancy titled Nurse."}],
    )
    pending = (answer.model_extra or {})["app"]["pending_action"]
    assert pending["operation_id"] == "createVacancy"
    titles = [v["title"] for v in httpx.get(f"{hr_api}/vacancies", headers=_auth()).json()]
    assert "Nurse" not in titles  # nothing written yet

    with server.http() as http:
        confirmed = http.post(f"/api/actions/{pending['id']}/confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["result"]["status"] == 201
        assert http.post(f"/api/actions/{pending['id']}/confirm").status_code == 409
    titles = [v["title"] for v in httpx.get(f"{hr_api}/vacancies", headers=_auth()).json()]
    assert titles.count("Nurse") == 1


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {HR_TOKEN}"}
