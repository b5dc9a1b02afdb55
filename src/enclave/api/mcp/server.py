"""``/mcp``: Enclave as an MCP server (Streamable HTTP), authenticated with API keys.

Built on the official SDK's low-level :class:`mcp.server.Server` and its
``StreamableHTTPSessionManager`` in **stateless, JSON-response** mode: each
POST is one self-contained exchange, so any control-plane replica behind a
load balancer can answer it, and no session outlives its key's revocation.

Every request is authenticated *before* the SDK sees it
(:class:`McpEndpoint`): only ``Authorization: Bearer <Enclave API key>`` is
accepted (never the web UI's cookie, so a browser page cannot ride a signed-in
session), and a refusal is a 401 in the platform's error shape plus an audit
entry. The principal travels to the handlers in the ASGI scope.

The handlers here only translate MCP into calls of
:class:`enclave.mcp.exposed.ExposedWorkspace`, which applies workspace
isolation and the egress rule. Each tool call and resource read is one audit
entry (endpoint ``/mcp <tool>``): key, outcome and latency; the admin page and
``GET /api/admin/mcp/clients`` list them by key.

Offered: tools ``list_knowledge_bases``, ``search``, ``fetch``, ``answer`` and
``app_<name>`` per app of the workspace; resources ``kb://<base>/<document>``.
Not offered: prompts, sampling, elicitation, subscriptions, logging.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import jsonschema
import mcp_types as types
import orjson
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INVALID_PARAMS, INVALID_REQUEST
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from enclave import __version__
from enclave.api.deps import Services, bearer_token
from enclave.auth.principals import Principal
from enclave.errors import AuthenticationFailed, EnclaveError, NotFound
from enclave.gateway.audit import AuditRecord
from enclave.gateway.disclosure import ClearanceRefused
from enclave.mcp.clients import CALL_REASON
from enclave.mcp.exposed import ExposedWorkspace

MCP_PATH = "/mcp"
PRINCIPAL_SCOPE_KEY = "enclave.principal"
APP_TOOL_PREFIX = "app_"
READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
INSTRUCTIONS = (
    "Enclave: the organisation's knowledge bases and assistants. Use search, then fetch "
    "or answer; answers cite their sources. Results never include content above the "
    "class this API key may receive; a refusal says so."
)

_SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 8000},
        "knowledge_bases": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Bases to search; all of the workspace's when left out.",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": 50},
        "threshold": {"type": "number", "minimum": -1, "maximum": 1},
        "mode": {"enum": ["hybrid", "dense", "lexical"]},
        "documents": {"type": "array", "items": {"type": "string"}},
        "metadata": {"type": "object"},
    },
    "required": ["query"],
}
_FETCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {
            "type": "string",
            "description": "chunk:<id> from search, or kb://<base>/<document>.",
        }
    },
    "required": ["id"],
}
_ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1, "maxLength": 8000},
        "knowledge_bases": {"type": "array", "items": {"type": "string"}},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
    },
    "required": ["question"],
}
_APP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string", "minLength": 1, "maxLength": 8000}},
    "required": ["message"],
}

TOOLS = [
    types.Tool(
        name="list_knowledge_bases",
        description="The knowledge bases of this workspace, their classes and whether "
        "this key may receive their content.",
        input_schema={"type": "object", "properties": {}},
        annotations=READ_ONLY,
    ),
    types.Tool(
        name="search",
        description="Hybrid search of knowledge bases: chunk ids, documents, pages, quotes "
        "and scores.",
        input_schema=_SEARCH_SCHEMA,
        annotations=READ_ONLY,
    ),
    types.Tool(
        name="fetch",
        description="The text of a chunk (chunk:<id>) or a whole document (kb://<base>/<doc>).",
        input_schema=_FETCH_SCHEMA,
        annotations=READ_ONLY,
    ),
    types.Tool(
        name="answer",
        description="A grounded answer with verified citations; it says when the sources "
        "disagree and when the answer is not in them.",
        input_schema=_ANSWER_SCHEMA,
        annotations=READ_ONLY,
    ),
]


SCHEMAS = {tool.name: tool.input_schema for tool in TOOLS}


def principal_of(ctx: ServerRequestContext[Any, Any]) -> Principal:
    request = ctx.request
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY) if isinstance(request, Request) else None
    if not isinstance(principal, Principal):  # never: McpEndpoint authenticates first
        raise MCPError(INVALID_REQUEST, "Not authenticated.")
    return principal


def _text_result(payload: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    text = orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=payload, is_error=error
    )


def _str_list(arguments: dict[str, Any], name: str) -> list[str] | None:
    value = arguments.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MCPError(INVALID_PARAMS, f"'{name}' must be a list of strings.")
    return value


class EnclaveMcpServer:
    """The SDK server and its handlers, bound to one app's services."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services
        self.server: Server[Any] = Server(
            "enclave",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_read_resource=self.read_resource,
        )

    def exposed(self) -> ExposedWorkspace:
        svc = self._services()
        return ExposedWorkspace(
            gateway=svc.gateway,
            knowledge=svc.knowledge,
            grounding=svc.grounding,
            apps=svc.apps,
            app_runner=svc.app_runner,
            knowledge_problem=svc.knowledge_problem,
        )

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = principal_of(ctx)
        tools = list(TOOLS)
        for app in self.exposed().list_apps(principal):
            about = app.get("description") or f"the {app['name']} assistant"
            tools.append(
                types.Tool(
                    name=APP_TOOL_PREFIX + app["name"].replace("-", "_"),
                    description=f"Ask the app '{app['name']}': {about}",
                    input_schema=_APP_SCHEMA,
                    # Writes wait for confirmation in Enclave; the tool itself only asks.
                    annotations=types.ToolAnnotations(read_only_hint=True),
                )
            )
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        principal = principal_of(ctx)
        arguments = params.arguments or {}
        tool = params.name
        return await self._audited(
            principal, tool, lambda: self._run_tool(principal, tool, arguments)
        )

    async def _run_tool(
        self, principal: Principal, tool: str, arguments: dict[str, Any]
    ) -> dict[str, Any]:
        exposed = self.exposed()
        endpoint = f"{MCP_PATH} {tool}"
        schema = SCHEMAS.get(tool, _APP_SCHEMA if tool.startswith(APP_TOOL_PREFIX) else None)
        if schema is not None:
            try:
                jsonschema.validate(arguments, schema)
            except jsonschema.ValidationError as exc:
                message = f"Invalid arguments for {tool}: {exc.message}"
                raise MCPError(INVALID_PARAMS, message) from None
        if tool == "list_knowledge_bases":
            return {"knowledge_bases": await exposed.list_bases(principal)}
        if tool == "search":
            return await exposed.search(
                principal,
                str(arguments.get("query") or ""),
                knowledge_bases=_str_list(arguments, "knowledge_bases"),
                top_k=arguments.get("top_k"),
                threshold=arguments.get("threshold"),
                mode=arguments.get("mode") or "hybrid",
                documents=_str_list(arguments, "documents"),
                metadata=arguments.get("metadata"),
                endpoint=endpoint,
            )
        if tool == "fetch":
            return await exposed.fetch(principal, str(arguments.get("id") or ""), endpoint=endpoint)
        if tool == "answer":
            return await exposed.answer(
                principal,
                str(arguments.get("question") or ""),
                _str_list(arguments, "knowledge_bases") or [],
                top_k=arguments.get("top_k"),
                endpoint=endpoint,
            )
        if tool.startswith(APP_TOOL_PREFIX):
            wanted = tool.removeprefix(APP_TOOL_PREFIX)
            for app in exposed.list_apps(principal):
                if app["name"].replace("-", "_") == wanted:
                    message = str(arguments.get("message") or "")
                    return await exposed.ask_app(principal, app["name"], message, endpoint=endpoint)
        raise MCPError(INVALID_PARAMS, f"Unknown tool '{tool}'.")

    async def _audited(
        self,
        principal: Principal,
        tool: str,
        run: Callable[[], Awaitable[dict[str, Any]]],
    ) -> types.CallToolResult:
        """Run a tool; an Enclave error becomes a tool error the model can read."""
        started = time.perf_counter()
        outcome, status, code = "ok", 200, None
        try:
            return _text_result(await run())
        except ClearanceRefused as exc:
            # Disclosure already wrote the refusal's own entry (classes, reason).
            outcome, status, code = "denied", exc.status_code, exc.code
            return _text_result({"error": exc.message, "code": exc.code}, error=True)
        except EnclaveError as exc:
            outcome, status, code = "error", exc.status_code, exc.code
            return _text_result({"error": exc.message, "code": exc.code}, error=True)
        except MCPError:
            outcome, status, code = "error", 400, "invalid_params"
            raise
        finally:
            self._audit(principal, f"{MCP_PATH} {tool}", outcome, status, code, started)

    def _audit(
        self,
        principal: Principal | None,
        endpoint: str,
        outcome: str,
        status: int,
        code: str | None,
        started: float,
    ) -> None:
        self._services().gateway.audit.append(
            AuditRecord(
                time=datetime.now(UTC),
                key_id=principal.key_id if principal else None,
                workspace=principal.workspace if principal else "",
                endpoint=endpoint,
                requested_model="",
                classification="",
                reasons=(CALL_REASON,),
                provider=None,
                location=None,
                outcome=outcome,
                status=status,
                latency_ms=round((time.perf_counter() - started) * 1000, 3),
                error_code=code,
            )
        )

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        principal = principal_of(ctx)
        try:
            documents = await self.exposed().documents(principal)
        except EnclaveError:
            documents = []
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=d["uri"],
                    name=d["name"],
                    title=d["title"],
                    description=f"{d['knowledge_base']}, classified {d['classification']}",
                    mime_type="text/markdown",
                )
                for d in documents
            ]
        )

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        principal = principal_of(ctx)
        uri = str(params.uri)
        started = time.perf_counter()
        outcome, status, code = "ok", 200, None
        try:
            document = await self.exposed().read_document(
                principal, uri, endpoint=f"{MCP_PATH} resources/read"
            )
        except EnclaveError as exc:
            outcome = "denied" if isinstance(exc, ClearanceRefused) else "error"
            status, code = exc.status_code, exc.code
            error_code = -32002 if isinstance(exc, NotFound) else INVALID_REQUEST
            raise MCPError(error_code, exc.message) from None
        finally:
            self._audit(principal, f"{MCP_PATH} resources/read", outcome, status, code, started)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(
                    uri=uri, mime_type="text/markdown", text=document["text"]
                )
            ]
        )


class McpEndpoint:
    """The ASGI endpoint at ``/mcp``: authenticate, then hand over to the SDK."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self._services = services
        self.mcp = EnclaveMcpServer(services)
        self.manager = self._new_manager()

    def _new_manager(self) -> StreamableHTTPSessionManager:
        return StreamableHTTPSessionManager(app=self.mcp.server, stateless=True, json_response=True)

    def running(self) -> AbstractAsyncContextManager[None]:
        """Enter in the app's lifespan: the SDK's task group for requests. A manager runs
        only once, so each lifespan (an app started again in tests) gets a new one."""
        self.manager = self._new_manager()
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        started = time.perf_counter()
        try:
            # A Bearer key only: the web UI's cookie does not open /mcp.
            principal = self._services().keys.authenticate(bearer_token(request))
        except AuthenticationFailed as exc:
            self.mcp._audit(None, MCP_PATH, "denied", 401, exc.code, started)
            raise
        scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.manager.handle_request(scope, receive, send)
