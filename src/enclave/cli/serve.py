"""``enclave serve``: run the control plane."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.errors import ConfigError


def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on [default: 127.0.0.1]", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Port to listen on [default: 8080]", show_default=False
        ),
    ] = None,
) -> None:
    """Start the control plane: the OpenAI-compatible API on /v1 with the embedded models.

    State lives under $ENCLAVE_HOME (default ~/.local/share/enclave). On the
    first start an admin API key is created and printed once, unless
    ENCLAVE_ADMIN_KEY is set.

    Example: enclave serve --port 8080 --config enclave.yaml
    """
    settings = settings_or_exit(config, host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    import uvicorn

    from enclave.app import create_app

    try:
        app = create_app(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(f"Enclave listening on {base}  (home: {settings.home})")
    typer.echo(f"  web UI: {base}/   OpenAI-compatible API: {base}/v1")
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=5,
    )
