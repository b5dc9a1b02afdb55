"""A ticket system's MCP server, built with the official SDK (tests and examples only).

Two tools: ``search_tickets`` (annotated ``readOnlyHint: true``) and
``create_ticket`` (no annotations, so an Enclave app must ask for
confirmation). One ticket mentions a refund to an IBAN, so its result
carries data a detector classifies. Every call is appended as a JSON line
to the file named by ``--log`` (or ``MCP_TICKETS_LOG``), so a test can prove
what was called, and how often, also when the server is a stdio child.

Run it::

    python -m enclave.testing.mcp_tickets --stdio --log calls.jsonl
    python -m enclave.testing.mcp_tickets --http 8765     # http://127.0.0.1:8765/mcp
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

TICKETS = [
    {"id": 7, "title": "Printer on floor 3 jams", "status": "open"},
    {
        "id": 8,
        "title": "Refund for invoice 2291",
        "status": "open",
        "note": "Refund to IBAN DE89 3704 0044 0532 0130 00",
    },
]


def build_server(log: Path | None) -> MCPServer:
    """The server; ``log`` receives one JSON line per tool call."""
    server = MCPServer("tickets", instructions="The ticket system.")
    created: list[dict[str, Any]] = []

    def record(tool: str, arguments: dict[str, Any]) -> None:
        if log is not None:
            with log.open("a") as handle:
                handle.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")

    @server.tool(
        description="Search tickets in the ticket system by words in their title.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    def search_tickets(query: str) -> dict[str, Any]:
        record("search_tickets", {"query": query})
        return {"tickets": TICKETS}

    @server.tool(description="Create a new ticket in the ticket system with a title.")
    def create_ticket(title: str) -> dict[str, Any]:
        record("create_ticket", {"title": title})
        ticket = {"id": 100 + len(created), "title": title, "status": "open"}
        created.append(ticket)
        return ticket

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true")
    mode.add_argument("--http", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT/mcp")
    parser.add_argument("--log", type=Path, default=os.environ.get("MCP_TICKETS_LOG"))
    args = parser.parse_args()
    server = build_server(Path(args.log) if args.log else None)
    if args.stdio:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
