"""The runner side of the runner protocol: engines served over HTTP.

A runner builds the providers it was given (the same ``PROVIDER_TYPES`` the
control plane uses in-process), starts them, runs a self-test (one short
generation per chat model, one embedding per embedding model) and only then
listens for the control plane and announces itself as ready. A model that
would crash on its first request (ggml's AMX repack path did) therefore
crashes here, before anything is routed to it, and the supervisor sees why.

The HTTP side is aiohttp with handler cancellation on: when the control plane
closes a connection (its client left), the handler is cancelled and the
generation or embedding stops the way it does in-process. The protocol itself
is described in :mod:`enclave.runners.protocol`.

Run supervised by ``enclave serve`` (``python -m enclave.runners.server``), the
runner reads its token and spec as one JSON line on stdin, prints one
``{"runner": "ready", ...}`` line on stdout, and exits when stdin closes (its
parent is gone). Standalone, ``enclave runner`` does the same from a config.
"""

from __future__ import annotations

import asyncio
import faulthandler
import hmac
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from enclave.errors import EnclaveError, NotFound
from enclave.providers.base import Finished, GenerationRequest, Provider, SamplingParams
from enclave.runners.cpu import describe_cpu, extra_buffer_types, read_cpu_flags
from enclave.runners.protocol import (
    NDJSON,
    PREFIX,
    PROTOCOL_VERSION,
    card_to_wire,
    error_to_wire,
    event_to_wire,
    options_from_wire,
    request_from_wire,
    transcript_to_wire,
)
from enclave.settings import InputLimitsConfig, ProviderConfig, RunnerConfig, Settings

if TYPE_CHECKING:
    from enclave.runners.join import DeploymentHost

log = logging.getLogger(__name__)

SELF_TEST_PROMPT = "Hello"
SHUTDOWN_GRACE_S = 10.0
STDIN = 0


def build_providers(spec: dict[str, Any]) -> tuple[list[Provider], RunnerConfig]:
    """The providers a spec names, built as the control plane would build them in-process."""
    from enclave.providers.registry import PROVIDER_TYPES

    configs = [ProviderConfig.model_validate(item) for item in spec["providers"]]
    runner = RunnerConfig.model_validate(spec.get("runner") or {})
    limits = InputLimitsConfig.model_validate(spec.get("input_limits") or {})
    # Only these fields are read by the engine factories; constructing the whole
    # Settings would read ENCLAVE_* again and validate unrelated sections.
    settings = Settings.model_construct(providers=configs, runner=runner, input_limits=limits)
    return [PROVIDER_TYPES[config.type](config, settings) for config in configs], runner


async def self_test(provider: Provider) -> None:
    """One short generation per chat model and one embedding per embedding model."""
    for card in provider.models():
        caps = card.capabilities
        if caps.chat or caps.completion:
            stream = await provider.generate(
                GenerationRequest(
                    model=card.id,
                    prompt=SELF_TEST_PROMPT,
                    sampling=SamplingParams(max_tokens=2, temperature=0.0, seed=0),
                    tenant="self-test",
                )
            )
            try:
                async for _ in stream:
                    pass
            finally:
                await stream.aclose()
        if caps.embeddings:
            await provider.embed(card.id, ["self-test"], priority="interactive")
        log.info("self-test passed: %s/%s", provider.name, card.id)


def error_response(exc: BaseException) -> web.Response:
    status = exc.status_code if isinstance(exc, EnclaveError) else 502
    return web.Response(
        status=status,
        body=orjson.dumps({"error": error_to_wire(exc)}),
        content_type="application/json",
    )


