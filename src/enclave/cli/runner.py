"""``enclave runner``: host embedded engines and serve them over the runner protocol."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated, Any

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.errors import ConfigError
from enclave.settings import resolve_secret


def runner(
    token: Annotated[
        str,
        typer.Option(
            help="Reference to the bearer token clients must send: env:NAME or file:/path.",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            help="Embedded provider to host (repeatable) [default: every embedded one]",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 0,
) -> None:
    """Load the embedded models, self-test them and serve them to a control plane.

    `enclave serve` starts its own runners; run this by hand to host engines in a
    process you manage. The protocol is plain HTTP with a bearer token: keep it on
    loopback (TLS and joining a remote control plane come with remote runners).

    Example: RUNNER_TOKEN=... enclave runner --token env:RUNNER_TOKEN --port 8091
    """
    settings = settings_or_exit(config)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        secret = resolve_secret(token)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    local = [config for config in settings.providers if config.is_local]
    if provider:
        unknown = sorted(set(provider) - {config.name for config in local})
        if unknown:
            typer.secho(
                f"error: no embedded provider named {', '.join(unknown)}",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(2)
        local = [config for config in local if config.name in provider]
    if not local:
        typer.secho("error: the configuration has no embedded providers", fg=typer.colors.RED)
        raise typer.Exit(2)
    spec = {
        "providers": [config.model_dump(mode="json") for config in local],
        "runner": settings.runner.model_dump(mode="json"),
        "input_limits": settings.input_limits.model_dump(mode="json"),
    }

    def announce(message: dict[str, Any]) -> None:
        names = ", ".join(config.name for config in local)
        typer.echo(f"Runner ready on {message['url']} (pid {message['pid']}): {names}")

    async def run() -> None:
        from enclave.runners.server import serve_runner

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve_runner(spec, secret, host=host, port=port, announce=announce, stop=stop)

    asyncio.run(run())
