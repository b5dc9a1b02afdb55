"""``enclave db``: the database schema, for operators (``migrate``, ``status``)."""

from __future__ import annotations

import typer
from alembic.script import ScriptDirectory

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.storage.db import (
    alembic_config,
    create_database_engine,
    current_revision,
    migrate,
)

app = typer.Typer(
    help="The database schema: migrate it, or show its revision.", no_args_is_help=True
)


@app.command("migrate")
def migrate_command(config: ConfigOption = None) -> None:
    """Bring the database to the newest schema, then exit.

    Safe to run while replicas start or serve: on Postgres it holds an
    advisory lock, so only one migration runs and the others find the schema
    current. Run it as a Kubernetes Job before rolling out a new version
    (deploy/kubernetes/base/migrate-job.yaml); `enclave serve` also migrates
    at start.

    Example: ENCLAVE_DB_URL=postgresql://enclave@db/enclave enclave db migrate -c enclave.yaml
    """
    settings = settings_or_exit(config)
    engine = create_database_engine(settings.resolved_database_url)
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        typer.echo(f"The schema is current (revision {after}).")
    else:
        typer.echo(f"Migrated from revision {before or 'none (empty database)'} to {after}.")


@app.command("status")
def status_command(config: ConfigOption = None) -> None:
    """Print the database's schema revision and whether it is the newest.

    Exits with status 1 when migrations are pending.
    """
    settings = settings_or_exit(config)
    engine = create_database_engine(settings.resolved_database_url)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision == head:
        typer.echo(f"revision {revision} (current)")
        return
    typer.echo(f"revision {revision or 'none'}; newest is {head}: run `enclave db migrate`")
    raise typer.Exit(1)
