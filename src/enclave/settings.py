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
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from enclave.errors import ConfigError
from enclave.yaml_lines import YamlSyntaxError, compose_with_lines

NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"


def _check_secret_reference(value: str) -> str:
    """Accept an ``env:``/``file:`` reference that resolves; refuse literals."""
    if not (value.startswith("env:") or value.startswith("file:")) or len(value) < 5:
        raise ValueError(
            "secrets must be references such as 'env:NAME' or 'file:/path', never literals"
        )
    try:
        resolve_secret(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


SecretReference = Annotated[
    str, AfterValidator(_check_secret_reference), Field(description="env:NAME or file:/path")
]


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


class FieldProblem(ValueError):
    """A cross-field error that knows which field it is about (for the line number)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


def _unknown_class(value: str, classes: list[str]) -> str:
    return f"'{value}' is not one of the classifications ({', '.join(classes)})"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_CLASSIFICATIONS = ["public", "internal", "confidential", "secret"]
LOCAL_PROVIDER_TYPES = ("llamacpp", "sentence-transformers", "whisper")
# An embedded chat model's answer stops here unless the request or the model says otherwise:
# a tiny model that loops would otherwise generate until its context is full (minutes).
EMBEDDED_MAX_TOKENS_DEFAULT = 1024
DEFAULT_DETECTORS: dict[str, str | None] = {
    "api_key": "secret",
    "private_key": "secret",
    "email": "internal",
    "phone": "internal",
    "iban": "confidential",
    "payment_card": "confidential",
    "national_id": "confidential",
}


class ModelConfig(StrictModel):
    """One model served by a provider. For an upstream a bare string is enough."""

    name: str = Field(pattern=NAME_PATTERN, description="Model id clients use.")
    path: str | None = Field(
        None,
        description=(
            "Local providers: 'builtin:smollm2', 'builtin:all-minilm-l6-v2', "
            "'builtin:whisper-tiny-en', or a local file or folder."
        ),
    )
    upstream_name: str | None = Field(
        None, description="Upstream providers: the model id sent upstream; default: name."
    )
    n_ctx: int = Field(4096, ge=256, le=131072, description="Context window in tokens.")
    embeddings: bool = Field(
        False, description="Upstream providers: the model serves /v1/embeddings, not chat."
    )
    max_tokens_default: int | None = Field(
        None,
        ge=1,
        description=(
            "Tokens a chat answer may generate when the request sets no max_tokens; "
            "default: 1024 for embedded models (a looping answer stops), none for upstreams."
        ),
    )

    answer_style: Literal["extractive", "generative", "auto"] | None = Field(
        None,
        description=(
            "Grounded answers: 'extractive' quotes the sources' best sentences (no model call), "
            "'generative' has the model write an answer that is then checked claim by claim, "
            "'auto' quotes for number, date, name and place questions. "
            "Default: extractive for embedded models, generative for upstreams."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value


class ProviderConfig(StrictModel):
    """A source of models: an embedded engine or an OpenAI-compatible upstream."""

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["llamacpp", "sentence-transformers", "whisper", "openai"]
    location: str | None = Field(
        None,
        max_length=64,
        description="Where the data goes, for people and the audit log; default: on-prem.",
    )
    clearance: str | None = Field(
        None,
        description=(
            "Highest classification this provider may receive. Default: the highest class "
            "for embedded engines, the lowest for upstreams."
        ),
    )
    base_url: str | None = Field(
        None, description="Upstreams: the OpenAI-compatible base URL, ending in /v1."
    )
    api_key: SecretReference | None = Field(
        None, description="Upstreams: env:/file: reference to the bearer key, if it needs one."
    )
    connect_timeout_s: float = Field(5.0, gt=0, le=300, description="Upstreams: connect timeout.")
    timeout_s: float = Field(
        600.0, gt=0, le=3600, description="Upstreams: longest wait for any byte of a response."
    )
    max_concurrency: int = Field(
        256, ge=1, le=100_000, description="Upstreams: requests in flight before it counts as busy."
    )
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> ProviderConfig:
        if self.type in LOCAL_PROVIDER_TYPES:
            for field in ("base_url", "api_key"):
                if getattr(self, field) is not None:
                    raise ValueError(f"'{field}' is only for type 'openai' providers")
            missing = [model.name for model in self.models if model.path is None]
            if missing:
                raise ValueError(f"models of a '{self.type}' provider need a path: {missing}")
            if self.type == "llamacpp":
                for model in self.models:
                    if model.max_tokens_default is None:
                        model.max_tokens_default = EMBEDDED_MAX_TOKENS_DEFAULT
                    if model.answer_style is None:
                        model.answer_style = "extractive"
        else:
            if not self.base_url or not self.base_url.startswith(("http://", "https://")):
                raise ValueError("an 'openai' provider needs base_url: http(s)://host/v1")
            if any(model.path for model in self.models):
                raise ValueError("models of an 'openai' provider take no path")
        return self

    @property
    def is_local(self) -> bool:
        return self.type in LOCAL_PROVIDER_TYPES


class LimitsConfig(StrictModel):
    """Limits for one key or workspace. Unset means unlimited."""

    requests_per_minute: int | None = Field(None, ge=1, description="Requests in any 60 s.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Tokens in any 60 s.")
    token_budget: int | None = Field(None, ge=1, description="Tokens per budget_period.")
    budget_period: Literal["day", "month"] = Field(
        "month", description="UTC calendar period of token_budget."
    )


class WorkspaceConfig(StrictModel):
    """Policy for one workspace. Workspaces named here are created at start-up."""

    name: str = Field(pattern=NAME_PATTERN)
    classification: str | None = Field(
        None, description="Floor class of every request; default: the lowest class."
    )
    log_content: bool = Field(False, description="Keep prompt and response text in the audit log.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)


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
    mode: Literal["process", "inline"] = Field(
        "process",
        description=(
            "'process': the embedded engines run in supervised runner processes, so an engine "
            "crash cannot take the gateway down; 'inline': in the control plane's process."
        ),
    )
    extra_buffer_types: Literal["auto", "on", "off"] = Field(
        "auto",
        description=(
            "llama.cpp extra buffer types (weight repacking, AMX). 'auto': off on CPUs where "
            "they are known to crash (AMX), on elsewhere."
        ),
    )
    embed_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Embedder precision. 'auto': bfloat16 on CPUs with AMX or AVX-512 BF16.",
    )
    self_test: bool = Field(
        True, description="One short generation (and embedding) before a runner is ready."
    )
    start_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Longest wait for a runner to load and self-test."
    )
    restart_backoff_max_s: float = Field(
        30.0, ge=0.1, le=3600, description="Longest pause between restarts of a crashed runner."
    )
    restart_wait_s: float = Field(
        20.0,
        ge=0,
        le=600,
        description="How long a new request waits for a restarting runner before a 502.",
    )
    llama_server_path: str | None = Field(
        None,
        description="Joined runners: the llama-server binary; default: llama-server on PATH.",
    )
    llama_server_args: list[str] = Field(
        default_factory=list,
        description="Joined runners: extra llama-server arguments (e.g. ['-ngl', '99']).",
    )
    vllm_path: str | None = Field(
        None,
        description="Joined runners: the vllm binary; default: the installed vllm package's CLI.",
    )
    vllm_args: list[str] = Field(
        default_factory=list,
        description="Joined runners: extra 'vllm serve' arguments.",
    )


URL_SCHEMES: tuple[Literal["http", "https"], ...] = ("http", "https")


class UrlFetchConfig(StrictModel):
    """How ``enclave knowledge add URL`` fetches pages (guarded against SSRF)."""

    timeout_s: float = Field(20.0, gt=0, le=600, description="Whole-fetch timeout.")
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest response body fetched.")
    schemes: list[Literal["http", "https"]] = Field(
        default_factory=lambda: list(URL_SCHEMES), min_length=1, description="Allowed schemes."
    )
    allow_private: bool = Field(
        False,
        description=(
            "Deprecated: use egress.allow. Lets knowledge URL fetches reach every non-public "
            "address except cloud metadata ones."
        ),
    )
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed, each re-checked.")


def _allow_entry(entry: str) -> str:
    from enclave.egress import parse_allow_entry  # the guard owns the syntax

    parse_allow_entry(entry)  # a ValueError names the entry
    return entry


class EgressConfig(StrictModel):
    """Where the server itself may connect beyond the public internet (``egress:``).

    Every URL the server fetches (knowledge URLs, app API calls) is refused when
    it reaches a loopback, private, link-local, shared, multicast, reserved or
    cloud metadata address, unless an entry here allows it (``enclave.egress``).
    """

    allow: list[Annotated[str, AfterValidator(_allow_entry)]] = Field(
        default_factory=list,
        description=(
            "Host names ('hr.internal.example', '*.corp.example') and addresses or CIDRs "
            "('10.20.0.0/16', '127.0.0.1/32') the server may connect to although they are "
            "not public. A metadata address is allowed only by its exact address."
        ),
    )


class KnowledgeConfig(StrictModel):
    """Ingestion, retrieval and grounded answers (``knowledge:``)."""

    embedding_model: str = Field(
        "all-minilm-l6-v2",
        description="Embedding model ('provider/model' or name) of every knowledge base.",
    )
    chunk_tokens: int = Field(220, ge=32, le=2048, description="Token budget of a chunk.")
    chunk_overlap: int = Field(40, ge=0, le=512, description="Tokens shared by adjacent chunks.")
    embed_batch: int = Field(32, ge=1, le=1024, description="Chunks embedded per batch.")
    max_document_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest document accepted (uploads and URLs)."
    )
    top_k: int = Field(5, ge=1, le=50, description="Passages given to a grounded answer.")
    threshold: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description="Minimum cosine similarity of a passage to the query; below it, nothing.",
    )
    abstain_message: str = Field(
        "I can't find this in the knowledge base.",
        min_length=1,
        description="The answer when nothing relevant is found.",
    )
    unsupported: Literal["remove", "flag"] = Field(
        "remove",
        description=(
            "A generated sentence whose numbers, dates, names or rare words no source holds: "
            "removed from the answer, or kept without a citation (both listed in "
            "grounding.unsupported)."
        ),
    )
    url_fetch: UrlFetchConfig = Field(default_factory=UrlFetchConfig)


class AudioConfig(StrictModel):
    """Speech to text: ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

    max_file_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, description="Largest audio file accepted; larger is 413."
    )


