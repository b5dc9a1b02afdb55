"""A runner on another machine: ``enclave runner --join URL --token TOKEN``.

The runner starts with nothing loaded. It serves the runner protocol
(:mod:`enclave.runners.protocol`, over HTTPS when given a certificate) and
registers with the control plane (``POST /api/runners/register``, the join
token as the bearer), declaring:

* its devices (:func:`read_devices`): the GPUs NVML reports (``pynvml``),
  else the machine's memory (``/proc/meminfo``, or psutil), or ``--memory-gb``;
* the engines it can load (:func:`available_engines`): llama.cpp, the embedder,
  and ``llama-server`` and vLLM where installed (:mod:`enclave.runners.engines`);
* its location and clearance (the token's ``max_clearance`` caps it);
* the URL and bearer token the control plane uses to reach it.

It then sends a heartbeat (``POST /api/runners/heartbeat``) every
``heartbeat_interval_s`` seconds with its figures (:meth:`DeploymentHost.stats`).
A heartbeat answered 404 (the control plane restarted) registers again; one
answered 401 (the token was revoked or expired) stops the runner.

The control plane places deployments and tells the runner to load or unload
them (``POST /runner/v1/deployments``, ``DELETE /runner/v1/deployments/MODEL``);
each loaded deployment is a provider named after its model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from enclave import __version__
from enclave.errors import InvalidRequest, NotFound
from enclave.providers.base import Provider
from enclave.runners.engines import SERVER_ENGINES, build_server_engine, server_engines
from enclave.runners.protocol import card_to_wire
from enclave.runners.server import RunnerServer, error_response, runner_cpu, self_test
from enclave.settings import InputLimitsConfig, ModelConfig, ProviderConfig, RunnerConfig, Settings

log = logging.getLogger(__name__)

GB = 1024**3
REGISTER_PATH = "/api/runners/register"
HEARTBEAT_PATH = "/api/runners/heartbeat"
RETRY_S = 2.0
TOKENS_WINDOW_S = 10.0


class JoinRefused(Exception):
    """The control plane refused the join token (401): unknown, revoked or expired."""


def _meminfo_gb() -> tuple[float, float] | None:
    """(total, available) memory in GB from /proc/meminfo, or psutil."""
    try:
        fields = {}
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                fields[key] = int(value.split()[0]) * 1024
        return fields["MemTotal"] / GB, fields.get("MemAvailable", fields["MemFree"]) / GB
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    memory = psutil.virtual_memory()
    return memory.total / GB, memory.available / GB


def _nvml_devices() -> list[dict[str, Any]]:
    """The GPUs NVML reports, with total/used/free memory; [] without pynvml or a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU runner
        return []
    devices = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                {
                    "name": f"cuda:{index}",
                    "kind": "gpu",
                    "memory_total_gb": memory.total / GB,
                    "memory_used_gb": memory.used / GB,
                    "memory_free_gb": memory.free / GB,
                }
            )
    finally:
        pynvml.nvmlShutdown()
    return devices


def read_devices(memory_gb: float | None = None) -> list[dict[str, Any]]:
    """The devices to declare: GPUs through NVML, else the CPU's memory.

    ``memory_gb`` declares that much CPU memory instead (and no GPU): to keep
    room for other work on the machine, or to test placement.
    """
    if memory_gb is None:
        gpus = _nvml_devices()
        if gpus:
            return gpus
    measured = _meminfo_gb()
    total = memory_gb if memory_gb is not None else (measured[0] if measured else 0.0)
    available = measured[1] if measured else total
    return [
        {
            "name": "cpu",
            "kind": "cpu",
            "memory_total_gb": round(total, 3),
            "memory_used_gb": round(max(0.0, total - available), 3),
            "memory_free_gb": round(min(total, available), 3),
        }
    ]


def available_engines(runner: RunnerConfig | None = None) -> list[str]:
    """Engines this runner can load: llama.cpp, the embedder where installed, and
    ``llama-server`` and vLLM where installed (:func:`enclave.runners.engines.server_engines`,
    which ``runner.llama_server_path`` and ``runner.vllm_path`` point at)."""
    engines = ["llamacpp"]
    if importlib.util.find_spec("sentence_transformers") is not None:
        engines.append("sentence-transformers")
    return engines + server_engines(runner or RunnerConfig())


