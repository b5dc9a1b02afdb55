"""Options, start-up and progress display shared by the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from enclave.errors import ConfigError
from enclave.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Path to enclave.yaml (default: $ENCLAVE_CONFIG, else built-in defaults).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """Load settings, or print the problem (field and line) and exit with status 2."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def plural(count: int, word: str) -> str:
    """ "1 chunk", "2 chunks"."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def progress_bar(console: Console, *, transient: bool, only_on_terminal: bool = False) -> Progress:
    """A "description, bar, done/total, elapsed" progress display on ``console``.

    ``transient`` removes it when done; ``only_on_terminal`` hides it when the
    output is piped (logs then get the command's own per-item lines).
    """
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=only_on_terminal and not console.is_terminal,
    )


def output_console() -> Console:
    """A console for tables on stdout; piped output is not cut to 80 columns,
    so scripts, tests and CI logs read whole names and messages."""
    return Console(width=None if sys.stdout.isatty() else 400)


def plain_table(*columns: str) -> Table:
    """A plain table whose cells wrap instead of being cut off with '…'."""
    table = Table(box=None)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table