class AppsConfig(StrictModel):
    """Declarative apps: their API calls, tool routing and pending actions (``apps:``)."""

    tool_threshold: float = Field(
        0.3,
        ge=-1.0,
        le=1.0,
        description=(
            "Minimum cosine similarity between a user message and an API operation's "
            "description for the operation to be offered to the model."
        ),
    )
    max_tool_calls: int = Field(
        3,
        ge=1,
        le=10,
        description="Default cap on API calls per user message (an app may lower it).",
    )
    shortlist_margin: float = Field(
        0.1,
        ge=0.0,
        le=2.0,
        description=(
            "Operations offered to the model are those within this similarity of the best "
            "match (at most three)."
        ),
    )
    answer_max_tokens: int = Field(
        512,
        ge=16,
        le=32768,
        description="Tokens an app's answer may have when the request sets no max_tokens.",
    )
    call_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one API call.")
    max_response_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest API response read; larger ones fail the call."
    )
    result_chars: int = Field(
        4000, ge=200, le=100_000, description="API result text shown to the model, at most."
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description=(
            "Environment variables apps may reference as env:NAME in API headers. "
            "Empty: none, so an app cannot read the server's environment."
        ),
    )
    mcp_commands: list[list[str]] = Field(
        default_factory=list,
        description=(
            "stdio MCP servers apps may start, each an exact command line (argv), e.g. "
            "[python, -m, our_files_server]. Empty: apps may use only MCP servers by URL."
        ),
    )
    action_ttl_s: int = Field(
        3600, ge=60, le=7 * 86400, description="How long a pending action waits for confirmation."
    )
    draft_ttl_s: int = Field(
        3600, ge=60, le=86400, description="How long a draft (an app under test) is kept."
    )
    max_avatar_bytes: int = Field(256 * 1024, ge=1024, description="Largest app avatar image.")


