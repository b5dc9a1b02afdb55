"""The App spec: what an app YAML file may say, as pydantic models.

An app file looks like::

    apiVersion: enclave/v1
    kind: App
    metadata: {name: hr-assistant, description: "...", avatar: ./hr.png}
    spec:
      model: default
      system_prompt: You help HR staff.
      knowledge: [hr-policies]
      apis: [{name: hr, url: http://hr.internal/api, schema: ./hr-openapi.yaml}]
      tests: [...]

These models check shape and cross-references only. Reading files with line
numbers, inlining ``schema``/``avatar`` paths and the canonical YAML form live
in :mod:`enclave.apps.manifest`; checks that need the server (classes,
knowledge bases, models) live in :mod:`enclave.apps.service`.

Cross-field problems are raised as :class:`~enclave.settings.FieldProblem`, so
error messages can name the exact field (and the loader its line).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enclave.settings import FieldProblem

APP_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
WRITE_METHODS: list[Method] = ["POST", "PUT", "PATCH", "DELETE"]
FIXTURE_KEY = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) /\S*$")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(SpecModel):
    """Who the app is: ``name`` is its id (``app/<name>`` on ``/v1``)."""

    name: str = Field(pattern=APP_NAME_PATTERN, description="Lower-case letters, digits, '-'.")
    description: str = Field("", max_length=500)
    avatar: str | None = Field(
        None, description="An image path relative to the file (inlined on apply) or a data: URI."
    )


class TokenExchange(SpecModel):
    """OAuth 2.0 Token Exchange (RFC 8693): the signed-in user's access token is swapped
    at the identity provider for a token meant for this API, which then sees the user."""

    token_url: str = Field(description="The provider's token endpoint (http:// or https://).")
    client_id: str = Field(min_length=1, description="Enclave's client id at the provider.")
    client_secret: str | None = Field(
        None, description="env:NAME (in apps.secret_env); sent with HTTP Basic authentication."
    )
    audience: str | None = Field(None, description="The API as the provider names it.")
    scope: str | None = Field(None, description="Space-separated scopes to ask for.")

    @field_validator("token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("client_secret")
    @classmethod
    def _from_env(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("write env:NAME: a secret is read from the server's environment")
        return value


class ApiAuth(SpecModel):
    """How calls to the API prove who they are, when not with a shared service token
    (``headers``): as the signed-in user. A request without a user is refused."""

    user_token: bool = Field(
        False, description="Send the user's own access token (the API trusts the same provider)."
    )
    token_exchange: TokenExchange | None = Field(
        None, description="Exchange the user's token for one for this API (RFC 8693)."
    )

    @model_validator(mode="after")
    def _one_way(self) -> ApiAuth:
        if self.user_token == (self.token_exchange is not None):
            raise FieldProblem(
                ("user_token",), "auth needs exactly one of 'user_token: true' or 'token_exchange'"
            )
        return self


class ApiSpec(SpecModel):
    """One HTTP API the app may call, described by an OpenAPI 3.x document."""

    name: str = Field(pattern=APP_NAME_PATTERN)
    description: str = ""
    url: str = Field(description="Base URL; operation paths are appended to it.")
    schema_: dict[str, Any] | str = Field(
        alias="schema", description="OpenAPI 3.x document, inline or a path (inlined on apply)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Sent with every call; env:NAME is resolved on the server.",
    )
    auth: ApiAuth | None = Field(
        None, description="Call as the signed-in user; without it, headers carry a service token."
    )
    confirm: list[Method] = Field(
        default_factory=lambda: list(WRITE_METHODS),
        description="Methods that never run without the user's confirmation.",
    )
    operations: list[str] | None = Field(
        None, description="Expose only these operations (operationId or 'METHOD /path')."
    )
    timeout_s: float | None = Field(None, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_credential(self) -> ApiSpec:
        if self.auth is not None and any(name.lower() == "authorization" for name in self.headers):
            raise FieldProblem(
                ("headers",),
                "an API with 'auth' gets its Authorization header from the user's token; "
                "remove it from headers",
            )
        return self


class McpToolFilter(SpecModel):
    """Which of an MCP server's tools the app may use."""

    include: list[str] | None = Field(None, description="Only these tools (names).")
    exclude: list[str] = Field(default_factory=list, description="Never these tools.")


