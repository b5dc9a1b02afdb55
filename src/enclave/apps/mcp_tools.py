"""MCP servers as app tools, with the official SDK's client (``mcp`` v2).

An app's ``spec.mcps`` lists servers; :func:`list_tools` turns each server's
tools into :class:`~enclave.apps.openapi.Operation` objects (method ``MCP``,
path the tool's name), so they join the same routing, decision and argument
steps as an API's operations, and :func:`call_tool` calls one and returns a
:class:`~enclave.apps.calls.CallResult`, so results are rendered, quoted as
untrusted data and scanned by the detectors like an API's.

Connections:

* **Streamable HTTP** (``url``): the host is vetted by the outbound address
  guard before the session (:meth:`EgressGuard.vet`, audited on refusal, so
  the answer can say why), and every HTTP request of the session goes through
  :class:`PinnedTransport`, which vets it again and connects to exactly the
  vetted address (no DNS rebinding). The HTTP client follows no redirects and
  reads no proxy settings from the environment; ``headers`` may use
  ``env:NAME`` (``apps.secret_env``).
* **stdio** (``command``): only command lines the admin lists in
  ``apps.mcp_commands`` are started, with the SDK's minimal environment (no
  Enclave secrets), and the process ends with the session.

Each call opens its own session and closes it, under one deadline. A tool
error (``isError``), a protocol error, a refused address or a timeout is a
result with ``error`` set, never an exception. A tool is read-only only when
its annotations say ``readOnlyHint: true``; every other tool needs the user's
confirmation (:func:`read_only`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jsonschema
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from enclave.apps.calls import CallError, CallResult
from enclave.apps.openapi import EMPTY_ARGUMENTS, Operation, grammar_schema
from enclave.apps.spec import McpSpec
from enclave.chat.constraints import plan_output
from enclave.egress import Caller, EgressGuard, EgressRefused, read_host, shown_url
from enclave.errors import InvalidRequest
from enclave.providers.base import ResponseFormat

log = logging.getLogger(__name__)

MCP_METHOD = "MCP"
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def tool_key(server: str, tool: str) -> str:
    """``MCP <server>/<tool>``: unique within an app, as routing and actions need."""
    return f"{MCP_METHOD} {server}/{tool}"


def is_mcp(operation: Operation) -> bool:
    return operation.method == MCP_METHOD


def read_only(tool: types.Tool) -> bool:
    """Only an explicit ``readOnlyHint: true`` skips confirmation."""
    return bool(tool.annotations is not None and tool.annotations.read_only_hint is True)


def _tool_name(server: str, tool: str) -> str:
    raw = f"{server}_{tool}".lower().replace("-", "_")
    return "".join(c if c in _NAME_CHARS else "_" for c in raw)[:64]


def tool_operation(server: str, tool: types.Tool) -> Operation | None:
    """The tool as an operation the runner can route to, or None if its input schema
    cannot become a grammar (the tool is then not offered; a warning says why)."""
    schema = dict(tool.input_schema or {})
    schema.setdefault("type", "object")
    arguments = dict(EMPTY_ARGUMENTS)
    if schema.get("properties"):
        arguments = {}
        for attempt in (grammar_schema(schema), _without_patterns(grammar_schema(schema))):
            try:
                plan_output(ResponseFormat("json_schema", attempt), (), "none")
            except (InvalidRequest, ValueError, TypeError):
                continue
            arguments = dict(attempt)
            break
        if not arguments:
            log.warning(
                "MCP server %s: tool %s has arguments no grammar can express", server, tool.name
            )
            return None
    description = (tool.description or "").strip()
    return Operation(
        api=server,
        method=MCP_METHOD,
        path=f"{server}/{tool.name}",
        key=tool_key(server, tool.name),
        operation_id=tool.name,  # the tool's own name, as the server knows it
        tool_name=_tool_name(server, tool.name),
        summary=description.splitlines()[0][:200] if description else (tool.title or ""),
        description=description,
        parameters=(),
        body_schema=None,
        body_required=False,
        body_media_type=None,
        arguments_schema=arguments,
        validation_schema=schema,
    )


def _without_patterns(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_patterns(v) for k, v in schema.items() if k != "pattern"}
    if isinstance(schema, list):
        return [_without_patterns(item) for item in schema]
    return schema


def selected(spec: McpSpec, tools: Sequence[types.Tool]) -> list[types.Tool]:
    """The tools the app may use: ``tools.include`` (if given) less ``tools.exclude``."""
    include, exclude = spec.tools.include, set(spec.tools.exclude)
    return [
        tool
        for tool in tools
        if (include is None or tool.name in include) and tool.name not in exclude
    ]


class PinnedTransport(httpx2.AsyncBaseTransport):
    """The SDK's HTTP client's transport: each request vetted, sent to the vetted address.

    :class:`enclave.egress.GuardedTransport` for ``httpx2`` (the MCP SDK's HTTP
    library): the ``Host`` header and the TLS server name stay the original host's.
    """

    def __init__(self, guard: EgressGuard, caller: Caller | None) -> None:
        self.guard = guard
        self.caller = caller
        self.inner = httpx2.AsyncHTTPTransport(trust_env=False)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        addresses = await self.guard.vet(
            url.scheme,
            url.host,
            url.port or (443 if url.scheme == "https" else 80),
            purpose="mcp",
            caller=self.caller,
            has_credentials=bool(url.userinfo),
            where=shown_url(url.scheme, url.host, url.port, url.path),
        )
        extensions = dict(request.extensions)
        if url.scheme == "https" and isinstance(read_host(url.host), str):
            extensions.setdefault("sni_hostname", url.host)
        failure: httpx2.ConnectError | None = None
        for address in addresses:
            host = str(address).split("%", 1)[0]  # no IPv6 scope: the guard checked the address
            pinned = httpx2.Request(
                request.method,
                url.copy_with(host=host),
                headers=request.headers,  # keeps the original Host header
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self.inner.handle_async_request(pinned)
            except httpx2.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self.inner.aclose()


class McpConnector:
    """Opens sessions to an app's MCP servers under the server's rules (module docstring)."""

    def __init__(self, guard: EgressGuard, allowed_commands: Sequence[Sequence[str]]) -> None:
        self.guard = guard
        self.allowed_commands = [list(command) for command in allowed_commands]

    def check_command(self, spec: McpSpec) -> None:
        """Raise :class:`CallError` unless the admin allows this stdio command line."""
        if spec.command is not None and list(spec.command) not in self.allowed_commands:
            raise CallError(
                f"MCP server '{spec.name}': the command {spec.command} is not one of the "
                "server's apps.mcp_commands, so it is not started."
            )

    @asynccontextmanager
    async def session(
        self, spec: McpSpec, headers: dict[str, str], caller: Caller | None, timeout_s: float
    ) -> AsyncIterator[Client]:
        """A connected client; raises :class:`CallError` (refused) or the SDK's errors."""
        if spec.command is not None:
            self.check_command(spec)
            command, *args = spec.command
            server = StdioServerParameters(command=command, args=args)
            async with Client(server, read_timeout_seconds=timeout_s) as client:
                yield client
            return
        assert spec.url is not None
        parts = urlsplit(spec.url)
        try:
            await self.guard.vet(
                parts.scheme,
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
                purpose="mcp",
                caller=caller,
                has_credentials=bool(parts.username or parts.password),
                where=f"MCP server '{spec.name}'",
            )
        except EgressRefused as exc:
            raise CallError(exc.message) from None
        http = httpx2.AsyncClient(
            headers=headers,
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
            transport=PinnedTransport(self.guard, caller),
        )
        async with http:
            transport = streamable_http_client(spec.url, http_client=http)
            async with Client(transport, read_timeout_seconds=timeout_s) as client:
                yield client

    async def list_tools(
        self,
        spec: McpSpec,
        headers: dict[str, str],
        *,
        timeout_s: float,
        caller: Caller | None = None,
    ) -> list[tuple[Operation, bool]]:
        """The app's selected tools of this server as (operation, read only)."""
        async with asyncio.timeout(timeout_s):
            async with self.session(spec, headers, caller, timeout_s) as client:
                listed = await client.list_tools()
        found = []
        for tool in selected(spec, listed.tools):
            operation = tool_operation(spec.name, tool)
            if operation is not None:
                found.append((operation, read_only(tool)))
        return found

    async def call_tool(
        self,
        spec: McpSpec,
        operation: Operation,
        arguments: dict[str, Any],
        headers: dict[str, str],
        *,
        timeout_s: float,
        max_bytes: int,
        caller: Caller | None = None,
    ) -> CallResult:
        """Call one tool. Invalid arguments raise :class:`CallError` (nothing is sent);
        everything after that is a result, with ``error`` set on failure."""
        try:
            jsonschema.validate(arguments, operation.validation_schema)
        except jsonschema.ValidationError as exc:
            raise CallError(f"Invalid arguments for {operation.key}: {exc.message}") from None
        except jsonschema.SchemaError:
            pass  # the server's schema is its own business; the server validates too
        name = operation.operation_id or operation.path
        result = CallResult(method=MCP_METHOD, url=f"mcp://{operation.path}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                async with self.session(spec, headers, caller, timeout_s) as client:
                    answered = await client.call_tool(name, arguments)
            _fill(result, answered, max_bytes)
        except CallError as exc:
            result.error = str(exc)
        except TimeoutError:
            result.error = f"MCP server '{spec.name}' did not answer within {timeout_s:g} s"
        except MCPError as exc:
            result.error = f"MCP server '{spec.name}': {exc.message}"
        except Exception as exc:
            log.warning("MCP server %s: %s failed", spec.name, name, exc_info=True)
            result.error = f"MCP server '{spec.name}' could not be reached ({type(exc).__name__})"
        result.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        return result


def _fill(result: CallResult, answered: Any, max_bytes: int) -> None:
    """Copy a CallToolResult into ``result``: structured content as JSON, else text."""
    texts = [block.text for block in answered.content if isinstance(block, types.TextContent)]
    text = "\n".join(texts)
    if len(text.encode()) > max_bytes:
        text = text.encode()[:max_bytes].decode(errors="ignore")
        result.truncated = True
    if answered.is_error:
        result.status = 500
        result.error = f"the tool reported an error: {text[:500]}" if text else "tool error"
        return
    result.status = 200
    result.text = text
    structured = answered.structured_content
    if structured is not None and not result.truncated:
        if len(json.dumps(structured, ensure_ascii=False).encode()) > max_bytes:
            result.truncated = True  # the text (capped above) is what the answer sees
            return
        result.json = structured
        return
    try:
        result.json = json.loads(text) if text and not result.truncated else None
    except ValueError:
        result.json = None


async def server_health(
    connector: McpConnector,
    spec: McpSpec,
    headers: dict[str, str],
    *,
    timeout_s: float,
    caller: Caller | None = None,
) -> dict[str, Any]:
    """Connect and list tools now: ``status`` "ok" with the tool count, or "error" and why."""
    started = time.perf_counter()
    health: dict[str, Any] = {
        "name": spec.name,
        "transport": "stdio" if spec.command else "streamable-http",
        "target": spec.url or " ".join(spec.command or ()),
        "location": spec.location,
    }
    try:
        tools = await connector.list_tools(spec, headers, timeout_s=timeout_s, caller=caller)
        health.update(status="ok", tools=[op.operation_id for op, _ in tools], error=None)
    except CallError as exc:
        health.update(status="error", tools=[], error=str(exc))
    except TimeoutError:
        health.update(status="error", tools=[], error=f"no answer within {timeout_s:g} s")
    except Exception as exc:
        health.update(status="error", tools=[], error=f"{type(exc).__name__}: {exc}"[:300])
    health["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return health