class InputLimitsConfig(StrictModel):
    """Bounds on what one request may make the server do (``input_limits:``).

    Every input is cut or refused before it is tokenised, parsed or stored, so
    its cost stays bounded whatever the client sends.
    """

    chars_per_token: int = Field(
        8,
        ge=2,
        le=64,
        description=(
            "Characters a token is assumed to cover at most. An embedding input is cut to "
            "context x this many characters before tokenising; a prompt longer than that "
            "is refused (context_length_exceeded) without tokenising it."
        ),
    )
    max_embedding_chars: int = Field(
        2_000_000,
        ge=1024,
        description=(
            "Characters one embedding request may carry in all its inputs together, "
            "counted after each input is cut to the model's context (400 above)."
        ),
    )
    max_json_depth: int = Field(
        64, ge=4, le=512, description="Deepest nesting of a JSON body or JSON field (400 above)."
    )
    max_model_name_chars: int = Field(
        256, ge=16, le=4096, description="Longest model name in a request (400 above)."
    )
    max_name_chars: int = Field(
        128, ge=16, le=4096, description="Longest name of a key, knowledge base or app (400 above)."
    )
    max_title_chars: int = Field(
        512, ge=16, le=65536, description="Longest title of a conversation or document (400 above)."
    )
    max_prompt_chars: int = Field(
        65536,
        ge=1024,
        le=4 * 1024 * 1024,
        description="Longest app prompt text (system_prompt, descriptions, welcome; 400 above).",
    )


