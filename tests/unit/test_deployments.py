"""`deployments:` in the config, `enclave deployments apply/list/remove`, and their store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from enclave.cli.main import app as cli
from enclave.errors import ConfigError, InvalidRequest, NotFound
from enclave.runners.deployments import DeploymentStore, parse_deployments, to_placement
from enclave.settings import DEFAULT_CLASSIFICATIONS, DeploymentConfig, load_settings
from enclave.storage.db import open_database

CLASSES = list(DEFAULT_CLASSIFICATIONS)
GOOD = """\
deployments:
  - model: llama-3.1-8b
    source: file:/models/llama-3.1-8b-q4.gguf
    engine: llamacpp
    memory_gb: 6
    replicas: 2
    keep_alive: 30m
    priority: high
    clearance: confidential
  - model: smol
    source: builtin:smollm2
    engine: llamacpp
    memory_gb: 0.5
"""


def test_config_deployments_are_validated_with_lines_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "enclave.yaml"
    path.write_text(GOOD)
    settings = load_settings(path)
    llama, smol = settings.deployments
    assert (llama.keep_alive_s, llama.priority, llama.clearance) == (1800, "high", "confidential")
    assert (smol.replicas, smol.priority, smol.keep_alive_s, smol.clearance) == (
        1,
        "normal",
        None,
        "secret",  # default: the highest class
    )
    placed = to_placement(llama)
    assert (placed.memory_gb, placed.replicas, placed.keep_alive_s) == (6.0, 2, 1800)

    path.write_text(
        GOOD.replace("engine: llamacpp\n    memory_gb: 6", "engine: ollama\n    memory_gb: 6")
        .replace("keep_alive: 30m", "keep_alive: 30 minutes")
        .replace("source: builtin:smollm2", "source: /models/x.gguf")
    )
    with pytest.raises(ConfigError) as problem:
        load_settings(path)
    lines = str(problem.value).splitlines()[1:]
    assert lines[0].endswith(
        "line 4: field 'deployments.0.engine': Input should be 'llamacpp', "
        "'vllm', 'llama-server' or 'sentence-transformers'"
    )
    assert "line 7: field 'deployments.0.keep_alive'" in lines[1] and "30m" in lines[1]
    assert "line 11: field 'deployments.1.source'" in lines[2] and "builtin:NAME" in lines[2]

    path.write_text(GOOD.replace("smol", "llama-3.1-8b").replace("confidential", "top-secret"))
    with pytest.raises(ConfigError) as problem:
        load_settings(path)
    assert "line 9: field 'deployments.0.clearance': 'top-secret' is not one of" in str(
        problem.value
    )
    path.write_text(GOOD.replace("smol", "llama-3.1-8b"))
    with pytest.raises(ConfigError) as problem:
        load_settings(path)
    assert "line 10: field 'deployments.1.model': 'llama-3.1-8b' is deployed twice" in str(
        problem.value
    )


def test_a_deployments_file_may_be_a_bare_list_and_errors_name_lines() -> None:
    bare = "\n".join(line[2:] for line in GOOD.splitlines()[1:])
    assert [d.model for d in parse_deployments(bare, "d.yaml", CLASSES)] == ["llama-3.1-8b", "smol"]
    with pytest.raises(ConfigError) as problem:
        parse_deployments(
            GOOD.replace("replicas: 2", "replicas: 0\n    gpus: 2"), "d.yaml", CLASSES
        )
    text = str(problem.value)
    assert "d.yaml, line 6: field 'deployments.0.replicas': Input should be greater than" in text
    assert "d.yaml, line 7: field 'deployments.0.gpus': unknown field" in text
    for empty in ("", "deployments: []", "model: x"):
        with pytest.raises(ConfigError, match="line 1: expected a non-empty"):
            parse_deployments(empty, "d.yaml", CLASSES)


def test_applied_deployments_survive_a_restart_and_replace_the_config_entry(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'enclave.db'}"
    baseline = [
        DeploymentConfig(
            model="smol",
            source="builtin:smollm2",
            engine="llamacpp",
            memory_gb=0.5,
            clearance="secret",
        )
    ]
    store = DeploymentStore(open_database(url)[1], baseline, CLASSES)
    specs = parse_deployments(GOOD.replace("memory_gb: 0.5", "memory_gb: 1"), "d.yaml", CLASSES)
    assert store.apply(specs) == [("llama-3.1-8b", "created"), ("smol", "created")]
    assert store.apply(specs[:1]) == [("llama-3.1-8b", "unchanged")]

    reopened = DeploymentStore(open_database(url)[1], baseline, CLASSES)
    declared = {d.spec.model: d for d in reopened.effective()}
    assert declared["smol"].origin == "applied" and declared["smol"].spec.memory_gb == 1
    assert declared["llama-3.1-8b"].spec.keep_alive == "30m"
    reopened.remove("smol")
    assert {d.spec.model: d.origin for d in reopened.effective()}["smol"] == "config"
    with pytest.raises(InvalidRequest, match="declared in the config"):
        reopened.remove("smol")
    with pytest.raises(NotFound):
        reopened.remove("nothing")


def test_deployments_cli_applies_lists_and_refuses_bad_files(enclave_home: Path) -> None:
    runner = CliRunner()
    good = enclave_home.parent / "deployments.yaml"
    good.write_text(GOOD)
    applied = runner.invoke(cli, ["deployments", "apply", "-f", str(good)])
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.split() == ["created", "llama-3.1-8b", "created", "smol"]
    listed = runner.invoke(cli, ["deployments", "list"])
    assert "llama-3.1-8b" in listed.stdout and "30m" in listed.stdout and "applied" in listed.stdout
    bad = enclave_home.parent / "bad.yaml"
    bad.write_text(GOOD.replace("priority: high", "priority: urgent"))
    refused = runner.invoke(cli, ["deployments", "apply", "-f", str(bad)])
    assert refused.exit_code == 2
    assert "bad.yaml, line 8: field 'deployments.0.priority'" in refused.output
    assert runner.invoke(cli, ["deployments", "remove", "smol"]).exit_code == 0
    assert "smol" not in runner.invoke(cli, ["deployments", "list"]).stdout
