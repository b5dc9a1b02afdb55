"""The one settings object, loaded from ``enclave.yaml`` and ``ENCLAVE_*``.

Precedence, highest first: ``ENCLAVE_*`` environment variables (nested fields
use ``__``, e.g. ``ENCLAVE_RUNNER__SLOTS=4``), then the YAML file, then the
defaults here. The file is composed with PyYAML's node API so that every value
keeps its line number; when validation fails, :func:`load_settings` raises a
:class:`~enclave.errors.ConfigError` naming the file, line and dotted field.

Secrets never appear as literals in the file: fields typed
:data:`SecretReference` take ``env:NAME`` or ``file:/path`` and are resolved
only when used, so the settings object can be logged or dumped safely.

Settings are created by the CLI (or a test) and passed down through
``create_app(settings)``; nothing builds them at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from enclave.errors import ConfigError

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"


def _check_secret_reference(value: str) -> str:
    if not (value.startswith("env:") or value.startswith("file:")) or len(value) < 5:
        raise ValueError(
            "secrets must be references such as 'env:NAME' or 'file:/path', never literals"
        )
    return value


SecretReference = Annotated[str, Field(description="env:NAME or file:/path")]


def resolve_secret(reference: str) -> str:
    """Resolve an ``env:NAME`` or ``file:/path`` reference to its value."""
    kind, _, target = reference.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise ConfigError(f"secret reference '{reference}': environment variable not set")
        return value
    if kind == "file":
        try:
            return Path(target).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret reference '{reference}': {exc.strerror}") from exc
    raise ConfigError(f"secret reference '{reference}' must start with env: or file:")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(StrictModel):
    """One model served by a provider."""

    name: str = Field(pattern=NAME_PATTERN, description="Model id clients use.")
    path: str = Field(
        description="'builtin:smollm2', 'builtin:all-minilm-l6-v2', or a local file or folder."
    )
    n_ctx: int = Field(4096, ge=256, le=131072, description="Context window in tokens.")


class ProviderConfig(StrictModel):
    """A source of models. Foundation ships the two embedded engines."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["llamacpp", "sentence-transformers"]
    models: list[ModelConfig] = Field(min_length=1)


class RunnerConfig(StrictModel):
    """How the embedded llama.cpp models are scheduled."""

    slots: int = Field(
        2, ge=1, le=64, description="llama.cpp contexts per chat model (parallel sequences)."
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads per slot; default: cores / slots."
    )
    queue_size: int = Field(
        64, ge=1, le=100_000, description="Requests waiting per model before 429."
    )
    n_batch: int = Field(512, ge=8, le=8192, description="Prompt tokens evaluated per batch.")


def default_providers() -> list[ProviderConfig]:
    return [
        ProviderConfig(
            name="local",
            type="llamacpp",
            models=[ModelConfig(name="smollm2-135m", path="builtin:smollm2")],
        ),
        ProviderConfig(
            name="local-embed",
            type="sentence-transformers",
            models=[
                ModelConfig(name="all-minilm-l6-v2", path="builtin:all-minilm-l6-v2", n_ctx=256)
            ],
        ),
    ]