def tls_server_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def tls_client_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the other side's certificate: against ``ca_file``, or the system's CAs."""
    return ssl.create_default_context(cafile=ca_file)


class DeploymentHost:
    """The deployments loaded on this runner, as providers named after their models."""

    def __init__(
        self,
        providers: dict[str, Provider],
        *,
        runner: RunnerConfig,
        input_limits: InputLimitsConfig,
        memory_gb: float | None = None,
        engine_factory: Callable[[dict[str, Any]], Provider] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.providers = providers  # shared with the RunnerServer: what it serves
        self.runner = runner
        self.input_limits = input_limits
        self.memory_gb = memory_gb
        self.loaded: dict[str, dict[str, Any]] = {}  # model -> the load request
        self.served: dict[str, int] = {}
        self.in_flight: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self._tokens: list[tuple[float, int]] = []
        self._engine_factory = engine_factory or self._build
        self._clock = clock  # seconds; idle_s in the heartbeats is measured on it
        self._lock = asyncio.Lock()

    def _build(self, body: dict[str, Any]) -> Provider:
        from enclave.providers.registry import PROVIDER_TYPES

        engine = body["engine"]
        if engine in SERVER_ENGINES:
            return build_server_engine(
                body, self.runner, chars_per_token=self.input_limits.chars_per_token
            )
        if engine not in PROVIDER_TYPES or engine not in available_engines(self.runner):
            raise InvalidRequest(f"This runner cannot load the {engine} engine.", param="engine")
        source = str(body["source"])
        path = source.removeprefix("file:")
        config = ProviderConfig(
            name=body["model"],
            type=engine,
            models=[ModelConfig(name=body["model"], path=path, n_ctx=int(body.get("n_ctx", 4096)))],
        )
        settings = Settings.model_construct(
            providers=[config], runner=self.runner, input_limits=self.input_limits
        )
        return PROVIDER_TYPES[engine](config, settings)

    async def load(self, body: dict[str, Any]) -> None:
        model = str(body["model"])
        async with self._lock:
            if model in self.loaded:
                return
            provider = self._engine_factory(body)
            await provider.start()
            try:
                if self.runner.self_test:
                    await self_test(provider)
            except BaseException:
                await provider.close()
                raise
            self.providers[model] = provider
            self.loaded[model] = dict(body)
            self.last_used.pop(model, None)
        log.info("loaded %s (%s, %s)", model, body.get("engine"), body.get("source"))

    async def unload(self, model: str) -> None:
        async with self._lock:
            if model not in self.loaded:
                raise NotFound(f"This runner has no deployment '{model}' loaded.")
            provider = self.providers.pop(model)
            del self.loaded[model]
            await provider.close()
        log.info("unloaded %s", model)

    # -- figures -----------------------------------------------------------------

    def begin(self, name: str) -> None:
        self.served[name] = self.served.get(name, 0) + 1
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.last_used[name] = self._clock()

    def end(self, name: str, completion_tokens: int) -> None:
        self.in_flight[name] = max(0, self.in_flight.get(name, 0) - 1)
        now = self.last_used[name] = self._clock()
        if completion_tokens:
            self._tokens.append((now, completion_tokens))

    def tokens_per_s(self) -> float:
        since = self._clock() - TOKENS_WINDOW_S
        self._tokens = [(t, n) for t, n in self._tokens if t >= since]
        return sum(n for _, n in self._tokens) / TOKENS_WINDOW_S

    def stats(self) -> dict[str, Any]:
        """One heartbeat's figures."""
        now = self._clock()
        devices = read_devices(self.memory_gb)
        loaded, cards = [], []
        for model, body in self.loaded.items():
            provider = self.providers[model]
            queues = getattr(provider, "queue_depth", None)
            waiting = sum(queues().values()) if queues else 0
            used = self.last_used.get(model)
            loaded.append(
                {
                    "model": model,
                    "device": body.get("device") or devices[0]["name"],
                    "memory_gb": float(body.get("memory_gb") or 0.0),
                    "priority": body.get("priority") or "normal",
                    "queue_depth": waiting,
                    "in_flight": self.in_flight.get(model, 0),
                    "idle_s": None if used is None else now - used,
                }
            )
            cards += [card_to_wire(card) for card in provider.models()]
        if self.memory_gb is not None:  # declared memory: used is what the loads declared
            for device in devices:
                used_gb = sum(m["memory_gb"] for m in loaded if m["device"] == device["name"])
                device["memory_used_gb"] = used_gb
                device["memory_free_gb"] = max(0.0, device["memory_total_gb"] - used_gb)
        return {
            "devices": [
                {
                    "name": d["name"],
                    "memory_used_gb": d["memory_used_gb"],
                    "memory_free_gb": d["memory_free_gb"],
                }
                for d in devices
            ],
            "loaded": loaded,
            "cards": cards,
            "queue_depth": sum(m["queue_depth"] + m["in_flight"] for m in loaded),
            "tokens_per_s": round(self.tokens_per_s(), 3),
        }

    # -- HTTP (added to the RunnerServer's app) ----------------------------------

    def add_routes(self, app: web.Application, prefix: str) -> None:
        app.router.add_post(f"{prefix}/deployments", self._load_route)
        app.router.add_delete(f"{prefix}/deployments/{{model}}", self._unload_route)
        app.router.add_get(f"{prefix}/stats", self._stats_route)

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")

    async def _load_route(self, request: web.Request) -> web.Response:
        try:
            await self.load(orjson.loads(await request.read()))
        except Exception as exc:
            log.exception("loading a deployment failed")
            return error_response(exc)
        return self._json(self.stats())

    async def _unload_route(self, request: web.Request) -> web.Response:
        try:
            await self.unload(request.match_info["model"])
        except Exception as exc:
            return error_response(exc)
        return self._json(self.stats())

    async def _stats_route(self, request: web.Request) -> web.Response:
        return self._json({**self.stats(), "served": self.served})


