"""``enclave audit``: verify the signed, hash-chained audit log, export it, and manage its keys.

``verify`` checks the database under $ENCLAVE_HOME against the head file, the
checkpoint file and the trusted public keys; ``verify --file`` checks an
export offline with public keys only. ``keygen`` and ``public-key`` handle
the Ed25519 keys (``docs/operations.md`` has the rotation procedure).
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.errors import ConfigError
from enclave.gateway.audit import (
    VerifyResult,
    audit_checkpoint_path,
    audit_head_path,
    export_jsonl,
    verify_chain,
    verify_export,
)
from enclave.gateway.audit_keys import (
    AuditSigner,
    TrustedKeys,
    load_public_key_files,
    public_pem,
    signer_from_settings,
    trusted_keys_from_settings,
    write_private_key,
)
from enclave.storage.db import open_database

app = typer.Typer(
    help=(
        "Check and export the audit log, and manage the keys that sign it. Works on the "
        "database under $ENCLAVE_HOME (or the configured database_url), so run it on the "
        "server's machine; `verify --file` checks an export anywhere."
    ),
    no_args_is_help=True,
)


def parse_since(text: str) -> datetime:
    """A date (midnight UTC) or an ISO 8601 time; a time without a zone is UTC."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a date or time; use e.g. 2026-11-01 or 2026-11-01T10:00:00Z",
            param_hint="--since",
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


PublicKeyOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--public-key",
        help="Trust only this PEM public key (repeat for keys used before a rotation). "
        "Default: the configured signing key's and audit.trusted_public_keys.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _trusted_keys(public_keys: list[Path] | None, config: Path | None) -> TrustedKeys:
    try:
        if public_keys:
            return load_public_key_files(public_keys)
        return trusted_keys_from_settings(settings_or_exit(config))
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _report(result: VerifyResult, what: str) -> None:
    if not result.ok:
        typer.secho(f"{what} TAMPERED: {result.reason}", fg=typer.colors.RED)
        raise typer.Exit(1)
    head = (result.head_hash or "")[:16] or "(empty)"
    signed = ""
    if result.key_ids:
        signed = f", {result.checkpoints} signatures by key {', '.join(result.key_ids)}"
    typer.echo(f"{what} OK: {result.entries} entries, head {head}{signed}")
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)


@app.command()
def verify(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            help="Check this export (from `enclave audit export`) instead of the database: "
            "needs no server, no database and no private key.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    public_key: PublicKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Check the chain, the signed head and checkpoints; exit 1 naming what is wrong.

    Examples: enclave audit verify;
    enclave audit verify --public-key audit-2026.pub --file november.jsonl
    """
    keys = _trusted_keys(public_key, config)
    if file is not None:
        if not keys:
            raise _fail("give the public key that signed the export: --public-key KEY.pub")
        with open(file, encoding="utf-8", newline="\n") as lines:
            result = verify_export(lines, keys)
        _report(result, "export")
        return
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    result = verify_chain(
        sessions,
        audit_head_path(settings),
        checkpoint_file=audit_checkpoint_path(settings),
        keys=keys,
        shared=settings.cluster.replicas,
    )
    _report(result, "audit log")


@app.command()
def export(
    since: Annotated[
        str | None,
        typer.Option(
            help="Start at the first entry at or after this UTC date or time, e.g. 2026-11-01 "
            "or 2026-11-01T10:00:00Z.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file instead of stdout.", dir_okay=False
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write the signed head, the checkpoints and the entries as JSON Lines.

    Check the file anywhere with `enclave audit verify --public-key KEY.pub --file FILE`.

    Example: enclave audit export --since 2026-11-01 --output november.jsonl
    """
    start = parse_since(since) if since is not None else None
    settings = settings_or_exit(config)
    _, sessions = open_database(settings.resolved_database_url)
    files: dict[str, Any] = {
        "head_file": audit_head_path(settings),
        "checkpoint_file": audit_checkpoint_path(settings),
        "shared": settings.cluster.replicas,
    }
    if output is None:
        count = export_jsonl(sessions, sys.stdout, start, **files)
        sys.stdout.flush()
        typer.echo(f"exported {count} entries", err=True)
        return
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        count = export_jsonl(sessions, out, start, **files)
    typer.echo(f"exported {count} entries to {output}", err=True)


@app.command("public-key")
def public_key_command(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file instead of stdout.", dir_okay=False
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Print the public key (PEM) of the key that signs the audit log, for auditors.

    Example: enclave audit public-key --output audit-2026.pub
    """
    settings = settings_or_exit(config)
    try:
        signer = signer_from_settings(settings, create=False)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if signer is None:
        raise _fail(
            "no signing key yet: set audit.signing_key, or start the server once to create "
            "<home>/audit-signing-key.pem"
        )
    pem = public_pem(signer.public_key)
    if output is None:
        typer.echo(pem, nl=False)
    else:
        output.write_text(pem)
    typer.echo(f"key id {signer.key_id}", err=True)


@app.command()
def keygen(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="New private key file (PEM, mode 0600).", dir_okay=False
        ),
    ],
) -> None:
    """Create an Ed25519 signing key; its public key goes next to it as OUTPUT.pub.

    Example: enclave audit keygen --output /etc/enclave/audit-2027.pem
    """
    signer = AuditSigner.generate()
    try:
        write_private_key(output, signer)
    except FileExistsError:
        raise _fail(f"{output} exists; choose a new file name") from None
    public = output.with_name(output.name + ".pub")
    public.write_text(public_pem(signer.public_key))
    typer.echo(f"wrote {output} (private, 0600) and {public}; key id {signer.key_id}")