class RunnerServer:
    """The HTTP face of a runner's providers."""

    def __init__(
        self,
        providers: list[Provider],
        token: str,
        cpu: dict[str, Any],
        host: DeploymentHost | None = None,
    ) -> None:
        self.providers = {provider.name: provider for provider in providers}
        self._token = token.encode()
        self.cpu = cpu
        # A joined runner: deployments loaded and unloaded by the control plane.
        self.host = host
        if host is not None:
            host.providers = self.providers

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate], client_max_size=256 * 1024**2)
        app.router.add_get(f"{PREFIX}/info", self.info)
        app.router.add_get(f"{PREFIX}/health", self.health)
        app.router.add_post(f"{PREFIX}/providers/{{name}}/generate", self.generate)
        app.router.add_post(f"{PREFIX}/providers/{{name}}/embed", self.embed)
        app.router.add_post(f"{PREFIX}/providers/{{name}}/transcribe", self.transcribe)
        if self.host is not None:
            self.host.add_routes(app, PREFIX)
        return app

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, self._token):
            return web.json_response({"error": {"message": "bad runner token"}}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _provider(self, request: web.Request) -> Provider:
        name = request.match_info["name"]
        try:
            return self.providers[name]
        except KeyError:
            raise NotFound(f"This runner hosts no provider '{name}'.") from None

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "protocol": PROTOCOL_VERSION,
                "pid": os.getpid(),
                "cpu": self.cpu,
                "providers": [
                    {"name": p.name, "models": [card_to_wire(card) for card in p.models()]}
                    for p in self.providers.values()
                ],
            },
            dumps=lambda data: orjson.dumps(data).decode(),
        )

    async def health(self, request: web.Request) -> web.Response:
        report = {}
        for name, provider in self.providers.items():
            health = await provider.health()
            depth = getattr(provider, "queue_depth", None)
            report[name] = {
                "ok": health.ok,
                "detail": health.detail,
                "queue_depth": health.queue_depth,
                "queues": depth() if depth else {},
                "state": provider.describe(),
            }
        served = self.host.served if self.host is not None else {}
        return web.Response(
            body=orjson.dumps({"providers": report, "served": served}),
            content_type="application/json",
        )

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            provider = self._provider(request)
            data = orjson.loads(await request.read())
            stream = await provider.generate(request_from_wire(data["request"]))
        except EnclaveError as exc:
            return error_response(exc)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        events = aiter(stream)
        name, completion_tokens = provider.name, 0
        if self.host is not None:
            self.host.begin(name)
        try:
            await response.prepare(request)
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except Exception as exc:  # the provider's error goes to the client as a line
                    if not isinstance(exc, EnclaveError):
                        log.exception("generation failed")
                    await response.write(orjson.dumps({"error": error_to_wire(exc)}) + b"\n")
                    break
                if isinstance(event, Finished):
                    completion_tokens = event.usage.completion_tokens
                await response.write(orjson.dumps(event_to_wire(event)) + b"\n")
        finally:
            await stream.aclose()  # also when the client left (cancelled or reset)
            if self.host is not None:
                self.host.end(name, completion_tokens)
        await response.write_eof()
        return response

    async def embed(self, request: web.Request) -> web.Response:
        try:
            provider = self._provider(request)
            data = orjson.loads(await request.read())
            result = await provider.embed(
                data["model"], data["inputs"], priority=data.get("priority", "interactive")
            )
        except EnclaveError as exc:
            return error_response(exc)
        return web.Response(
            body=orjson.dumps({"vectors": result.vectors, "prompt_tokens": result.prompt_tokens}),
            content_type="application/json",
        )

    async def transcribe(self, request: web.Request) -> web.Response:
        try:
            provider = self._provider(request)
            options = options_from_wire(orjson.loads(request.query.get("options", "{}")))
            transcript = await provider.transcribe(
                request.query.get("model", ""), await request.read(), options
            )
        except EnclaveError as exc:
            return error_response(exc)
        return web.Response(
            body=orjson.dumps(transcript_to_wire(transcript)), content_type="application/json"
        )


def runner_cpu(runner: RunnerConfig) -> dict[str, Any]:
    """The CPU path the engines use, logged once."""
    flags = read_cpu_flags()
    cpu = describe_cpu(flags, extra_buffer_types(flags, runner.extra_buffer_types))
    log.info(
        "runner %d: CPU path %s, llama.cpp extra buffer types %s (%s)",
        os.getpid(),
        cpu["path"],
        "on" if cpu["extra_buffer_types"] else "off",
        cpu["extra_buffer_types_reason"],
    )
    return cpu


async def serve_runner(
    spec: dict[str, Any],
    token: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    announce: Callable[[dict[str, Any]], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Load, self-test and serve the spec's providers until ``stop`` is set."""
    providers, runner = build_providers(spec)
    cpu = runner_cpu(runner)
    for provider in providers:
        await provider.start()
    if runner.self_test:
        for provider in providers:
            await self_test(provider)
    server = RunnerServer(providers, token, cpu)
    app_runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, host, port)
    await site.start()
    bound = app_runner.addresses[0][1] if app_runner.addresses else port
    url = f"http://{host}:{bound}"
    announce({"runner": "ready", "url": url, "pid": os.getpid(), "cpu": cpu})
    stop = stop or asyncio.Event()
    try:
        await stop.wait()
    finally:
        await app_runner.cleanup()
        for provider in providers:
            await provider.close()


def _watch_parent(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop when stdin reaches end of file: the supervising process is gone."""

    def wait() -> None:
        while os.read(STDIN, 1):  # unbuffered: nothing else reads stdin after the first line
            pass
        loop.call_soon_threadsafe(stop.set)
        time.sleep(SHUTDOWN_GRACE_S)  # still loading, or stuck: do not outlive the parent
        os._exit(0)

    threading.Thread(target=wait, name="parent-watch", daemon=True).start()


def _announce(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed, as uvicorn picks for the control plane.

    Every streamed token wakes the loop (the engine thread hands it over with
    ``call_soon_threadsafe``) and is written to a socket; uvloop does that in C
    and roughly halves the loop's CPU per token, which on a small machine is
    CPU the engine's threads get back.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    """Supervised entry point: token and spec on stdin, ``ready`` on stdout."""
    faulthandler.enable()  # a crash in an engine leaves its traceback on stderr
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(STDIN, 65536)
        if not chunk:
            sys.exit("runner: no spec on stdin")
        line += chunk
    first = orjson.loads(line)
    logging.basicConfig(
        level=str(first.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        _watch_parent(loop, stop)
        await serve_runner(
            first["spec"],
            first["token"],
            host=first.get("host", "127.0.0.1"),
            port=0,
            announce=_announce,
            stop=stop,
        )

    with asyncio.Runner(loop_factory=_loop_factory()) as loop_runner:
        loop_runner.run(run())
    sys.stdout.flush()
    sys.stderr.flush()
    # The engines are closed; skip interpreter teardown (the parent-watch thread
    # still blocks in read(), and native libraries need no finalisers).
    os._exit(0)


if __name__ == "__main__":
    main()
