"""``enclave providers``: the running server's providers and their state."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Annotated, Any

import typer

from enclave.cli.common import ConfigOption, settings_or_exit

app = typer.Typer(help="Show the providers of a running server.", no_args_is_help=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Server base URL (default: $ENCLAVE_URL, else the configured host and port).",
        show_default=False,
    ),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", help="API key (default: $ENCLAVE_API_KEY).", show_default=False),
]


def fetch(url: str, key: str, path: str) -> Any:
    """GET a JSON document from the server, or exit 1 with a clear message."""
    request = urllib.request.Request(url.rstrip("/") + path)
    request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        typer.secho(f"error: {url}{path} answered {exc.code}: {detail}", fg="red", err=True)
    except (urllib.error.URLError, OSError) as exc:
        typer.secho(f"error: cannot reach {url}: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def server(config: ConfigOption, url: str | None, key: str | None) -> tuple[str, str]:
    key = key or os.environ.get("ENCLAVE_API_KEY")
    if not key:
        typer.secho("error: give --key or set ENCLAVE_API_KEY", fg="red", err=True)
        raise typer.Exit(2)
    url = url or os.environ.get("ENCLAVE_URL")
    if not url:
        settings = settings_or_exit(config)
        url = f"http://{settings.host}:{settings.port}"
    return url, key


@app.command("list")
def list_providers(
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Each provider with its type, location, clearance, health and circuit state.

    Example: ENCLAVE_API_KEY=ek-... enclave providers list --url http://127.0.0.1:8080
    """
    base, secret = server(config, url, key)
    providers = fetch(base, secret, "/api/providers")
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
