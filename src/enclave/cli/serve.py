"""``enclave serve``: run the control plane."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn

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
    from enclave.app import create_app

    try:
        app = create_app(settings)
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    base = f"http://{settings.host}:{settings.port}"
    models = ", ".join(model.name for provider in settings.providers for model in provider.models)
    typer.echo(f"Enclave is starting (home: {settings.home})")
    typer.echo(f"  loading models: {models or 'none'}")
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            timeout_graceful_shutdown=max(1, round(settings.cluster.grace_s)),
        ),
        app=app,
        drain_s=settings.cluster.drain_s,
    )
    threading.Thread(
        target=announce_when_ready, args=(server, base), name="announce", daemon=True
    ).start()
    server.run()


class DrainingServer(uvicorn.Server):
    """uvicorn, with the stop Kubernetes expects.

    SIGTERM: ``/readyz`` answers 503 ("draining") for ``cluster.drain_s``
    seconds while requests are still served, so the load balancer takes this
    replica out; then the listening socket closes and requests in flight
    (streams included) get ``cluster.grace_s`` seconds to finish. SIGINT
    (Ctrl-C) skips the drain; a second signal stops at once.
    """

    def __init__(self, config: uvicorn.Config, *, app: Any, drain_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_s = drain_s
        self._drain_timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        draining = self._drain_timer is not None
        if sig != signal.SIGTERM or self._drain_s <= 0 or draining or self.should_exit:
            if draining and not self.should_exit:
                self._drain_timer.cancel()  # type: ignore[union-attr]
                self.should_exit = True
                return
            super().handle_exit(sig, frame)
            return
        self._captured_signals.append(sig)
        self._app.state.draining = True
        logging.getLogger(__name__).warning(
            "SIGTERM: draining for %.0f s (readiness 503), then stopping", self._drain_s
        )
        self._drain_timer = threading.Timer(self._drain_s, self._stop_after_drain)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def _stop_after_drain(self) -> None:
        self.should_exit = True


def announce_when_ready(server: uvicorn.Server, base: str, every_s: float = 5.0) -> None:
    """Print "listening" once the server accepts requests (models loaded, socket bound),
    and how long loading has taken meanwhile."""
    started = time.monotonic()
    next_note = started + every_s
    while not server.started:
        if server.should_exit:
            return
        now = time.monotonic()
        if now >= next_note:
            typer.echo(f"  still loading ({now - started:.0f} s)")
            next_note = now + every_s
        time.sleep(0.1)
    typer.echo(f"Enclave listening on {base}  (ready in {time.monotonic() - started:.0f} s)")
    typer.echo(f"  web UI: {base}/   OpenAI-compatible API: {base}/v1")
