"""``enclave deployments``: the models placed on runners by memory.

Works on the database, like ``enclave keys``: entries applied here survive
restarts and replace the config's entry of the same model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from enclave.cli.common import (
    ConfigOption,
    JsonOption,
    output_console,
    plain_table,
    settings_or_exit,
)
from enclave.errors import ConfigError, EnclaveError
from enclave.runners.deployments import DeploymentStore, parse_deployments
from enclave.storage.db import open_database

app = typer.Typer(
    help=(
        "Declare which models runners serve (placed by memory, clearance and priority). "
        "`deployments:` in the config is the baseline; `apply` stores more in the database."
    ),
    no_args_is_help=True,
)


def _store(config: ConfigOption) -> tuple[DeploymentStore, list[str]]:
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    classes = list(settings.classifications)
    return DeploymentStore(sessions, settings.deployments, classes), classes


@app.command("apply")
def apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="YAML with a `deployments:` list.", exists=True)
    ],
    config: ConfigOption = None,
) -> None:
    """Validate a deployments file and store its entries.

    Example: enclave deployments apply -f deployments.yaml
    """
    store, classes = _store(config)
    try:
        specs = parse_deployments(file.read_text(), str(file), classes)
        results = store.apply(specs)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except EnclaveError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for model, outcome in results:
        typer.echo(f"{outcome:<9} {model}")


@app.command("list")
def list_deployments(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every deployment in force: from the config and applied."""
    store, _ = _store(config)
    declared = store.effective()
    if as_json:
        rows = [{**d.spec.model_dump(), "origin": d.origin} for d in declared]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = plain_table(
        "MODEL",
        "ENGINE",
        "MEMORY GB",
        "REPLICAS",
        "KEEP ALIVE",
        "PRIORITY",
        "CLEARANCE",
        "SOURCE",
        "FROM",
    )
    for d in declared:
        spec = d.spec
        table.add_row(
            spec.model,
            spec.engine,
            f"{spec.memory_gb:g}",
            str(spec.replicas),
            spec.keep_alive or "always",
            spec.priority,
            spec.clearance or "-",
            spec.source,
            d.origin,
        )
    output_console().print(table)


@app.command("remove")
def remove(
    model: Annotated[str, typer.Argument(help="The deployment's model name.")],
    config: ConfigOption = None,
) -> None:
    """Remove an applied deployment (the config's entry, if any, applies again)."""
    store, _ = _store(config)
    try:
        store.remove(model)
    except EnclaveError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Removed deployment {model}.")