class UiConfig(StrictModel):
    """The web UI's sign-in sessions (``ui:``)."""

    session_ttl_s: int = Field(
        28800,
        ge=300,
        le=30 * 86400,
        description="Seconds a UI session lasts after sign-in (it ends sooner if its key does).",
    )
    answer_max_tokens: int = Field(
        1024,
        ge=16,
        le=32768,
        description="Length cap of an answer in a UI conversation.",
    )
    secure_cookies: bool = Field(
        False,
        description=(
            "Always mark the session cookie Secure. Without it the cookie is Secure only on "
            "requests that arrive over https; set it behind a TLS-terminating proxy."
        ),
    )


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


DEPLOYMENT_ENGINES = ("llamacpp", "vllm", "llama-server", "sentence-transformers")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> int:
    """Seconds in a duration such as ``90s``, ``30m``, ``2h`` or ``1d``."""
    text = value.strip()
    unit = _DURATION_UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise ValueError(f"'{value}' is not a duration such as 90s, 30m, 2h or 1d")
    return int(text[:-1]) * unit


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class RemoteRunnersConfig(StrictModel):
    """How the control plane talks to runners that join it (``enclave runner --join``)."""

    heartbeat_interval_s: float = Field(
        2.0, gt=0, le=60, description="How often a joined runner sends its figures."
    )
    heartbeat_timeout_s: float = Field(
        6.0, gt=0, le=600, description="A runner silent this long is down; nothing goes to it."
    )
    ca_file: str | None = Field(
        None,
        description=(
            "PEM bundle that verifies runners serving HTTPS (--tls-cert); null: the system's CAs."
        ),
    )
    load_wait_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="How long a request waits for a keep_alive deployment to load on first use.",
    )


