"""``enclave audit``: verify the hash-chained audit log and export it as JSON Lines."""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.gateway.audit import audit_head_path, export_jsonl, verify_chain
from enclave.storage.db import open_database

app = typer.Typer(
    help=(
        "Check and export the audit log. Works on the database under $ENCLAVE_HOME (or the "
        "configured database_url), so run it on the server's machine."
    ),
    no_args_is_help=True,
)


def parse_since(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time; a time without a zone is UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a date or time; use e.g. 2026-11-01 or 2026-11-01T10:00:00Z",
            param_hint="--since",
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@app.command()
def verify(config: ConfigOption = None) -> None:
    """Recompute the hash chain; exit 1 naming the first edited, missing or moved entry.

    Example: enclave audit verify
    """
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    result = verify_chain(sessions, audit_head_path(settings))
    if not result.ok:
        typer.secho(f"audit log TAMPERED: {result.reason}", fg=typer.colors.RED)
        raise typer.Exit(1)
    head = (result.head_hash or "")[:16] or "(empty)"
    typer.echo(f"audit log OK: {result.entries} entries, head {head}")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)


@app.command()
def export(
    since: Annotated[
        str | None,
        typer.Option(
            help="Only entries at or after this UTC date or time, e.g. 2026-11-01 or "
            "2026-11-01T10:00:00Z.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file instead of stdout.", dir_okay=False
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write entries as JSON Lines, each with seq, prev_hash and hash, so it can be rechecked.

    Example: enclave audit export --since 2026-11-01 --output november.jsonl
    """
    start = parse_since(since) if since is not None else None
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    if output is None:
        count = export_jsonl(sessions, sys.stdout, start)
        sys.stdout.flush()
        typer.echo(f"exported {count} entries", err=True)
        return
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        count = export_jsonl(sessions, out, start)
    typer.echo(f"exported {count} entries to {output}", err=True)
