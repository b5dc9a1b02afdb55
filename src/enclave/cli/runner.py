"""``enclave runner``: host embedded engines and serve them over the runner protocol."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import ssl
from typing import Annotated, Any

import typer

from enclave.cli.common import ConfigOption, settings_or_exit
from enclave.errors import ConfigError
from enclave.providers.base import Provider
from enclave.settings import Settings, resolve_secret


def runner(
    token: Annotated[
        str,
        typer.Option(
            help=(
                "Without --join: reference to the bearer token clients must send (env:NAME or "
                "file:/path). With --join: the join token (the secret itself, or a reference)."
            ),
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
    join: Annotated[
        str | None,
        typer.Option(
            help="Join the control plane at this URL (https://enclave.example.com).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="--join: the runner's name [default: the host name].")
    ] = None,
    clearance: Annotated[
        str | None,
        typer.Option(
            help="--join: highest class of data it may serve [default: the highest]; "
            "the join token may cap it.",
            show_default=False,
        ),
    ] = None,
    location: Annotated[
        str, typer.Option(help="--join: where the data goes, for people and the audit log.")
    ] = "on-prem",
    advertise_url: Annotated[
        str | None,
        typer.Option(
            help="--join: the URL the control plane reaches this runner at "
            "[default: from --host and the bound port].",
            show_default=False,
        ),
    ] = None,
    runner_token: Annotated[
        str | None,
        typer.Option(
            help="--join: reference to the bearer token the control plane must send "
            "[default: a random one, sent at registration].",
            show_default=False,
        ),
    ] = None,
    memory_gb: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="--join: declare this much CPU memory instead of the GPUs or RAM measured.",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        str | None, typer.Option(help="--join: serve HTTPS with this PEM certificate (chain).")
    ] = None,
    tls_key: Annotated[
        str | None, typer.Option(help="--join: the certificate's PEM private key.")
    ] = None,
    control_ca: Annotated[
        str | None,
        typer.Option(
            help="--join: PEM bundle that verifies the control plane's HTTPS certificate "
            "[default: the system's CAs]."
        ),
    ] = None,
    scripted_engine: Annotated[
        bool,
        typer.Option(
            hidden=True, help="Tests: every load is the scripted provider (no model loaded)."
        ),
    ] = False,
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
    process you manage (plain HTTP with a bearer token: keep it on loopback).

    With --join, the runner joins a control plane instead: it declares its devices,
    engines, location and clearance, sends heartbeats, and loads the deployments
    the control plane places on it (see docs/runners.md).

    Example: RUNNER_TOKEN=... enclave runner --token env:RUNNER_TOKEN --port 8091

    Example: enclave runner --join https://ai.example.com --token ejt-... --host 0.0.0.0
    --port 8091 --tls-cert runner.pem --tls-key runner-key.pem
    """
    settings = settings_or_exit(config)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if join is not None:
        _join(
            settings,
            join_url=join,
            join_token=token,
            name=name,
            clearance=clearance,
            location=location,
            host=host,
            port=port,
            advertise_url=advertise_url,
            runner_token=runner_token,
            memory_gb=memory_gb,
            tls_cert=tls_cert,
            tls_key=tls_key,
            control_ca=control_ca,
            scripted_engine=scripted_engine,
        )
        return
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


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _join(
    settings: Settings,
    *,
    join_url: str,
    join_token: str,
    name: str | None,
    clearance: str | None,
    location: str,
    host: str,
    port: int,
    advertise_url: str | None,
    runner_token: str | None,
    memory_gb: float | None,
    tls_cert: str | None,
    tls_key: str | None,
    control_ca: str | None,
    scripted_engine: bool,
) -> None:
    """``enclave runner --join``: serve deployments placed by a remote control plane."""
    from enclave.runners import join

    classes = list(settings.classifications)
    clearance = clearance or classes[-1]
    if clearance not in classes:
        raise _fail(f"--clearance must be one of {', '.join(classes)}")
    if not join_url.startswith(("http://", "https://")):
        raise _fail("--join takes the control plane's URL: http(s)://host[:port]")
    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together")
    try:
        secret = (
            resolve_secret(join_token) if join_token.startswith(("env:", "file:")) else join_token
        )
        bearer = resolve_secret(runner_token) if runner_token else secrets.token_urlsafe(32)
        tls = join.tls_server_context(tls_cert, tls_key)
        ca = join.tls_client_context(control_ca) if control_ca else None
    except (ConfigError, OSError, ssl.SSLError) as exc:
        raise _fail(str(exc)) from None
    engine_factory = None
    if scripted_engine:
        from enclave.testing.scripted import ScriptedDeployment

        def engine_factory(body: dict[str, Any]) -> Provider:
            return ScriptedDeployment(str(body["model"]))

    deployments = join.DeploymentHost(
        {},
        runner=settings.runner,
        input_limits=settings.input_limits,
        memory_gb=memory_gb,
        engine_factory=engine_factory,
    )
    devices = join.read_devices(memory_gb)
    engines = join.available_engines(settings.runner)

    def announce(message: dict[str, Any]) -> None:
        memory = ", ".join(f"{d['name']} {d['memory_total_gb']:.1f} GB" for d in devices)
        typer.echo(
            f"Runner '{message['name']}' on {message['url']} (pid {message['pid']}) joined "
            f"{join_url}: {memory}; engines {', '.join(engines)}; clearance {clearance}"
        )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await join.serve_joined(
            deployments,
            control_url=join_url,
            join_token=secret,
            runner_token=bearer,
            name=name or join.default_name(),
            listen_host=host,
            port=port,
            advertise_url=advertise_url,
            location=location,
            clearance=clearance,
            devices=devices,
            engines=engines,
            tls=tls,
            control_ca=ca,
            announce=announce,
            stop=stop,
        )

    try:
        asyncio.run(run())
    except join.JoinRefused as exc:
        typer.secho(
            f"error: the control plane refused to join: {exc}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1) from None
