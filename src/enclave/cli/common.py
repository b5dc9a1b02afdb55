"""Options and start-up shared by commands that read the configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
