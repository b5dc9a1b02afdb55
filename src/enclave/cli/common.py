"""Options, start-up and progress display shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def settings_or_exit(config: Path | None, **overrides: Any) -> Settings:
    """Load settings, or print the problem (field and line) and exit with status 2."""
    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


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
