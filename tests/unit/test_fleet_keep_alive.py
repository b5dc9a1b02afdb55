"""keep_alive on the control plane's fleet, on an injected clock.

A real runner (in-process, the scripted engine) joins a :class:`RunnerFleet`
whose registry, fleet and runner share one fake clock. The ``keep_alive``
deployment is not loaded until a request asks for it; it stays while used or
idle for less than ``keep_alive``; it is unloaded once idle for longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from enclave.gateway.routing import RoutingTable
from enclave.runners.control import RunnerControl
from enclave.runners.deployments import DeploymentStore
from enclave.runners.fleet import RunnerFleet
from enclave.runners.join import DeploymentHost
from enclave.runners.registry import RunnerRegistry
from enclave.runners.server import RunnerServer
from enclave.runners.tokens import JoinTokenService
from enclave.settings import (
    DEFAULT_CLASSIFICATIONS,
    DeploymentConfig,
    InputLimitsConfig,
    RemoteRunnersConfig,
    RunnerConfig,
    Settings,
    check_deployments,
)
from enclave.storage.db import open_database
from enclave.testing.scripted import ScriptedDeployment

T = TypeVar("T")
CLASSES = list(DEFAULT_CLASSIFICATIONS)
KEEP_ALIVE_S = 60.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=30)

    return asyncio.run(bounded())


async def until(check: object, what: str) -> None:
    for _ in range(200):
        if callable(check) and check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_keep_alive_model_loads_on_first_use_and_unloads_when_idle(tmp_path: Path) -> None:
    clock = FakeClock()
    _, sessions = open_database(f"sqlite:///{tmp_path / 'enclave.db'}")
    deployments = [
        DeploymentConfig(
            model="lazy",
            source="builtin:smollm2",
            engine="llamacpp",
            memory_gb=1,
            keep_alive=f"{int(KEEP_ALIVE_S)}s",
        )
    ]
    check_deployments(deployments, CLASSES)
    tokens = JoinTokenService(sessions, CLASSES)
    control = RunnerControl(
        classes=CLASSES,
        tokens=tokens,
        registry=RunnerRegistry(CLASSES, heartbeat_timeout_s=5, clock=clock),
        deployments=DeploymentStore(sessions, deployments, CLASSES),
    )
    settings = Settings.model_construct(providers=[], classifications=DEFAULT_CLASSIFICATIONS)
    routing = RoutingTable.build(settings, [], default_model="lazy")
    fleet = RunnerFleet(control, routing, RemoteRunnersConfig(load_wait_s=10), clock=clock)
    host = DeploymentHost(
        {},
        runner=RunnerConfig(self_test=False),
        input_limits=InputLimitsConfig(),
        memory_gb=4,
        engine_factory=lambda body: ScriptedDeployment(str(body["model"])),
        clock=clock,
    )
    secret, _ = tokens.create("office")

    async def heartbeat() -> None:
        await fleet.heartbeat(secret, {"name": "office", **host.stats()})

    async def scenario() -> None:
        server = RunnerServer([], "bearer", {}, host=host)
        app_runner = web.AppRunner(server.app(), handler_cancellation=True)
        await app_runner.setup()
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{app_runner.addresses[0][1]}"
        await fleet.start()
        try:
            await fleet.register(
                secret,
                {
                    "name": "office",
                    "url": url,
                    "token": "bearer",
                    "devices": [{"name": "cpu", "kind": "cpu", "memory_total_gb": 4}],
                    "engines": ["llamacpp"],
                    "clearance": CLASSES[-1],
                },
            )
            await fleet.step()
            await asyncio.sleep(0.2)
            assert host.loaded == {}, "a keep_alive model waits for its first request"

            await fleet.ready("lazy")  # the first request: loads it, then returns
            assert "lazy" in host.loaded and routing.by_model.get("lazy")
            host.begin("lazy")  # the request runs and ends now (on the fake clock)
            host.end("lazy", 5)

            clock.now += KEEP_ALIVE_S - 1  # idle, but not for long enough
            await heartbeat()
            await fleet.step()
            await asyncio.sleep(0.2)
            assert "lazy" in host.loaded

            clock.now += 2  # idle for longer than keep_alive
            await heartbeat()
            await fleet.step()
            await until(lambda: "lazy" not in host.loaded, "the idle model to be unloaded")
            await until(lambda: not routing.by_model.get("lazy"), "its route to go")
        finally:
            await fleet.close()
            await app_runner.cleanup()

    run(scenario())
