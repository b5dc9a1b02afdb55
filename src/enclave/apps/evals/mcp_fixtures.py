"""MCP servers that stand in for an app's ``spec.mcps`` during ``enclave test``.

For each MCP server of the app, a real MCP server (the official SDK's, over
Streamable HTTP) answers at ``http://host:PORT/<name>/mcp``, beside the API
:class:`~.fixtures.FixtureServer`, and the draft's ``url`` points there. A
test's ``fixtures`` map the server's name to tool names and their results::

    fixtures:
      tickets:
        search_tickets: {json: {tickets: [...]}, read_only: true,
                         description: Search tickets by words in their title.}

The server offers the union of the tools every test names (the runner lists
tools once per draft); ``description``, ``read_only`` and ``input_schema`` say
what the real server would say about the tool. A call answers with the
current test's result (``status`` 400 or more: a tool error), or a tool error
when the test has no fixture for it. Every call is recorded in the
:class:`FixtureServer`'s log (method ``MCP``, path the tool), so unmatched
calls are reported like an API's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import (
    StreamableHTTPASGIApp,
    StreamableHTTPSessionManager,
)
from starlette.applications import Starlette
from starlette.routing import Route

from enclave.apps.evals.fixtures import FixtureServer, RecordedRequest
from enclave.apps.spec import AppManifest, FixtureResponse

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def declared_tools(manifest: AppManifest) -> dict[str, dict[str, FixtureResponse]]:
    """Server name -> tool -> the first fixture any test gives it (what is listed)."""
    servers = {mcp.name for mcp in manifest.spec.mcps}
    tools: dict[str, dict[str, FixtureResponse]] = {name: {} for name in servers}
    for test in manifest.spec.tests:
        for name, responses in test.fixtures.items():
            if name in servers:
                for tool, response in responses.items():
                    tools[name].setdefault(tool, response)
    return tools


def _result(response: FixtureResponse) -> types.CallToolResult:
    if response.body is not None:
        text = response.body
    else:
        text = json.dumps(response.json_, ensure_ascii=False)
    structured = response.json_ if isinstance(response.json_, dict) else None
    return types.CallToolResult(
        content=[types.TextContent(text=text)],
        structured_content=structured,
        is_error=response.status >= 400,
    )


class McpFixtureServer:
    """The stand-in MCP servers of one app, served on ``fixtures.host`` in a thread."""

    def __init__(self, fixtures: FixtureServer, manifest: AppManifest) -> None:
        self.fixtures = fixtures
        self.tools = declared_tools(manifest)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> McpFixtureServer:
        if self.tools:
            self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _mcp_server(self, name: str) -> Server[Any]:
        listed = [
            types.Tool(
                name=tool,
                description=response.description or tool.replace("_", " "),
                input_schema=response.input_schema or NO_ARGUMENTS,
                annotations=types.ToolAnnotations(read_only_hint=response.read_only),
            )
            for tool, response in self.tools[name].items()
        ]

        async def list_tools(
            ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            return types.ListToolsResult(tools=listed)

        async def call_tool(
            ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            response = self.fixtures.fixtures_for(name).get(params.name)
            self.fixtures.record(
                RecordedRequest(
                    name, "MCP", params.name, {}, params.arguments, response is not None
                )
            )
            if response is None:
                return types.CallToolResult(
                    content=[types.TextContent(text=f"no fixture for tool {params.name}")],
                    is_error=True,
                )
            return _result(response)

        return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)

    def start(self, timeout: float = 30.0) -> None:
        managers = {
            name: StreamableHTTPSessionManager(
                app=self._mcp_server(name), stateless=True, json_response=True
            )
            for name in self.tools
        }

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with AsyncExitStack() as stack:
                for manager in managers.values():
                    await stack.enter_async_context(manager.run())
                yield

        routes = [
            Route(f"/{name}/mcp", endpoint=StreamableHTTPASGIApp(manager), methods=["POST"])
            for name, manager in managers.items()
        ]
        app = Starlette(routes=routes, lifespan=lifespan)
        config = uvicorn.Config(
            app, host=self.fixtures.host, port=0, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name="enclave-mcp-fixtures", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the MCP fixture server did not start")
            time.sleep(0.02)

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the MCP fixture server is not running")
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    def url_for(self, name: str) -> str:
        """The Streamable HTTP URL that stands in for MCP server ``name``."""
        base = self.fixtures.base_url.rsplit(":", 1)[0]
        return f"{base}:{self.port}/{name}/mcp"
