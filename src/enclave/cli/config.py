"""``enclave config``: validate and show the configuration."""

from __future__ import annotations

import typer
import yaml

from enclave.cli.common import ConfigOption, settings_or_exit

app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate enclave.yaml and the ENCLAVE_* environment; exit 2 naming field and line if bad."""
    settings = settings_or_exit(config)
    typer.echo(f"Configuration is valid ({len(settings.providers)} providers).")


@app.command()
def show(config: ConfigOption = None) -> None:
    """Print the effective configuration as YAML (secrets stay references)."""
    settings = settings_or_exit(config)
    data = settings.model_dump(mode="json", exclude={"admin_key"})
    typer.echo(yaml.safe_dump(data, sort_keys=False))