class DeploymentConfig(StrictModel):
    """A model the control plane keeps served on runners (``deployments:``).

    Placed by ``enclave.runners.placement``; also the entries of the file given
    to ``enclave deployments apply -f``.
    """

    model: str = Field(pattern=NAME_PATTERN, description="Model id clients use.")
    source: str = Field(
        description="Where the runner finds the weights: 'builtin:NAME' or 'file:/path'."
    )
    engine: Literal["llamacpp", "vllm", "llama-server", "sentence-transformers"] = Field(
        description="Engine that serves it; only runners that offer it are used."
    )
    memory_gb: float = Field(gt=0, le=4096, description="Memory one replica needs, in GB.")
    replicas: int = Field(1, ge=1, le=64, description="Replicas wanted, on distinct runners.")
    keep_alive: Annotated[str | None, AfterValidator(_check_duration)] = Field(
        None,
        description="Load on first use, unload after this long idle ('30m'); null: always on.",
    )
    priority: Literal["high", "normal", "low"] = Field(
        "normal", description="A higher one may evict an idle lower one."
    )
    clearance: str | None = Field(
        None,
        description="Class of data it serves; only runners cleared for it. Default: the highest.",
    )

    @field_validator("source")
    @classmethod
    def _source_is_a_reference(cls, value: str) -> str:
        kind, _, target = value.partition(":")
        if kind not in ("builtin", "file") or not target.strip():
            raise ValueError("source must be 'builtin:NAME' or 'file:/path/to/weights'")
        return value

    @property
    def keep_alive_s(self) -> int | None:
        return None if self.keep_alive is None else parse_duration(self.keep_alive)


def check_deployments(deployments: list[DeploymentConfig], classes: list[str]) -> None:
    """Cross-field checks: unique models, known clearance (set to the highest when unset)."""
    seen: set[str] = set()
    for index, deployment in enumerate(deployments):
        if deployment.model in seen:
            raise FieldProblem(
                (index, "model"), f"'{deployment.model}' is deployed twice; merge the entries"
            )
        seen.add(deployment.model)
        if deployment.clearance is None:
            deployment.clearance = classes[-1]
        elif deployment.clearance not in classes:
            raise FieldProblem((index, "clearance"), _unknown_class(deployment.clearance, classes))


class AuditConfig(StrictModel):
    """The audit log's signing key and checkpoints (``audit:``); see docs/operations.md."""

    signing_key: SecretReference | None = Field(
        None,
        description=(
            "Reference (env:/file:) to the Ed25519 private key (PEM) that signs the audit "
            "log's head and checkpoints; null: <home>/audit-signing-key.pem, created on "
            "first start."
        ),
    )
    trusted_public_keys: list[Path] = Field(
        default_factory=list,
        description="PEM public keys of earlier signing keys, still trusted for old checkpoints.",
    )
    checkpoint_interval_s: float = Field(
        60.0, gt=0, le=86400, description="Seconds between signed checkpoints, at most."
    )
    checkpoint_entries: int = Field(
        1000, ge=1, le=10_000_000, description="Entries between signed checkpoints, at most."
    )


class ClusterConfig(StrictModel):
    """Several replicas on one database (``cluster:``); see docs/operations.md "Replicas"."""

    replicas: bool = Field(
        False,
        description=(
            "True when several `enclave serve` processes share this database (Postgres and "
            "a limiter_url needed): one audit chain locked in the database, ingestion jobs "
            "with leases, uploads kept in the database."
        ),
    )
    replica_id: str | None = Field(
        None,
        max_length=64,
        description=(
            "This replica's name in cluster_members; null: the host name and a random suffix."
        ),
    )
    heartbeat_s: float = Field(
        5.0, gt=0, le=300, description="Seconds between a replica's heartbeats."
    )
    member_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "A replica silent this long is dead: its requests in flight become `interrupted` "
            "audit entries, written by another replica."
        ),
    )
    job_lease_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "An ingestion job's lease; renewed while the job runs, taken over when it lapses."
        ),
    )
    drain_s: float = Field(
        5.0,
        ge=0,
        le=600,
        description=(
            "On SIGTERM: seconds /readyz answers 503 (so the load balancer stops sending) "
            "before the server stops accepting connections."
        ),
    )
    grace_s: float = Field(
        30.0, ge=0, le=3600, description="On SIGTERM: seconds in-flight requests get to finish."
    )


