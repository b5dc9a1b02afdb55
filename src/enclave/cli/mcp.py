"""``enclave mcp``: MCP servers used by apps (with health), and ``/mcp``'s clients.

Both talk to the running server: a server's health is what the server itself
can reach (its outbound address guard, its secrets, its stdio commands).
"""

from __future__ import annotations

import json

import typer

from enclave.cli.client import KeyOption, UrlOption, connect
from enclave.cli.common import ConfigOption, JsonOption, output_console, plain_table

app = typer.Typer(
    help="MCP both ways: the servers apps use as tools, and the clients of /mcp.",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List the MCP servers the workspace's apps use, each checked now.

    Example: enclave mcp list
    """
    with connect(config, url, key) as client:
        data = client.call("GET", "/api/mcp/servers")["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data:
        typer.echo("no app uses an MCP server (spec.mcps in an app's YAML)")
        return
    table = plain_table("APP", "SERVER", "TRANSPORT", "HEALTH", "TOOLS", "CLEARANCE", "TARGET")
    for item in data:
        health = item["status"] if item["status"] == "ok" else f"error: {item.get('error')}"
        table.add_row(
            item["app"],
            item["name"],
            item.get("transport", ""),
            health,
            ", ".join(item.get("tools") or []) or "-",
            item.get("clearance", ""),
            item.get("target", ""),
        )
    output_console().print(table)


@app.command("clients")
def clients(
    as_json: JsonOption = False,
    url: UrlOption = None,
    key: KeyOption = None,
    config: ConfigOption = None,
) -> None:
    """List the clients of /mcp by API key, with their calls (admin key).

    Example: enclave mcp clients
    """
    with connect(config, url, key) as client:
        data = client.call("GET", "/api/admin/mcp/clients")["data"]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if not data:
        typer.echo("no /mcp client has called yet")
        return
    table = plain_table("KEY", "WORKSPACE", "CLEARANCE", "CALLS", "DENIED", "LAST CALL", "TOOLS")
    for item in data:
        tools = ", ".join(f"{name} {count}" for name, count in item["tools"].items())
        table.add_row(
            item["key_name"] or "(no key)",
            item["workspace"] or "-",
            item["clearance"] or "(floor)",
            str(item["calls"]),
            str(item["denied"]),
            item["last_call"] or "",
            tools,
        )
    output_console().print(table)
