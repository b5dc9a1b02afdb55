"""The control plane's side of joined runners, running: registration, heartbeats,
the placement loop and the routing targets of the replicas.

:class:`RunnerFleet` wraps a :class:`~enclave.runners.control.RunnerControl`:

* :meth:`RunnerFleet.register` and :meth:`RunnerFleet.heartbeat` serve
  ``POST /api/runners/register`` and ``/api/runners/heartbeat``. Both verify
  the join token (a revoked or expired one is refused with 401 and registers
  nothing; a heartbeat with a token revoked since drops the runner at once).
* :meth:`RunnerFleet.run` is the loop: about once a second, and at once after
  a registration, a heartbeat that changed what is loaded, a runner going down
  or a request for a model that is not loaded, it sweeps the registry, plans
  (:func:`enclave.runners.placement.plan`) and carries out the decisions:
  ``place`` loads the model on the runner (``POST /runner/v1/deployments``),
  ``evict`` and ``unload`` unload it. A load in progress counts as a replica
  (busy, so it is not planned again or evicted) but takes no requests.
* Each runner is one provider of the gateway's :class:`RoutingTable`,
  ``runner:NAME``, with the runner's clearance and location, whose targets are
  the models it has loaded while it is up. Classification routing therefore
  treats a runner exactly like a provider, and fails closed the same way.
  :meth:`RunnerFleet.order` orders a deployment's replicas with
  :func:`enclave.runners.routing.pick_replica` (least queue depth, prefix
  affinity); :meth:`RunnerFleet.ready` waits for a ``keep_alive`` model to
  load on first use, or raises the 503 of a model with no replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import orjson

from enclave.auth.keys import hash_key
from enclave.errors import AuthenticationFailed, InvalidRequest, ServiceUnavailable
from enclave.gateway.routing import RoutingTable, Target
from enclave.providers.base import Health, ModelCard
from enclave.providers.runner_client import RunnerProvider
from enclave.runners import placement
from enclave.runners.control import RunnerControl
from enclave.runners.deployments import DeclaredDeployment, to_placement
from enclave.runners.protocol import PREFIX, card_from_wire, error_from_wire
from enclave.runners.registry import (
    DeviceInfo,
    DeviceStats,
    LoadedModel,
    RunnerInfo,
    RunnerStats,
)
from enclave.runners.routing import ReplicaLoad, pick_replica
from enclave.settings import RemoteRunnersConfig

log = logging.getLogger(__name__)

LOOP_INTERVAL_S = 1.0
LOAD_TIMEOUT_S = 900.0  # downloading and loading a big model
UNLOAD_TIMEOUT_S = 60.0
RETRY_FAILED_LOAD_S = 10.0
PROVIDER_PREFIX = "runner:"


def provider_name(runner: str) -> str:
    return PROVIDER_PREFIX + runner


@dataclass
class RemoteRunnerLink:
    """A joined runner as :class:`RunnerProvider` reaches it (the ``RunnerLink`` shape)."""

    name: str
    url: str | None
    token: str
    cards: dict[str, list[ModelCard]]
    up: bool = True

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def wait_ready(self, timeout: float) -> bool:
        return self.up and self.url is not None

    async def exit_reason(self, timeout: float) -> str:
        return f"runner '{self.name}' stopped answering"

    def unavailable(self) -> str:
        return f"runner '{self.name}' is down"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "state": "up" if self.up else "down"}


class RemoteRunnerProvider(RunnerProvider):
    """All the deployments loaded on one joined runner, as one provider."""

    def __init__(self, name: str, link: RemoteRunnerLink, **kwargs: Any) -> None:
        super().__init__(name, link, **kwargs)
        self.link = link

    def hosted(self, model: str) -> str:
        return model  # a joined runner names each loaded deployment after its model

    async def health(self) -> Health:
        link = self.runner
        return Health(ok=await link.wait_ready(0), detail="" if link.url else link.unavailable())


class RunnerFleet:
    """Registration, heartbeats, the placement loop and the replicas' routing targets."""

    def __init__(
        self,
        control: RunnerControl,
        routing: RoutingTable,
        config: RemoteRunnersConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.control = control
        self.routing = routing
        self.config = config
        self._clock = clock
        self._ssl = ssl.create_default_context(cafile=config.ca_file)
        self._providers: dict[str, RemoteRunnerProvider] = {}
        self._token_hashes: dict[str, str] = {}  # runner -> hash of the token it joined with
        self._cards: dict[str, dict[str, ModelCard]] = {}
        self._pending: dict[tuple[str, str], placement.Replica] = {}
        self._failed: dict[tuple[str, str], float] = {}
        self._demand: dict[str, float] = {}  # model -> when it was asked for
        self._deployed: dict[str, DeclaredDeployment] = {}
        self._unplaced: dict[str, str] = {}
        self._steps = 0  # plans made, so a request knows a plan has seen its demand
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._loop_task: asyncio.Task[None] | None = None
        routing.replicas = self

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl),
            trust_env=False,
        )
        self._deployed = await self._read_deployments()
        self._loop_task = asyncio.create_task(self.run(), name="runner-placement")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in list(self._tasks):
            task.cancel()
        for provider in self._providers.values():
            await provider.close()
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("runner placement failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOP_INTERVAL_S)
            self._wake.clear()

    def kick(self) -> None:
        self._wake.set()

    # -- registration and heartbeats ----------------------------------------------

    async def register(self, secret: str, body: dict[str, Any]) -> dict[str, Any]:
        token = await asyncio.to_thread(self.control.tokens.verify_join_token, secret)
        info = _runner_info(body)
        registered = self.control.registry.register(info, token)
        name = registered.name
        self._token_hashes[name] = hash_key(secret)
        link = RemoteRunnerLink(name, registered.url, str(body.get("token") or ""), {})
        old = self._providers.get(name)
        if old is not None:
            await old.close()
        provider = RemoteRunnerProvider(
            provider_name(name), link, restart_wait_s=0.0, ssl_context=self._ssl
        )
        await provider.start()
        self._providers[name] = provider
        self._cards[name] = {}
        self._failed = {k: v for k, v in self._failed.items() if k[0] != name}
        self._pending = {k: v for k, v in self._pending.items() if k[0] != name}
        self._sync_routes()
        log.info(
            "runner '%s' joined from %s (clearance %s, %s)",
            name,
            registered.url,
            registered.clearance,
            ", ".join(f"{d.name} {d.memory_total_gb:g} GB" for d in registered.devices),
        )
        self.kick()
        return {
            "name": name,
            "clearance": registered.clearance,
            "heartbeat_interval_s": self.config.heartbeat_interval_s,
        }

    async def heartbeat(self, secret: str, body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("name") or "")
        try:
            await asyncio.to_thread(self.control.tokens.verify_join_token, secret)
        except AuthenticationFailed:
            if self._token_hashes.get(name) == hash_key(secret):  # revoked since it joined
                self.control.registry.unregister(name)
                self._forget(name)
            raise
        if self._token_hashes.get(name) != hash_key(secret):
            raise AuthenticationFailed(
                "This runner joined with another token.", code="invalid_join_token"
            )
        stats, cards = _runner_stats(body)
        before = self._loaded(name)
        self.control.registry.heartbeat(name, stats)  # NotFound: register again
        self._cards[name] = cards
        if self._loaded(name) != before or not self._providers[name].link.up:
            self._sync_routes()
            self.kick()
        return {"ok": True}

    def forget_runners(self, names: list[str]) -> None:
        """Drop runners the registry forgot (their join token was revoked)."""
        for name in names:
            self._forget(name)

    def _forget(self, name: str) -> None:
        self._token_hashes.pop(name, None)
        self._cards.pop(name, None)
        provider = self._providers.get(name)
        if provider is not None:
            provider.link.up = False
            self.routing.set_provider_targets(provider, [], "", "")
        self.kick()

    def _loaded(self, name: str) -> set[str]:
        return set(self._cards.get(name, {}))

    # -- routing -----------------------------------------------------------------

    def _sync_routes(self) -> None:
        """Each runner's targets: the models it has loaded while it is up."""
        views = {view.name: view for view in self.control.registry.list_runners()}
        for name, provider in self._providers.items():
            view = views.get(name)
            link = provider.link
            if view is None or view.state != "up":
                link.up = False
                self.routing.set_provider_targets(provider, [], "", "")
                continue
            link.up = True
            loaded = {m.model for m in view.loaded}
            cards = [
                replace(card, provider=provider.name)
                for model, card in self._cards.get(name, {}).items()
                if model in loaded and model in self._deployed
            ]
            link.cards = {provider.name: cards}
            self.routing.set_provider_targets(provider, cards, view.clearance, view.location)
        self._changed.set()
        self._changed = asyncio.Event()

    def deployed(self) -> list[str]:
        return sorted(self._deployed)

    def order(self, targets: list[Target], key: str | None) -> list[Target]:
        """Runner replicas by :func:`pick_replica` (least queue depth, prefix affinity),
        repeatedly, so every replica is in the list; other targets keep their place after."""
        depth = {
            provider_name(view.name): {m.model: m.queue_depth + m.in_flight for m in view.loaded}
            for view in self.control.registry.list_runners()
        }
        remote = [t for t in targets if t.provider in depth]
        others = [t for t in targets if t.provider not in depth]
        loads = [
            ReplicaLoad(t.qualified, depth[t.provider].get(t.model, 0), healthy=True)
            for t in remote
        ]
        by_id = {t.qualified: t for t in remote}
        ordered: list[Target] = []
        while loads:
            chosen = pick_replica(loads, key)
            assert chosen is not None
            ordered.append(by_id[chosen.id])
            loads = [load for load in loads if load.id != chosen.id]
        return [replace(t, preference=rank) for rank, t in enumerate(ordered + others)]

    async def ready(self, model: str) -> None:
        """Wait until ``model`` has a routable replica, or raise its 503.

        A ``keep_alive`` model not loaded is asked for (demand) and waited for,
        up to ``load_wait_s``. A model the scheduler could not place gets the
        503 with the scheduler's reason as soon as a plan has shown it.
        """
        deadline = self._clock() + self.config.load_wait_s
        asked_at: int | None = None
        while True:
            if self.routing.by_model.get(model):
                return
            declared = self._deployed.get(model)
            if declared is None:
                return  # removed meanwhile: the routing table answers 404
            if declared.spec.keep_alive is not None:
                self._demand[model] = self._clock()
                if asked_at is None:
                    asked_at = self._steps
                    self.kick()
            planned = asked_at is None or self._steps > asked_at
            problem = self._unplaced.get(model)
            if planned and problem is not None and not self._placing(model):
                raise ServiceUnavailable(
                    f"The model '{model}' is not placed on any runner: {problem}.",
                    code="model_unplaced",
                )
            left = deadline - self._clock()
            if left <= 0:
                raise ServiceUnavailable(
                    f"The model '{model}' is being loaded on a runner; retry shortly.",
                    code="model_loading",
                    headers={"Retry-After": "5"},
                )
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left, LOOP_INTERVAL_S))

    def _placing(self, model: str) -> bool:
        return any(m == model for _, m in self._pending)

    # -- the loop ----------------------------------------------------------------

    async def _read_deployments(self) -> dict[str, DeclaredDeployment]:
        declared = await asyncio.to_thread(self.control.deployments.effective)
        return {d.spec.model: d for d in declared}

    async def step(self) -> placement.Plan:
        """Sweep, plan and start carrying out the decisions (loads run in the background)."""
        registry = self.control.registry
        gone = registry.sweep()
        for name in gone:
            log.warning("runner '%s' missed its heartbeats: marked down", name)
        self._deployed = await self._read_deployments()
        self._sync_routes()
        now = self._clock()
        loaded = {m for name in self._cards for m in self._loaded(name)}
        # Demand lasts until the model is loaded (or a request gave up waiting).
        self._demand = {
            m: t
            for m, t in self._demand.items()
            if m not in loaded and now - t < self.config.load_wait_s
        }
        runners = [self._with_pending(r) for r in registry.placement_runners()]
        plan = placement.plan(
            runners,
            [to_placement(d.spec) for d in self._deployed.values()],
            classes=self.control.classes,
            now=now,
            demand=set(self._demand),
        )
        unplaced = {model: reason for model, reason in plan.unavailable.items()}
        for model, reason in unplaced.items():
            if self._unplaced.get(model) != reason:
                log.warning("deployment '%s' has no replica: %s", model, reason)
        self._unplaced = unplaced
        self._steps += 1
        for decision in plan.decisions:
            if decision.kind == "place":
                self._start_load(decision, now)
            elif decision.kind in ("evict", "unload"):
                self._start_unload(decision)
        self._changed.set()
        self._changed = asyncio.Event()
        return plan

    def _with_pending(self, runner: placement.Runner) -> placement.Runner:
        extra = tuple(rep for (name, _), rep in self._pending.items() if name == runner.name)
        return replace(runner, replicas=runner.replicas + extra) if extra else runner

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_load(self, decision: placement.Decision, now: float) -> None:
        assert decision.runner is not None and decision.device is not None
        key = (decision.runner, decision.model)
        if key in self._pending or now - self._failed.get(key, -1e9) < RETRY_FAILED_LOAD_S:
            return
        spec = self._deployed[decision.model].spec
        self._pending[key] = placement.Replica(
            model=spec.model,
            device=decision.device,
            memory_gb=spec.memory_gb,
            priority=spec.priority,
            last_used=now,
            in_flight=1,  # busy: neither evicted nor unloaded while it loads
        )
        log.info("placing %s", decision)
        body = {
            "model": spec.model,
            "source": spec.source,
            "engine": spec.engine,
            "memory_gb": spec.memory_gb,
            "priority": spec.priority,
            "device": decision.device,
        }
        self._spawn(self._call(decision.runner, "POST", "/deployments", body, key))

    def _start_unload(self, decision: placement.Decision) -> None:
        assert decision.runner is not None
        if (decision.runner, decision.model) in self._pending:
            return
        log.info("%s", decision)
        path = f"/deployments/{decision.model}"
        self._spawn(self._call(decision.runner, "DELETE", path, None, None))

    async def _call(
        self,
        runner: str,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        pending: tuple[str, str] | None,
    ) -> None:
        provider = self._providers.get(runner)
        try:
            if provider is None or self._session is None or provider.runner.url is None:
                raise ConnectionError(f"runner '{runner}' is not registered")
            link = provider.runner
            timeout = LOAD_TIMEOUT_S if method == "POST" else UNLOAD_TIMEOUT_S
            async with self._session.request(
                method,
                f"{link.url}{PREFIX}{path}",
                data=orjson.dumps(body) if body is not None else None,
                headers={"Authorization": f"Bearer {link.token}"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                data = orjson.loads(await response.read())
            if response.status != 200:
                raise error_from_wire(data.get("error") or {})
            stats, cards = _runner_stats(data)
            self.control.registry.heartbeat(runner, stats)
            self._cards[runner] = cards
        except Exception as exc:
            message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("%s %s on runner '%s' failed: %s", method, path, runner, message)
            if pending is not None:
                self._failed[pending] = self._clock()
        finally:
            if pending is not None:
                self._pending.pop(pending, None)
            self._sync_routes()
            self.kick()


def _runner_info(body: dict[str, Any]) -> RunnerInfo:
    try:
        url = str(body["url"]).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InvalidRequest("a runner's url must be http(s)://host:port", param="url")
        return RunnerInfo(
            name=str(body["name"]),
            url=url,
            devices=tuple(
                DeviceInfo(str(d["name"]), d["kind"], float(d["memory_total_gb"]))
                for d in body["devices"]
            ),
            engines=frozenset(str(e) for e in body["engines"]),
            location=str(body.get("location") or "on-prem"),
            clearance=str(body["clearance"]),
            version=str(body.get("version") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"a malformed runner registration: {exc}") from None


def _runner_stats(body: dict[str, Any]) -> tuple[RunnerStats, dict[str, ModelCard]]:
    try:
        stats = RunnerStats(
            devices=tuple(
                DeviceStats(str(d["name"]), float(d["memory_used_gb"]), float(d["memory_free_gb"]))
                for d in body.get("devices") or ()
            ),
            loaded=tuple(
                LoadedModel(
                    model=str(m["model"]),
                    device=str(m["device"]),
                    memory_gb=float(m["memory_gb"]),
                    priority=m.get("priority") or "normal",
                    queue_depth=int(m.get("queue_depth") or 0),
                    in_flight=int(m.get("in_flight") or 0),
                    idle_s=None if m.get("idle_s") is None else float(m["idle_s"]),
                )
                for m in body.get("loaded") or ()
            ),
            queue_depth=int(body.get("queue_depth") or 0),
            tokens_per_s=float(body.get("tokens_per_s") or 0.0),
        )
        cards = {card.id: card for card in map(card_from_wire, body.get("cards") or ())}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"malformed runner figures: {exc}") from None
    return stats, cards