class McpSpec(SpecModel):
    """One MCP server the app may use as tools: Streamable HTTP (``url``) or stdio
    (``command``, one of the server's ``apps.mcp_commands``).

    The server is a destination: it receives only requests classified at or
    below ``clearance``. A tool whose annotations do not say ``readOnlyHint:
    true`` runs only after the user's confirmation.
    """

    name: str = Field(pattern=APP_NAME_PATTERN)
    description: str = ""
    url: str | None = Field(None, description="Streamable HTTP endpoint, e.g. https://h/mcp.")
    command: list[str] | None = Field(
        None, min_length=1, description="A stdio server's command line (argv)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Sent with every HTTP request; env:NAME is resolved on the server.",
    )
    location: str | None = Field(None, description="Where it runs, for the audit log.")
    clearance: str | None = Field(
        None,
        description="The highest class it may receive. Default: the lowest class.",
    )
    tools: McpToolFilter = Field(default_factory=McpToolFilter)
    timeout_s: float | None = Field(None, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpSpec:
        if (self.url is None) == (self.command is None):
            raise FieldProblem(("url",), "an MCP server needs exactly one of 'url' or 'command'")
        if self.command is not None and self.headers:
            raise FieldProblem(("headers",), "headers are for a 'url' server, not a 'command'")
        return self


class CallExpectation(SpecModel):
    """A call the app made (or must not make): an API, optionally one operation and arguments."""

    api: str
    operation: str | None = Field(None, description="operationId or 'METHOD /path'.")
    arguments: dict[str, Any] | None = Field(
        None, description="Each key given must be present with this value."
    )


def _call_list(value: Any) -> Any:
    if isinstance(value, str | dict):
        value = [value]
    if isinstance(value, list):
        return [{"api": item} if isinstance(item, str) else item for item in value]
    return value


class Expectation(SpecModel):
    """What one step's answer must satisfy. Every listed check must hold."""

    contains: list[str] = Field(default_factory=list)
    not_contains: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)
    json_schema: dict[str, Any] | None = None
    called: list[CallExpectation] = Field(default_factory=list)
    not_called: list[CallExpectation] = Field(default_factory=list)
    cites: list[str] = Field(default_factory=list, description="Document names.")
    abstains: bool | None = None
    judge: str | None = Field(None, description="A rubric for the judge model.")
    pending: CallExpectation | None = Field(
        None, description="The answer holds this action for confirmation."
    )

    @field_validator("contains", "not_contains", "regex", "cites", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("called", "not_called", mode="before")
    @classmethod
    def _calls(cls, value: Any) -> Any:
        return _call_list(value)

    @field_validator("pending", mode="before")
    @classmethod
    def _pending(cls, value: Any) -> Any:
        return {"api": value} if isinstance(value, str) else value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value


class Step(SpecModel):
    """One turn of a test: a prompt, or an answer to the pending action (``confirm``)."""

    prompt: str | None = None
    confirm: bool | None = Field(
        None, description="true confirms the pending action, false cancels."
    )
    expect: Expectation = Field(default_factory=Expectation)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        if (self.prompt is None) == (self.confirm is None):
            raise FieldProblem(("prompt",), "a step needs exactly one of 'prompt' or 'confirm'")
        return self


class FixtureResponse(SpecModel):
    """A canned API response used by ``enclave test`` instead of the real API, or a
    canned MCP tool (its result, and what the server would say about the tool)."""

    status: int = Field(200, ge=100, le=599)
    json_: Any = Field(None, alias="json")
    body: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    description: str | None = Field(None, description="MCP: the tool's description.")
    read_only: bool = Field(
        False, description="MCP: the tool says readOnlyHint: true (else it needs confirmation)."
    )
    input_schema: dict[str, Any] | None = Field(
        None, description="MCP: the tool's input schema (default: no arguments)."
    )


class AppTest(SpecModel):
    """A named conversation with expectations; ``fixtures`` stand in for the APIs."""

    name: str = Field(min_length=1, max_length=200)
    fixtures: dict[str, dict[str, FixtureResponse]] = Field(
        default_factory=dict,
        description="API name -> 'METHOD /path' -> response; MCP server name -> tool -> result.",
    )
    steps: list[Step] = Field(min_length=1)


class Grounding(SpecModel):
    """How the app's knowledge is used."""

    top_k: int | None = Field(None, ge=1, le=20)
    threshold: float | None = Field(None, ge=-1, le=1)
    when_not_found: Literal["abstain", "answer"] = Field(
        "abstain",
        description="abstain: say it is not found; answer: let the model answer without sources.",
    )


class AppBody(SpecModel):
    """``spec:``: the model, prompt, knowledge, APIs and tests."""

    model: str = Field("default", min_length=1, description="provider/model, model or alias.")
    classification: str | None = Field(None, description="Raises the workspace floor.")
    system_prompt: str = ""
    knowledge: list[str] = Field(default_factory=list, description="Knowledge base names.")
    grounding: Grounding = Field(default_factory=Grounding)
    apis: list[ApiSpec] = Field(default_factory=list)
    mcps: list[McpSpec] = Field(default_factory=list, description="MCP servers as tools.")
    tool_threshold: float | None = Field(None, ge=-1, le=1)
    max_tool_calls: int | None = Field(None, ge=1, le=10)
    tests: list[AppTest] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AppBody:
        names = [api.name for api in self.apis]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise FieldProblem(("apis", index, "name"), f"API '{name}' is declared twice")
        for index, mcp in enumerate(self.mcps):
            if mcp.name in names:
                raise FieldProblem(
                    ("mcps", index, "name"), f"'{mcp.name}' is already an API or MCP server"
                )
            names.append(mcp.name)
        known = set(names)
        servers = {mcp.name for mcp in self.mcps}
        for t, test in enumerate(self.tests):
            for api, responses in test.fixtures.items():
                if api not in known:
                    raise FieldProblem(
                        ("tests", t, "fixtures", api), f"no API named '{api}' in spec.apis"
                    )
                for key in responses:
                    if api in servers:
                        if not TOOL_NAME.match(key):
                            raise FieldProblem(
                                ("tests", t, "fixtures", api, key),
                                "an MCP server's fixture keys are tool names",
                            )
                    elif not FIXTURE_KEY.match(key):
                        raise FieldProblem(
                            ("tests", t, "fixtures", api, key),
                            "fixture keys look like 'GET /path'",
                        )
            for s, step in enumerate(test.steps):
                expect = step.expect
                checks = [("called", c) for c in expect.called]
                checks += [("not_called", c) for c in expect.not_called]
                if expect.pending is not None:
                    checks.append(("pending", expect.pending))
                for field, call in checks:
                    if call.api not in known:
                        raise FieldProblem(
                            ("tests", t, "steps", s, "expect", field),
                            f"no API named '{call.api}' in spec.apis",
                        )
        return self


class AppManifest(SpecModel):
    """A whole app file."""

    api_version: Literal["enclave/v1"] = Field(alias="apiVersion")
    kind: Literal["App"]
    metadata: Metadata
    spec: AppBody

    @property
    def name(self) -> str:
        return self.metadata.name