def _check_group_refs(value: list[str]) -> list[str]:
    """``group:NAME`` entries (the only kind of subject a role is granted to)."""
    for entry in value:
        if not entry.startswith("group:") or not entry[6:].strip():
            raise ValueError(f"'{entry}' must be written 'group:NAME'")
    return value


GroupRefs = Annotated[list[str], AfterValidator(_check_group_refs)]


class OidcConfig(StrictModel):
    """The OpenID Connect provider people sign in with (``identity.oidc``); docs/identity.md."""

    issuer: str = Field(
        description=(
            "The provider's issuer URL; its /.well-known/openid-configuration is read at "
            "sign-in and ID tokens must name exactly this issuer."
        )
    )
    client_id: str = Field(min_length=1, description="Enclave's client id at the provider.")
    client_secret: SecretReference | None = Field(
        None, description="Reference (env:/file:) to the client secret; null: a public client."
    )
    groups_claim: str = Field(
        "groups", min_length=1, description="The ID token (or userinfo) claim listing the groups."
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email"],
        description="Scopes asked for at sign-in ('openid' is always added).",
    )
    display_name: str | None = Field(
        None,
        max_length=64,
        description="The provider's name on the sign-in button; null: the issuer's host name.",
    )
    refresh_s: int = Field(
        300,
        ge=0,
        le=86400,
        description=(
            "Seconds after which a signed-in user's groups are read again from the "
            "provider (userinfo, with the refresh token when the access token has run out)."
        ),
    )

    @field_validator("issuer")
    @classmethod
    def _issuer_is_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or any(c in value for c in "?#\r\n"):
            raise ValueError("issuer must be an http(s):// URL without query or fragment")
        return value.rstrip("/")


class WorkspaceRolesConfig(StrictModel):
    """Who may use one workspace (``identity.workspaces.<name>``)."""

    members: GroupRefs = Field(
        default_factory=list, description="Groups whose people chat, query and use apps."
    )
    builders: GroupRefs = Field(
        default_factory=list,
        description="Groups whose people also manage knowledge bases and apply apps.",
    )


class ScimConfig(StrictModel):
    """Provisioning by the identity provider over SCIM 2.0 (``identity.scim``); docs/identity.md."""

    token: SecretReference = Field(
        description=(
            "Reference (env:/file:) to the bearer token the provider's SCIM client sends; "
            "at least 20 characters. Only /scim/v2 accepts it."
        )
    )
    match_claim: str = Field(
        "sub",
        min_length=1,
        max_length=64,
        description=(
            "The ID token claim that equals a SCIM user's externalId, matched at their first "
            "sign-in: 'sub' (Keycloak, Okta) or 'oid' (Entra ID)."
        ),
    )


