"""``enclave runners``: runners that joined, and the join tokens they present.

``enclave runners list`` asks the running server (its registry is in memory).
The token commands work on the database, like ``enclave keys``, so run them on
the control plane's machine. A token revoked here is refused at the next
registration; revoke it through the API (or the admin page) to also drop the
runners that joined with it at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from enclave.cli.client import KeyOption, UrlOption, connect
from enclave.cli.common import (
    ConfigOption,
    JsonOption,
    output_console,
    plain_table,
    settings_or_exit,
)
from enclave.errors import EnclaveError
from enclave.runners.tokens import JoinTokenService
from enclave.storage.db import open_database

app = typer.Typer(
    help="Runners that joined this control plane, and their join tokens.",
    no_args_is_help=True,
)
token_app = typer.Typer(
    help=(
        "Join tokens for `enclave runner --join URL --token TOKEN`. Works on the database "
        "under $ENCLAVE_HOME (or the configured database_url); tokens are stored only as hashes."
    ),
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")


def _tokens(config: ConfigOption) -> JoinTokenService:
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    return JoinTokenService(sessions, list(settings.classifications))


def _fail(exc: EnclaveError) -> typer.Exit:
    typer.secho(f"error: {exc.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(1)


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@app.command("list")
def list_runners(
    config: ConfigOption = None,
    url: UrlOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runners with devices, memory used and free, loaded models, queue, tokens/s, state."""
    with connect(config, url, key) as client:
        runners: list[dict[str, Any]] = client.call("GET", "/api/admin/runners")["data"]
    if as_json:
        typer.echo(json.dumps(runners, indent=2))
        return
    if not runners:
        typer.echo("No runners have joined. Create a token with `enclave runners token create`.")
        return
    table = plain_table(
        "RUNNER", "STATE", "CLEARANCE", "DEVICES (used/free/total GB)", "MODELS", "QUEUE", "TOK/S"
    )
    for runner in runners:
        devices = ", ".join(
            f"{d['name']} {_gb(d['memory_used_gb'])}/{_gb(d['memory_free_gb'])}/"
            f"{_gb(d['memory_total_gb'])}"
            for d in runner["devices"]
        )
        models = ", ".join(m["model"] for m in runner["loaded"]) or "-"
        table.add_row(
            runner["name"],
            runner["state"],
            runner["clearance"],
            devices,
            models,
            str(runner["queue_depth"]),
            f"{runner['tokens_per_s']:.1f}",
        )
    output_console().print(table)


@token_app.command("create")
def create_token(
    name: Annotated[str, typer.Option("--name", help="Which machine it is for.")] = "runner",
    expires: Annotated[
        int | None, typer.Option("--expires", min=1, help="Expire after this many days.")
    ] = None,
    max_clearance: Annotated[
        str | None,
        typer.Option(help="Highest clearance a runner joining with it may declare."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create a join token and print its secret once.

    Example: enclave runners token create --name office-gpu --expires 7
    """
    expires_at = datetime.now(UTC) + timedelta(days=expires) if expires else None
    try:
        secret, token = _tokens(config).create(
            name, expires_at=expires_at, max_clearance=max_clearance
        )
    except EnclaveError as exc:
        raise _fail(exc) from None
    typer.echo(f"Created join token {token.id} '{token.name}'.", err=True)
    typer.echo("The secret is shown only now; on the runner's machine run:", err=True)
    typer.echo("  enclave runner --join <this server's URL> --token <secret>", err=True)
    typer.echo(secret)


@token_app.command("list")
def list_tokens(config: ConfigOption = None) -> None:
    """List join tokens (never their secrets)."""
    table = plain_table("ID", "PREFIX", "STATUS", "MAX CLEARANCE", "EXPIRES", "LAST USED", "NAME")
    for token in _tokens(config).list():
        table.add_row(
            str(token.id),
            token.prefix,
            token.status,
            token.max_clearance or "-",
            token.expires_at.strftime("%Y-%m-%d %H:%M") if token.expires_at else "never",
            token.last_used_at.strftime("%Y-%m-%d %H:%M") if token.last_used_at else "-",
            token.name,
        )
    output_console().print(table)


@token_app.command("revoke")
def revoke_token(
    token_id: Annotated[
        int, typer.Argument(help="The token's ID from `enclave runners token list`.")
    ],
    config: ConfigOption = None,
) -> None:
    """Revoke a join token: runners can no longer join with it."""
    try:
        token = _tokens(config).revoke(token_id)
    except EnclaveError as exc:
        raise _fail(exc) from None
    typer.echo(f"Revoked join token {token.id} '{token.name}'.")
