from pathlib import Path

import pytest

from enclave.errors import ConfigError
from enclave.settings import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "enclave.yaml"
    path.write_text(text)
    return path


def test_defaults_serve_the_embedded_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENCLAVE_CONFIG", raising=False)
    settings = load_settings()
    assert settings.port == 8080 and settings.host == "127.0.0.1"
    assert settings.max_body_bytes == 10 * 1024 * 1024
    paths = [model.path for provider in settings.providers for model in provider.models]
    assert paths == ["builtin:smollm2", "builtin:all-minilm-l6-v2"]


def test_bad_value_names_field_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8080\nrunner:\n  slots: 2\n  queue_size: -5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert f"{path}, line 4" in message
    assert "runner.queue_size" in message


def test_unknown_field_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "host: 0.0.0.0\nprot: 9000\n")
    with pytest.raises(ConfigError, match=r"line 2: field 'prot': unknown field"):
        load_settings(path)


def test_nested_list_errors_point_into_the_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n  - name: local\n    type: llamacpp\n    models:\n"
        "      - name: a\n        path: builtin:smollm2\n        n_ctx: 10\n",
    )
    with pytest.raises(ConfigError, match=r"line 7: field 'providers\.0\.models\.0\.n_ctx'"):
        load_settings(path)


def test_invalid_yaml_gets_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8080\nrunner: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_settings(path)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "port: 9000\nrunner:\n  slots: 3\n")
    monkeypatch.setenv("ENCLAVE_PORT", "9100")
    monkeypatch.setenv("ENCLAVE_RUNNER__SLOTS", "5")
    settings = load_settings(path)
    assert settings.port == 9100
    assert settings.runner.slots == 5


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="ENCLAVE_PORT"):
        load_settings()


def test_secrets_must_be_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"metrics_token.*references"):
        load_settings(write(tmp_path, "metrics_token: hunter2\n"))
    monkeypatch.setenv("METRICS", "a-token")
    assert load_settings(write(tmp_path, "metrics_token: env:METRICS\n")).metrics_token


def test_duplicate_model_names_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "default_model: m\n"
        "providers:\n"
        "  - {name: a, type: llamacpp, models: [{name: m, path: builtin:smollm2}]}\n"
        "  - name: b\n"
        "    type: llamacpp\n"
        "    models: [{name: m, path: builtin:smollm2}, {name: m, path: builtin:smollm2}]\n",
    )
    with pytest.raises(ConfigError, match="'b/m' is listed twice"):
        load_settings(path)


def test_admin_key_must_be_long_and_empty_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_ADMIN_KEY", "short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings()
    monkeypatch.setenv("ENCLAVE_ADMIN_KEY", "")
    assert load_settings().admin_key is None


def test_admin_key_is_refused_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "port: 8080\nadmin_key: a-very-long-literal-key\n")
    with pytest.raises(ConfigError, match=r"line 2: field 'admin_key': .*ENCLAVE_ADMIN_KEY"):
        load_settings(path)


def test_environment_is_blamed_when_it_set_the_bad_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "runner:\n  slots: 2\n")
    monkeypatch.setenv("ENCLAVE_RUNNER__SLOTS", "0")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "environment variable ENCLAVE_RUNNER__SLOTS" in str(info.value)
    assert "line" not in str(info.value)


def test_misspelt_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCLAVE_PROT", "9000")
    with pytest.raises(ConfigError, match=r"unknown environment variable.*ENCLAVE_PROT"):
        load_settings()


def test_a_variable_an_env_reference_names_is_not_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``database_url: env:ENCLAVE_DB_URL`` (as the docs show) is a reference, not a typo;
    so is one named from another ENCLAVE_ variable."""
    path = write(tmp_path, "database_url: env:ENCLAVE_DB_URL\n")
    monkeypatch.setenv("ENCLAVE_DB_URL", f"sqlite:///{tmp_path / 'x.db'}")
    assert load_settings(path).resolved_database_url.endswith("x.db")
    monkeypatch.setenv("ENCLAVE_LIMITER_URL", "env:ENCLAVE_REDIS_URL")
    monkeypatch.setenv("ENCLAVE_REDIS_URL", "redis://127.0.0.1:6379/0")
    load_settings(path)
    monkeypatch.setenv("ENCLAVE_REDIS_ULR", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match=r"unknown environment variable.*ENCLAVE_REDIS_ULR"):
        load_settings(path)


def test_unresolvable_metrics_token_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_TOKEN_VAR", raising=False)
    path = write(tmp_path, "metrics_token: env:NO_SUCH_TOKEN_VAR\n")
    with pytest.raises(ConfigError, match=r"line 1: field 'metrics_token': .*not set"):
        load_settings(path)


def test_default_model_must_be_configured(tmp_path: Path) -> None:
    path = write(tmp_path, "default_model: gpt-7\n")
    with pytest.raises(ConfigError, match=r"line 1: field 'default_model': .*gpt-7.*smollm2-135m"):
        load_settings(path)


def test_home_expands_the_tilde(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ENCLAVE_HOME", "~/enclave-state")
    assert load_settings().home == tmp_path / "enclave-state"


def test_database_password_must_be_a_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    literal = write(tmp_path, "database_url: postgresql://enclave:hunter2@db/enclave\n")
    with pytest.raises(ConfigError, match="contains a password") as info:
        load_settings(literal)
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("DB_URL", "postgresql://enclave:hunter2@db/enclave")
    settings = load_settings(write(tmp_path, "database_url: env:DB_URL\n"))
    assert settings.resolved_database_url.endswith("@db/enclave")
    assert "hunter2" not in settings.model_dump_json()