class IdentityConfig(StrictModel):
    """People and their roles (``identity:``): sign-in with OpenID Connect; docs/identity.md."""

    oidc: OidcConfig | None = Field(None, description="The identity provider; null: keys only.")
    scim: ScimConfig | None = Field(
        None,
        description=(
            "Let the provider create, change and remove users and groups at /scim/v2; "
            "null: off (404). Needs identity.oidc."
        ),
    )
    admins: GroupRefs = Field(
        default_factory=list,
        description="Groups whose people are admins (workspaces, providers, keys, audit).",
    )
    workspaces: dict[str, WorkspaceRolesConfig] = Field(
        default_factory=dict,
        description="Workspace name -> the groups of its members and builders.",
    )
    self_registration: bool = Field(
        True,
        description=(
            "Create a user on first sign-in. False: a new user waits (disabled) until an admin "
            "enables them; admins (by group) are let in."
        ),
    )

    @field_validator("workspaces")
    @classmethod
    def _workspace_names(cls, value: dict[str, WorkspaceRolesConfig]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ValueError(f"'{name}' is not a workspace name ({NAME_PATTERN})")
        return value

    @model_validator(mode="after")
    def _scim_needs_oidc(self) -> IdentityConfig:
        if self.scim is not None and self.oidc is None:
            raise ValueError(
                "identity.scim needs identity.oidc: provisioned people sign in with the provider"
            )
        return self


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
    classifications: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CLASSIFICATIONS),
        min_length=1,
        description="Data classes, lowest first.",
    )
    detectors: dict[str, str | None] = Field(
        default_factory=lambda: dict(DEFAULT_DETECTORS),
        description="Detector name -> the class its findings raise a request to; null: off.",
    )
    workspaces: list[WorkspaceConfig] = Field(default_factory=list)
    key_limits: LimitsConfig = Field(
        default_factory=LimitsConfig, description="Limits every API key gets."
    )
    limiter_url: SecretReference | None = Field(
        None,
        description="Shared limiter store for several replicas (env:/file: reference to a "
        "redis:// URL); default: in-process.",
    )
    providers: list[ProviderConfig] = Field(default_factory=default_providers)
    aliases: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Alias -> 'provider/model' targets in preference order.",
    )
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    apps: AppsConfig = Field(default_factory=AppsConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    input_limits: InputLimitsConfig = Field(default_factory=InputLimitsConfig)
    remote_runners: RemoteRunnersConfig = Field(default_factory=RemoteRunnersConfig)
    deployments: list[DeploymentConfig] = Field(
        default_factory=list,
        description="Models placed on runners by memory; `enclave deployments apply` adds more.",
    )
    public_url: str | None = Field(
        None,
        description=(
            "The address clients reach the server at (https://ai.example.com); redirects are "
            "built from it, never from the Host header. Null: redirects carry only a path."
        ),
    )
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

    @field_validator("public_url")
    @classmethod
    def _public_url_is_absolute(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")) or any(c in value for c in "?#\r\n"):
            raise ValueError("public_url must be an http(s):// URL without query or fragment")
        return value.rstrip("/")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url")
    @classmethod
    def _database_url_hides_password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith(("env:", "file:")):
            return _check_secret_reference(value)
        if _url_password(value):
            raise ValueError(
                "the URL contains a password; give it as a reference instead, "
                "e.g. database_url: env:ENCLAVE_DB_URL"
            )
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> Settings:
        """Cross-field checks: classes exist, aliases and the default model point somewhere."""
        classes = self.classifications
        if len(set(classes)) != len(classes):
            raise FieldProblem(("classifications",), "a class is listed twice")
        for index, provider in enumerate(self.providers):
            if provider.clearance is None:
                provider.clearance = classes[-1] if provider.is_local else classes[0]
            elif provider.clearance not in classes:
                raise FieldProblem(
                    ("providers", index, "clearance"), _unknown_class(provider.clearance, classes)
                )
            if provider.location is None:
                provider.location = (
                    "on-prem" if provider.is_local else urlsplit(provider.base_url or "").hostname
                )
        for index, workspace in enumerate(self.workspaces):
            if workspace.classification is None:
                workspace.classification = classes[0]
            elif workspace.classification not in classes:
                raise FieldProblem(
                    ("workspaces", index, "classification"),
                    _unknown_class(workspace.classification, classes),
                )
        names = [workspace.name for workspace in self.workspaces]
        if len(set(names)) != len(names):
            raise FieldProblem(("workspaces",), "a workspace is listed twice")
        for detector, level in self.detectors.items():
            if level is not None and level not in classes:
                raise FieldProblem(("detectors", detector), _unknown_class(level, classes))
        qualified = {
            f"{provider.name}/{model.name}"
            for provider in self.providers
            for model in provider.models
        }
        bare = {model.name for provider in self.providers for model in provider.models}
        for alias, targets in self.aliases.items():
            if alias in bare or alias in qualified:
                raise FieldProblem(("aliases", alias), "an alias cannot reuse a model name")
            if not targets:
                raise FieldProblem(("aliases", alias), "an alias needs at least one target")
            for target in targets:
                if target not in qualified:
                    raise FieldProblem(
                        ("aliases", alias),
                        f"'{target}' is not a configured provider/model "
                        f"(known: {', '.join(sorted(qualified))})",
                    )
        try:
            check_deployments(self.deployments, classes)
        except FieldProblem as problem:
            raise FieldProblem(("deployments", *problem.loc), problem.message) from None
        knowledge = self.knowledge
        if knowledge.chunk_overlap >= knowledge.chunk_tokens:
            raise FieldProblem(
                ("knowledge", "chunk_overlap"), "must be smaller than knowledge.chunk_tokens"
            )
        # The default is only checked at use: a deployment without an embedding
        # model simply has no knowledge features.
        explicit = "embedding_model" in knowledge.model_fields_set
        if explicit and knowledge.embedding_model not in bare | qualified:
            raise FieldProblem(
                ("knowledge", "embedding_model"),
                f"'{knowledge.embedding_model}' is not a configured model "
                f"(known: {', '.join(sorted(bare))})",
            )
        deployed = {deployment.model for deployment in self.deployments}
        if self.default_model not in bare | qualified | set(self.aliases) | deployed:
            known = ", ".join(sorted(bare | set(self.aliases) | deployed)) or "none"
            raise FieldProblem(
                ("default_model",),
                f"'{self.default_model}' is not a configured model or alias (known: {known})",
            )
        return self

    def workspace_policy(self, name: str) -> WorkspaceConfig:
        """The configured policy of a workspace, or the defaults for an unlisted one."""
        for workspace in self.workspaces:
            if workspace.name == name:
                return workspace
        return WorkspaceConfig(name=name, classification=self.classifications[0])

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
                qualified = f"{provider.name}/{model.name}"
                if qualified in seen_models:
                    raise ValueError(f"model '{qualified}' is listed twice")
                seen_models.add(qualified)
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
OTHER_ENVIRONMENT = {"ENCLAVE_CONFIG", "ENCLAVE_URL", "ENCLAVE_API_KEY"}


def _env_references(value: Any) -> set[str]:
    """The variable names of every ``env:NAME`` reference in a parsed config."""
    if isinstance(value, str):
        return {value.removeprefix("env:").strip()} if value.startswith("env:") else set()
    if isinstance(value, dict):
        return set().union(*(_env_references(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_env_references(item) for item in value))
    return set()


def _unknown_environment(data: Any = None) -> list[str]:
    """``ENCLAVE_*`` variables that name no setting: almost always a typo.

    Variables that an ``env:`` reference names (in the config, or in another
    ``ENCLAVE_*`` variable) are secrets by design, e.g. ``database_url:
    env:ENCLAVE_DB_URL``.
    """
    fields = {name.upper() for name in Settings.model_fields}
    referenced = _env_references(data) | _env_references(
        [value for name, value in os.environ.items() if name.startswith("ENCLAVE_")]
    )
    unknown = []
    for name in os.environ:
        if not name.startswith("ENCLAVE_") or name in OTHER_ENVIRONMENT or name in referenced:
            continue
        top = name.removeprefix("ENCLAVE_").split("__", 1)[0]
        if top not in fields:
            unknown.append(name)
    return sorted(unknown)


def _compose_with_lines(text: str, source: str) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Parse YAML, returning the data and a map from field path to 1-based line."""
    try:
        data, lines = compose_with_lines(text, source)
    except YamlSyntaxError as exc:
        raise ConfigError(str(exc)) from exc
    if not lines:  # an empty file
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}, line 1: the top level must be a mapping of settings")
    return data, lines


def _describe(error: Any, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(error["loc"])
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        loc, error = (*loc, *problem.loc), {**error, "msg": problem.message}
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
    unknown = _unknown_environment(data)
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
