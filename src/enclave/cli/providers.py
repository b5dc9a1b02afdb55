"""``enclave providers``: the running server's providers and their state."""

from __future__ import annotations

import json

import typer

from enclave.cli.client import KeyOption, UrlOption, connect
from enclave.cli.common import ConfigOption, JsonOption

app = typer.Typer(help="Show the providers of a running server.", no_args_is_help=True)


@app.command("list")
def list_providers(
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Each provider with its type, location, clearance, health and circuit state.

    Example: ENCLAVE_API_KEY=ek-... enclave providers list --url http://127.0.0.1:8080
    """
    with connect(config, url, key, timeout=10) as client:
        providers = client.call("GET", "/api/providers")
    if as_json:
        typer.echo(json.dumps(providers, indent=2))
        return
    header = ("NAME", "TYPE", "LOCATION", "CLEARANCE", "HEALTHY", "CIRCUIT", "MODELS")
    rows = [
        (
            str(p["name"]),
            str(p.get("type", "")),
            str(p.get("location", "")),
            str(p.get("clearance", "")),
            "yes" if p["healthy"] else f"no ({p.get('detail', '')})",
            str(p.get("circuit", "")),
            ", ".join(p["models"]),
        )
        for p in providers
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
