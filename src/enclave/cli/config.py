"""``enclave config``: validate and show the configuration."""

from __future__ import annotations

import typer
import yaml

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.providers.registry import check_model_files

app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)


@app.command()
def check(config: ConfigOption = None) -> None:
    """Validate enclave.yaml, ENCLAVE_* and the model files; exit 2 naming field and line if bad."""
    settings = settings_or_exit(config)
    problems = check_model_files(settings)
    if problems:
        typer.secho("error: " + "\n  ".join(["model files:", *problems]), fg="red", err=True)
        raise typer.Exit(2)
    models = sum(len(provider.models) for provider in settings.providers)
    typer.echo(
        f"Configuration is valid ({len(settings.providers)} providers, {models} models found)."
    )


@app.command()
def show(config: ConfigOption = None) -> None:
    """Print the effective configuration as YAML (secrets stay references)."""
    settings = settings_or_exit(config)
    data = settings.model_dump(mode="json", exclude={"admin_key"})
    typer.echo(yaml.safe_dump(data, sort_keys=False))
