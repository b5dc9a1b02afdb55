"""``enclave keys``: create, list and revoke API keys in the local database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from enclave.auth.keys import KeyService
from enclave.auth.roles import ROLES
from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.errors import EnclaveError
from enclave.storage.db import open_database

app = typer.Typer(
    help=(
        "Manage API keys. Works on the database under $ENCLAVE_HOME (or the configured "
        "database_url), so run it on the server's machine. Keys are stored only as hashes."
    ),
    no_args_is_help=True,
)


def _service(config: ConfigOption) -> KeyService:
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    return KeyService(sessions)


def _class_name(config: ConfigOption, value: str | None) -> str | None:
    """``value`` as one of the configured classes, or exit with the known ones."""
    if value is None:
        return None
    names = settings_or_exit(config).classifications
    if value.strip().lower() not in names:
        typer.echo(f"Unknown class '{value}'; known: {', '.join(names)}.", err=True)
        raise typer.Exit(2)
    return value.strip().lower()


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="A label, e.g. the person or service using it.")],
    workspace: Annotated[str, typer.Option(help="Workspace the key belongs to.")] = "default",
    admin: Annotated[bool, typer.Option("--admin", help="Allow admin endpoints.")] = False,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Expire the key after this many days.")
    ] = None,
    clearance: Annotated[
        str | None,
        typer.Option(help="The highest class the key may receive on /mcp and the query API."),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="member, builder or admin (docs/identity.md); default: admin with --admin, "
            "else builder."
        ),
    ] = None,
    user: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Make it this person's key (the id from GET /api/admin/users): it never has "
            "more rights than they have, and stops when they are disabled or leave the groups.",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print its secret once.

    Example: enclave keys create analyst-laptop --workspace default --expires-in-days 90

    Example: enclave keys create carol-notebook --workspace monetary-policy --user 1 --role builder
    """
    if role is not None and role not in ROLES:
        typer.echo(f"Unknown role '{role}'; known: {', '.join(ROLES)}.", err=True)
        raise typer.Exit(2)
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    try:
        secret, info = _service(config).create(
            name,
            workspace=workspace,
            is_admin=admin,
            expires_at=expires,
            clearance=_class_name(config, clearance),
            role=role,
            user_id=user,
        )
    except EnclaveError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Created key {info.id} '{info.name}' in workspace '{info.workspace}'.", err=True)
    typer.echo("The secret is shown only now:", err=True)
    typer.echo(secret)


@app.command("list")
def list_keys(
    workspace: Annotated[str | None, typer.Option(help="Only this workspace.")] = None,
    config: ConfigOption = None,
) -> None:
    """List keys (never their secrets)."""
    rows = _service(config).list(workspace)
    typer.echo(f"{'ID':>4}  {'PREFIX':<10} {'WORKSPACE':<16} {'ADMIN':<5}  {'STATUS':<8} NAME")
    for info in rows:
        typer.echo(
            f"{info.id:>4}  {info.prefix:<10} {info.workspace:<16} "
            f"{'yes' if info.is_admin else 'no':<5}  {info.status:<8} {info.name}"
        )


@app.command()
def revoke(
    key: Annotated[
        str, typer.Argument(help="The key's ID or name (an active key's) from `enclave keys list`.")
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke a key. Servers on Postgres stop accepting it at once (they are notified);
    a server on SQLite within 5 seconds.

    Example: enclave keys revoke analyst
    """
    service = _service(config)
    try:
        if key.isdigit():
            key_id = int(key)
        else:
            named = [i for i in service.list(None) if i.name == key and i.status == "active"]
            if len(named) != 1:
                found = "no active key" if not named else f"{len(named)} active keys"
                typer.secho(
                    f"error: {found} named '{key}'; give the ID from `enclave keys list`.",
                    fg=typer.colors.RED,
                    err=True,
                )
                raise typer.Exit(1)
            key_id = named[0].id
        info = service.revoke(key_id)
    except EnclaveError as exc:
        typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Revoked key {info.id} '{info.name}'.")
