"""The runners that joined, as the control plane knows them (in memory).

A runner registers with a verified join token (:meth:`RunnerRegistry.register`)
and then sends heartbeats with its figures (:meth:`RunnerRegistry.heartbeat`):
memory per device, loaded models, queue depth and tokens/s. A sweep
(:meth:`RunnerRegistry.sweep`, run every second or so by the control plane)
marks a runner down when no heartbeat came for ``heartbeat_timeout_s``;
nothing is routed or placed on it then (:meth:`placement_runners` reports it
down, and the scheduler places its replicas elsewhere). The next heartbeat
brings it back up.

The clearance a runner declares is capped by its token's ``max_clearance``.
Revoking a token removes the runners that joined with it
(:meth:`forget_token`). Times are on one monotonic clock (``clock``); a
runner reports how long each model has been idle, never a timestamp, so the
two machines' clocks need not agree.

The registry is rebuilt from registrations after a restart: runners that get
an unknown-runner answer to a heartbeat register again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from enclave.errors import Conflict, InvalidRequest, NotFound
from enclave.runners import placement
from enclave.runners.tokens import JoinToken

if TYPE_CHECKING:
    from enclave.metrics import Metrics

DEFAULT_HEARTBEAT_TIMEOUT_S = 15.0
RunnerState = Literal["up", "down"]


@dataclass(frozen=True)
class DeviceInfo:
    """A device a runner declares: a GPU (memory through NVML) or its CPU memory."""

    name: str
    kind: Literal["gpu", "cpu"]
    memory_total_gb: float


@dataclass(frozen=True)
class RunnerInfo:
    """What a runner declares when it registers."""

    name: str
    url: str  # where the control plane reaches its HTTP protocol
    devices: tuple[DeviceInfo, ...]
    engines: frozenset[str]
    location: str
    clearance: str
    version: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """A model loaded on a runner, as its heartbeat reports it."""

    model: str
    device: str
    memory_gb: float
    priority: placement.Priority = "normal"
    queue_depth: int = 0
    in_flight: int = 0
    idle_s: float | None = None  # seconds since its last request; None: never used


@dataclass(frozen=True)
class DeviceStats:
    name: str
    memory_used_gb: float
    memory_free_gb: float


@dataclass(frozen=True)
class RunnerStats:
    """One heartbeat's figures."""

    devices: tuple[DeviceStats, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()
    queue_depth: int = 0
    tokens_per_s: float = 0.0


@dataclass(frozen=True)
class DeviceView:
    name: str
    kind: str
    memory_total_gb: float
    memory_used_gb: float | None
    memory_free_gb: float | None


@dataclass(frozen=True)
class RunnerView:
    """A runner as the admin page, ``enclave runners list`` and ``/metrics`` show it."""

    name: str
    url: str
    state: RunnerState
    location: str
    clearance: str
    engines: tuple[str, ...]
    devices: tuple[DeviceView, ...]
    loaded: tuple[LoadedModel, ...]
    queue_depth: int
    tokens_per_s: float
    seconds_since_heartbeat: float
    token_id: int
    version: str


@dataclass
class _Entry:
    info: RunnerInfo
    token_id: int
    last_seen: float
    state: RunnerState = "up"
    stats: RunnerStats = field(default_factory=RunnerStats)
    # On the registry's clock: when each loaded model was last used.
    last_used: dict[str, float | None] = field(default_factory=dict)


class RunnerRegistry:
    """Registered runners, their last figures and whether they are up."""

    def __init__(
        self,
        classes: Sequence[str],
        *,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._classes = list(classes)
        self._timeout = heartbeat_timeout_s
        self._clock = clock
        self._metrics = metrics
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def register(self, info: RunnerInfo, token: JoinToken) -> RunnerInfo:
        """Add or replace a runner; returns it as registered (clearance capped).

        A name held by an up runner that joined with another token is refused
        (409): one machine cannot take over another's name.
        """
        if info.clearance not in self._classes:
            raise InvalidRequest(
                f"clearance '{info.clearance}' is not one of the classifications "
                f"({', '.join(self._classes)})",
                param="clearance",
            )
        if not info.devices:
            raise InvalidRequest("a runner must declare at least one device", param="devices")
        clearance = info.clearance
        cap = token.max_clearance
        if cap in self._classes and self._classes.index(cap) < self._classes.index(clearance):
            clearance = cap
        registered = replace(info, clearance=clearance)
        with self._lock:
            existing = self._entries.get(info.name)
            if existing and existing.state == "up" and existing.token_id != token.id:
                raise Conflict(f"A runner named '{info.name}' is already registered and up.")
            self._entries[info.name] = _Entry(registered, token.id, self._clock())
        self._publish()
        return registered

    def heartbeat(self, name: str, stats: RunnerStats) -> None:
        """Record a runner's figures; ``NotFound`` tells it to register again."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise NotFound(f"No runner named '{name}' is registered; register again.")
            entry.stats = stats
            entry.last_seen = now
            entry.state = "up"
            entry.last_used = {
                loaded.model: None if loaded.idle_s is None else now - loaded.idle_s
                for loaded in stats.loaded
            }
        self._publish()

    def sweep(self, now: float | None = None) -> list[str]:
        """Mark runners down whose last heartbeat is older than the timeout.

        Returns the names that went down in this sweep.
        """
        now = self._clock() if now is None else now
        gone = []
        with self._lock:
            for name, entry in self._entries.items():
                if entry.state == "up" and now - entry.last_seen > self._timeout:
                    entry.state = "down"
                    gone.append(name)
        if gone:
            self._publish()
        return gone

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)
        self._publish()

    def forget_token(self, token_id: int) -> list[str]:
        """Remove the runners that joined with a (revoked) token; returns their names."""
        with self._lock:
            names = [n for n, e in self._entries.items() if e.token_id == token_id]
            for name in names:
                del self._entries[name]
        if names:
            self._publish()
        return names

    def list_runners(self) -> list[RunnerView]:
        now = self._clock()
        with self._lock:
            return [_view(entry, now) for _, entry in sorted(self._entries.items())]

    def placement_runners(self) -> list[placement.Runner]:
        """The runners as :func:`enclave.runners.placement.plan` takes them."""
        with self._lock:
            return [_for_placement(entry) for _, entry in sorted(self._entries.items())]

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.record_runners(self.list_runners())


def _view(entry: _Entry, now: float) -> RunnerView:
    measured = {stats.name: stats for stats in entry.stats.devices}
    devices = []
    for device in entry.info.devices:
        stats = measured.get(device.name)
        devices.append(
            DeviceView(
                name=device.name,
                kind=device.kind,
                memory_total_gb=device.memory_total_gb,
                memory_used_gb=stats.memory_used_gb if stats else None,
                memory_free_gb=stats.memory_free_gb if stats else None,
            )
        )
    info = entry.info
    return RunnerView(
        name=info.name,
        url=info.url,
        state=entry.state,
        location=info.location,
        clearance=info.clearance,
        engines=tuple(sorted(info.engines)),
        devices=tuple(devices),
        loaded=entry.stats.loaded,
        queue_depth=entry.stats.queue_depth,
        tokens_per_s=entry.stats.tokens_per_s,
        seconds_since_heartbeat=max(0.0, now - entry.last_seen),
        token_id=entry.token_id,
        version=info.version,
    )


def _for_placement(entry: _Entry) -> placement.Runner:
    info = entry.info
    return placement.Runner(
        name=info.name,
        devices=tuple(placement.Device(d.name, d.memory_total_gb) for d in info.devices),
        engines=info.engines,
        clearance=info.clearance,
        location=info.location,
        up=entry.state == "up",
        replicas=tuple(
            placement.Replica(
                model=loaded.model,
                device=loaded.device,
                memory_gb=loaded.memory_gb,
                priority=loaded.priority,
                last_used=entry.last_used.get(loaded.model),
                in_flight=loaded.in_flight,
            )
            for loaded in entry.stats.loaded
        ),
    )