class Settings(BaseSettings):
    """Everything the control plane needs to start. Validated once, at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="ENCLAVE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(
        default_factory=lambda: Path.home() / ".local" / "share" / "enclave",
        description="Folder for all state (the SQLite database); '~' is expanded.",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="Port to listen on.")
    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL, or an env:/file: reference to one; default: SQLite at "
            "<home>/enclave.db. A URL with a password must be a reference."
        ),
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_key: SecretStr | None = Field(
        None,
        description="Set via ENCLAVE_ADMIN_KEY only: use this admin key instead of generating one.",
    )
    metrics_token: SecretReference | None = Field(
        None, description="Reference (env:/file:) to a token that may read /metrics."
    )
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    providers: list[ProviderConfig] = Field(default_factory=default_providers)
    # After providers, so that its validator can see them.
    default_model: str = Field(
        "smollm2-135m", description="Model used when a request names the model 'default'."
    )

    @field_validator("admin_key", mode="before")
    @classmethod
    def _admin_key_is_long(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None  # an empty ENCLAVE_ADMIN_KEY means "not set"
        secret = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if len(secret) < 16:
            raise ValueError("ENCLAVE_ADMIN_KEY must be at least 16 characters long")
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token_resolves(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_secret_reference(value)
        try:
            resolve_secret(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_hides_password(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("env:", "file:")):
            if value is not None:
                try:
                    resolve_secret(value)
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
            return value
        if _url_password(value):
            raise ValueError(
                "the URL contains a password; give it as a reference instead, "
                "e.g. database_url: env:ENCLAVE_DB_URL"
            )
        return value

    @field_validator("default_model")
    @classmethod
    def _default_model_exists(cls, value: str, info: ValidationInfo) -> str:
        providers = info.data.get("providers")
        if providers is None:  # providers failed validation; that error is reported
            return value
        names = {model.name for provider in providers for model in provider.models}
        if value not in names:
            known = ", ".join(sorted(names)) or "none"
            raise ValueError(f"'{value}' is not a configured model (known: {known})")
        return value

    @field_validator("providers")
    @classmethod
    def _unique_names(cls, providers: list[ProviderConfig]) -> list[ProviderConfig]:
        seen_providers: set[str] = set()
        seen_models: set[str] = set()
        for provider in providers:
            if provider.name in seen_providers:
                raise ValueError(f"provider name '{provider.name}' is used twice")
            seen_providers.add(provider.name)
            for model in provider.models:
                if model.name in seen_models:
                    raise ValueError(f"model name '{model.name}' is used twice")
                seen_models.add(model.name)
        return providers

    @property
    def resolved_database_url(self) -> str:
        """The database URL with any reference resolved. Never log it."""
        if self.database_url is None:
            return f"sqlite:///{self.home / 'enclave.db'}"
        if self.database_url.startswith(("env:", "file:")):
            return resolve_secret(self.database_url)
        return self.database_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file; the file arrives as init kwargs.
        return (env_settings, init_settings)


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except ArgumentError:
        return None


# Variables with the ENCLAVE_ prefix that are not settings fields.
OTHER_ENVIRONMENT = {"ENCLAVE_CONFIG"}


def _unknown_environment() -> list[str]:
    """``ENCLAVE_*`` variables that name no setting: almost always a typo."""
    fields = {name.upper() for name in Settings.model_fields}
    unknown = []
    for name in os.environ:
        if not name.startswith("ENCLAVE_") or name in OTHER_ENVIRONMENT:
            continue
        top = name.removeprefix("ENCLAVE_").split("__", 1)[0]
        if top not in fields:
            unknown.append(name)
    return sorted(unknown)


def _compose_with_lines(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Parse YAML, returning the data and a map from field path to 1-based line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if root is None:
        return {}, {}
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = (*path, key_node.value)
                walk(value_node, key_path)
                lines[key_path] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, (*path, index))

    walk(root, ())
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}, line 1: the top level must be a mapping of settings")
    return data, lines


def _describe(error: Any, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(error["loc"])
    field = ".".join(str(part) for part in loc) or "(top level)"
    # The environment wins over the file, so a variable that sets the field is to blame.
    env_names = [
        "ENCLAVE_" + "__".join(str(p).upper() for p in loc[:cut]) for cut in range(len(loc), 0, -1)
    ]
    env_name = next((name for name in env_names if name in os.environ), None)
    if env_name is not None:
        where = f"environment variable {env_name}"
    elif loc and loc[:1] in lines:
        line = next(lines[loc[:cut]] for cut in range(len(loc), 0, -1) if loc[:cut] in lines)
        where = f"{source}, line {line}"
    else:
        where = source
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; see docs/configuration.md)"
    return f"{where}: field '{field}': {message}"


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build validated settings from a YAML file (optional) and the environment.

    ``config_path`` falls back to ``ENCLAVE_CONFIG``. ``overrides`` are values
    already validated by the caller (CLI flags such as ``--port``) and win over both.
    """
    path = config_path or os.environ.get("ENCLAVE_CONFIG")
    data: dict[str, Any] = {}
    lines: dict[tuple, int] = {}
    source = "environment"
    if path:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        data, lines = _compose_with_lines(text, source)
    if "admin_key" in data:
        raise ConfigError(
            f"{source}, line {lines.get(('admin_key',), 1)}: field 'admin_key': "
            "set it only through the ENCLAVE_ADMIN_KEY environment variable, never in a file"
        )
    unknown = _unknown_environment()
    if unknown:
        raise ConfigError(
            "unknown environment variable(s): "
            + ", ".join(unknown)
            + " (check the spelling; see docs/configuration.md)"
        )
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = [_describe(err, lines, source) for err in exc.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings
