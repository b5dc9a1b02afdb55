"""``enclave usage``: requests and tokens per UTC day, workspace, key, provider and model.

An ``AUDIO_S`` column (seconds of audio transcribed) appears when the period has any.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.gateway.usage import UsageLedger, UsageLine
from enclave.storage.db import open_database

app = typer.Typer(
    help=(
        "Show token usage by day. Works on the database under $ENCLAVE_HOME (or the "
        "configured database_url), so run it on the server's machine."
    ),
    no_args_is_help=False,
    subcommand_metavar="",
)

# The report covers this many days (today included) unless --since says otherwise.
DEFAULT_DAYS = 30
HEADERS = (
    "DAY",
    "WORKSPACE",
    "KEY",
    "PROVIDER",
    "MODEL",
    "REQUESTS",
    "PROMPT",
    "COMPLETION",
    "TOTAL",
)
AUDIO_HEADER = "AUDIO_S"
NUMERIC = 5  # columns from here on are right-aligned


def _day(text: str | None, option: str) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a date; use YYYY-MM-DD, e.g. 2026-11-01", param_hint=option
        ) from None


def _seconds(value: float) -> str:
    return f"{value:.1f}"


def _cells(line: UsageLine, audio: bool) -> tuple[str, ...]:
    cells = (
        line.day.isoformat(),
        line.workspace,
        "-" if line.key_id is None else str(line.key_id),
        line.provider,
        line.model,
        str(line.requests),
        str(line.prompt_tokens),
        str(line.completion_tokens),
        str(line.total_tokens),
    )
    return (*cells, _seconds(line.audio_seconds)) if audio else cells


def render_table(lines: list[UsageLine]) -> str:
    """The report as an aligned text table with a total row (``AUDIO_S`` if any audio)."""
    audio = any(line.audio_seconds for line in lines)
    headers = (*HEADERS, AUDIO_HEADER) if audio else HEADERS
    rows = [headers, *(_cells(line, audio) for line in lines)]
    total: tuple[str, ...] = (
        "total",
        "",
        "",
        "",
        "",
        str(sum(line.requests for line in lines)),
        str(sum(line.prompt_tokens for line in lines)),
        str(sum(line.completion_tokens for line in lines)),
        str(sum(line.total_tokens for line in lines)),
    )
    if audio:
        total = (*total, _seconds(sum(line.audio_seconds for line in lines)))
    rows.append(total)
    widths = [max(len(row[column]) for row in rows) for column in range(len(headers))]

    def render(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if column >= NUMERIC else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(render(row) for row in rows)


@app.callback(invoke_without_command=True)
def usage(
    since: Annotated[
        str | None,
        typer.Option(
            help=f"First UTC day (YYYY-MM-DD); default: {DEFAULT_DAYS} days ago.",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Last UTC day, included (YYYY-MM-DD); default: today.", show_default=False
        ),
    ] = None,
    workspace: Annotated[str | None, typer.Option(help="Only this workspace.")] = None,
    key: Annotated[int | None, typer.Option("--key", help="Only this key ID.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    config: ConfigOption = None,
) -> None:
    """Requests and tokens per UTC day, workspace, key, provider and model.

    Example: enclave usage --since 2026-11-01 --workspace research
    """
    first = _day(since, "--since")
    last = _day(until, "--until")
    if first is None:
        first = datetime.now(UTC).date() - timedelta(days=DEFAULT_DAYS - 1)
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    lines = UsageLedger(sessions).report(since=first, until=last, workspace=workspace, key_id=key)
    if as_json:
        typer.echo(
            json.dumps(
                [line.as_dict() for line in lines],
                indent=2,
            )
        )
        return
    if not lines:
        typer.echo("No usage recorded in this period.", err=True)
        return
    typer.echo(render_table(lines))