class ControlPlaneLink:
    """Registers with the control plane and keeps sending heartbeats."""

    def __init__(
        self,
        control_url: str,
        join_token: str,
        registration: dict[str, Any],
        host: DeploymentHost,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.control_url = control_url.rstrip("/")
        self.registration = registration
        self.host = host
        self._headers = {"Authorization": f"Bearer {join_token}"}
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self.interval_s = 2.0

    async def _post(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        async with session.post(
            self.control_url + path,
            data=orjson.dumps(body),
            headers={**self._headers, "Content-Type": "application/json"},
            ssl=self._ssl,
        ) as response:
            raw = await response.read()
            try:
                data = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                data = {}
            return response.status, data if isinstance(data, dict) else {}

    async def register(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        status, data = await self._post(session, REGISTER_PATH, self.registration)
        if status == 401:
            raise JoinRefused(_message(data) or "the join token was refused")
        if status != 200:
            raise RuntimeError(f"registration answered {status}: {_message(data)}")
        self.interval_s = float(data.get("heartbeat_interval_s") or self.interval_s)
        log.info(
            "joined %s as '%s' (clearance %s)",
            self.control_url,
            data.get("name"),
            data.get("clearance"),
        )
        return data

    async def run(self, registered: asyncio.Event | None = None) -> None:
        """Register (retrying while the control plane is unreachable), then heartbeat
        until cancelled. Raises :class:`JoinRefused` when the token is refused."""
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
            joined = False
            while True:
                try:
                    if not joined:
                        await self.register(session)
                        joined = True
                        if registered is not None:
                            registered.set()
                    else:
                        body = {"name": self.registration["name"], **self.host.stats()}
                        status, data = await self._post(session, HEARTBEAT_PATH, body)
                        if status == 401:
                            raise JoinRefused(_message(data) or "the join token was refused")
                        if status == 404:
                            log.warning("the control plane forgot this runner; joining again")
                            joined = False
                            continue
                        if status != 200:
                            log.warning("heartbeat answered %d: %s", status, _message(data))
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    log.warning("control plane %s unreachable: %s", self.control_url, exc)
                    await asyncio.sleep(RETRY_S)
                    continue
                await asyncio.sleep(self.interval_s)


def _message(data: dict[str, Any]) -> str:
    error = data.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or "")
    return ""


def default_name() -> str:
    return socket.gethostname().split(".")[0] or f"runner-{os.getpid()}"


def registration(
    *,
    name: str,
    url: str,
    token: str,
    devices: list[dict[str, Any]],
    engines: list[str],
    location: str,
    clearance: str,
) -> dict[str, Any]:
    """The body of ``POST /api/runners/register``."""
    return {
        "name": name,
        "url": url,
        "token": token,
        "devices": [
            {"name": d["name"], "kind": d["kind"], "memory_total_gb": d["memory_total_gb"]}
            for d in devices
        ],
        "engines": engines,
        "location": location,
        "clearance": clearance,
        "version": __version__,
    }


async def serve_joined(
    host: DeploymentHost,
    *,
    control_url: str,
    join_token: str,
    runner_token: str,
    name: str,
    listen_host: str,
    port: int,
    advertise_url: str | None,
    location: str,
    clearance: str,
    devices: list[dict[str, Any]],
    engines: list[str],
    tls: ssl.SSLContext | None = None,
    control_ca: ssl.SSLContext | None = None,
    announce: Callable[[dict[str, Any]], None],
    stop: asyncio.Event,
) -> None:
    """Serve the runner protocol, join the control plane, and run until ``stop``.

    Raises :class:`JoinRefused` when the control plane refuses the join token.
    """
    server = RunnerServer([], runner_token, runner_cpu(host.runner), host=host)
    app_runner = web.AppRunner(server.app(), handler_cancellation=True, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, listen_host, port, ssl_context=tls)
    await site.start()
    bound = app_runner.addresses[0][1] if app_runner.addresses else port
    scheme = "https" if tls is not None else "http"
    where = listen_host if listen_host not in ("0.0.0.0", "::", "") else socket.getfqdn()
    url = advertise_url or f"{scheme}://{where}:{bound}"
    body = registration(
        name=name,
        url=url.rstrip("/"),
        token=runner_token,
        devices=devices,
        engines=engines,
        location=location,
        clearance=clearance,
    )
    link = ControlPlaneLink(control_url, join_token, body, host, ssl_context=control_ca)
    joined = asyncio.Event()
    beating = asyncio.create_task(link.run(joined))
    stopping = asyncio.create_task(stop.wait())
    registering = asyncio.create_task(joined.wait())
    try:
        await asyncio.wait({beating, registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if joined.is_set():
            announce({"runner": "joined", "url": url, "name": name, "pid": os.getpid()})
            await asyncio.wait({beating, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if beating.done():
            beating.result()  # JoinRefused, or a bug: let it out
    finally:
        for task in (beating, stopping, registering):
            task.cancel()
        await app_runner.cleanup()
        for provider in list(host.providers.values()):
            await provider.close()
