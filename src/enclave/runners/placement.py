"""The scheduler: where each declared deployment's replicas run. Pure functions.

:func:`plan` takes the runners as they are (devices, engines, clearance, state
and the replicas loaded on them), the declared deployments, the time, and the
models asked for that have nothing loaded (``demand``). It returns the
decisions to carry out and the runners as they will be afterwards. It does no
I/O and keeps no state, so the caller (the control plane's placement loop, a
test, ``bench/runners_placement.py``) runs it again after every change: a
runner joins or leaves, a deployment is applied or removed, a model is asked
for, time passes.

The rules, in the order they are applied:

1. **Only up runners count.** Replicas on a runner that is down are gone; their
   deployments are short and are placed again below like any other.
2. **Memory is declared, per device.** A replica needs ``memory_gb`` on one
   device (a GPU, or a CPU runner's memory). A device's free memory is its
   memory minus the ``memory_gb`` of the replicas on it, so no device, and no
   runner, is ever over its memory. Measured figures are for people.
3. **Eligibility.** A replica goes only to a runner that offers its engine and
   whose clearance is at least the deployment's clearance (classes are
   ordered, lowest first). A loaded replica that is no longer eligible (its
   deployment changed) is unloaded, and so is one of a deployment that was
   removed, and surplus replicas (idle, least recently used first).
4. **keep_alive.** A deployment with ``keep_alive`` is loaded on first use (it
   is in ``demand``) and unloaded once idle (nothing in flight) for longer than
   ``keep_alive``. Until it is used it takes no memory, so runners can hold
   more declared models than fit at once: time-sharing. One without
   ``keep_alive`` is always wanted.
5. **Packing.** Wanted deployments are taken by priority (high, normal, low)
   and, within one priority, largest ``memory_gb`` first; each missing
   replica goes to the first device that fits (first-fit decreasing; runners
   by name, devices in order). Loaded replicas stay where they are.
6. **Spread.** Replicas of one deployment go to distinct runners where
   possible, otherwise to another device of a runner that has one; never two
   on one device.
7. **Eviction.** A replica that fits nowhere may evict, on one device, idle
   replicas of strictly lower priority (lowest priority, then least recently
   used, first), choosing the device where the least memory is evicted. A
   busy replica, or one of the same or higher priority, is never evicted.
8. **Unplaced.** A replica that still fits nowhere is reported ``unplaced``
   with the reason (:func:`unplaced_reason`): no runner up, none offers the
   engine, none is cleared, none has a device that large, or all are full.
   Requests for a deployment with no replica get a 503 with that reason.

After the pass, every short deployment is tried once more without eviction,
so the plan ends with no eligible device (without a replica of it) that has
room for a deployment still short of replicas: the invariant of first-fit
decreasing that the property tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

PRIORITIES = ("low", "normal", "high")
Priority = Literal["low", "normal", "high"]
DecisionKind = Literal["place", "evict", "unload", "unplaced"]
# Memory is compared with this tolerance so that float sums of GB never
# refuse an exact fit.
EPSILON_GB = 1e-9


def priority_rank(priority: str) -> int:
    return PRIORITIES.index(priority)


@dataclass(frozen=True)
class Device:
    """A GPU, or a CPU runner's memory, with the memory the scheduler may use."""

    name: str
    memory_gb: float


@dataclass(frozen=True)
class Replica:
    """A replica loaded (or about to be) on one device of a runner."""

    model: str
    device: str
    memory_gb: float
    priority: Priority = "normal"
    # Seconds on the caller's clock; None: never used since it was loaded.
    last_used: float | None = None
    in_flight: int = 0

    @property
    def idle(self) -> bool:
        return self.in_flight == 0


@dataclass(frozen=True)
class Runner:
    """A runner as the scheduler sees it."""

    name: str
    devices: tuple[Device, ...]
    engines: frozenset[str]
    clearance: str
    location: str = "on-prem"
    up: bool = True
    replicas: tuple[Replica, ...] = ()

    def used_gb(self, device: str | None = None) -> float:
        return sum(r.memory_gb for r in self.replicas if device is None or r.device == device)

    def free_gb(self, device: Device) -> float:
        return device.memory_gb - self.used_gb(device.name)

    @property
    def memory_gb(self) -> float:
        return sum(device.memory_gb for device in self.devices)


@dataclass(frozen=True)
class Deployment:
    """A declared model (``deployments:``), as the scheduler needs it."""

    model: str
    engine: str
    memory_gb: float
    clearance: str
    replicas: int = 1
    priority: Priority = "normal"
    keep_alive_s: float | None = None


@dataclass(frozen=True)
class Decision:
    """One thing to do. ``place``: load a replica; ``evict``/``unload``: drop one;
    ``unplaced``: a replica that could not be placed, and why."""

    kind: DecisionKind
    model: str
    runner: str | None = None
    device: str | None = None
    reason: str = ""

    def __str__(self) -> str:
        where = f" on {self.runner}/{self.device}" if self.runner else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.kind:<8} {self.model}{where}{why}"


@dataclass(frozen=True)
class Plan:
    """The decisions, in order, and the up runners as they will be after them."""

    decisions: tuple[Decision, ...]
    runners: tuple[Runner, ...]
    # Deployments with no replica at all afterwards, and why (the 503 message).
    unavailable: dict[str, str] = field(default_factory=dict)

    def replicas_of(self, model: str) -> list[tuple[str, Replica]]:
        return [(r.name, rep) for r in self.runners for rep in r.replicas if rep.model == model]


def cleared(runner_clearance: str, needed: str, classes: Sequence[str]) -> bool:
    """Whether a runner of ``runner_clearance`` may serve data of class ``needed``.

    An unknown class on either side is refused: fail closed.
    """
    if runner_clearance not in classes or needed not in classes:
        return False
    return classes.index(runner_clearance) >= classes.index(needed)


def eligible(runner: Runner, deployment: Deployment, classes: Sequence[str]) -> bool:
    return (
        runner.up
        and deployment.engine in runner.engines
        and cleared(runner.clearance, deployment.clearance, classes)
    )


def plan(
    runners: Iterable[Runner],
    deployments: Iterable[Deployment],
    *,
    classes: Sequence[str],
    now: float,
    demand: Collection[str] = (),
) -> Plan:
    """Decide what to load, evict and unload (the rules are in the module docstring)."""
    state = {r.name: r for r in sorted(runners, key=lambda r: r.name) if r.up}
    declared = {d.model: d for d in deployments}
    decisions: list[Decision] = []

    def drop(runner: str, replica: Replica, kind: DecisionKind, reason: str) -> None:
        current = state[runner]
        kept = list(current.replicas)
        kept.remove(replica)
        state[runner] = replace(current, replicas=tuple(kept))
        decisions.append(Decision(kind, replica.model, runner, replica.device, reason))

    # Rules 3 and 4: unload what is no longer wanted where it is.
    for name in list(state):
        for replica in state[name].replicas:
            wanted = declared.get(replica.model)
            if wanted is None:
                drop(name, replica, "unload", "deployment removed")
            elif not eligible(state[name], wanted, classes):
                drop(name, replica, "unload", "runner no longer eligible for it")
            elif (
                wanted.keep_alive_s is not None
                and replica.idle
                and now - (replica.last_used if replica.last_used is not None else now)
                >= wanted.keep_alive_s
            ):
                drop(name, replica, "unload", f"idle for {wanted.keep_alive_s:g}s (keep_alive)")
    for deployment in declared.values():
        loaded = _loaded(state, deployment.model)
        surplus = len(loaded) - deployment.replicas
        if surplus > 0:
            # Idle before busy, least recently used first.
            loaded.sort(key=lambda item: (not item[1].idle, item[1].last_used or 0.0))
            for name, replica in loaded[:surplus]:
                drop(name, replica, "unload", f"more than {deployment.replicas} replicas")

    def active(deployment: Deployment) -> bool:
        return (
            deployment.keep_alive_s is None
            or deployment.model in demand
            or bool(_loaded(state, deployment.model))
        )

    # Rule 5: by priority, then largest first.
    order = sorted(
        (d for d in declared.values() if active(d)),
        key=lambda d: (-priority_rank(d.priority), -d.memory_gb, d.model),
    )
    for deployment in order:
        for _ in range(deployment.replicas - len(_loaded(state, deployment.model))):
            spot = _first_fit(state, deployment, classes)
            if spot is None:
                spot = _evict_for(state, deployment, classes, drop)
            if spot is None:
                break
            _place(state, deployment, spot, now, decisions)
    # The final pass without eviction; see the module docstring.
    for deployment in order:
        missing = deployment.replicas - len(_loaded(state, deployment.model))
        for _ in range(missing):
            spot = _first_fit(state, deployment, classes)
            if spot is None:
                break
            _place(state, deployment, spot, now, decisions)
        missing = deployment.replicas - len(_loaded(state, deployment.model))
        if missing > 0:
            reason = unplaced_reason(deployment, state.values(), classes)
            unplaced = Decision("unplaced", deployment.model, reason=reason)
            decisions.extend(unplaced for _ in range(missing))
    final = tuple(state.values())
    unavailable = {
        d.model: unplaced_reason(d, final, classes) for d in order if not _loaded(state, d.model)
    }
    return Plan(tuple(decisions), final, unavailable)


def _loaded(state: dict[str, Runner], model: str) -> list[tuple[str, Replica]]:
    return [(name, rep) for name, r in state.items() for rep in r.replicas if rep.model == model]


def _candidates(
    state: dict[str, Runner], deployment: Deployment, classes: Sequence[str]
) -> list[tuple[Runner, Device]]:
    """Eligible devices without a replica of it: runners without one first (rule 6)."""
    hosting = {name for name, _ in _loaded(state, deployment.model)}
    spread: list[tuple[Runner, Device]] = []
    doubled: list[tuple[Runner, Device]] = []
    for runner in state.values():
        if not eligible(runner, deployment, classes):
            continue
        taken = {rep.device for rep in runner.replicas if rep.model == deployment.model}
        for device in runner.devices:
            if device.name not in taken:
                (doubled if runner.name in hosting else spread).append((runner, device))
    return spread + doubled


def _first_fit(
    state: dict[str, Runner], deployment: Deployment, classes: Sequence[str]
) -> tuple[str, str] | None:
    for runner, device in _candidates(state, deployment, classes):
        if runner.free_gb(device) + EPSILON_GB >= deployment.memory_gb:
            return runner.name, device.name
    return None


def _evict_for(
    state: dict[str, Runner],
    deployment: Deployment,
    classes: Sequence[str],
    drop: Callable[[str, Replica, DecisionKind, str], None],
) -> tuple[str, str] | None:
    """Rule 7: the device where evicting idle lower-priority replicas frees the least."""
    rank = priority_rank(deployment.priority)
    best: tuple[float, int, str, str, list[Replica]] | None = None
    for position, (runner, device) in enumerate(_candidates(state, deployment, classes)):
        if device.memory_gb + EPSILON_GB < deployment.memory_gb:
            continue
        victims = sorted(
            (
                rep
                for rep in runner.replicas
                if rep.device == device.name and rep.idle and priority_rank(rep.priority) < rank
            ),
            key=lambda rep: (priority_rank(rep.priority), rep.last_used or 0.0, rep.model),
        )
        free, chosen = runner.free_gb(device), []
        for victim in victims:
            if free + EPSILON_GB >= deployment.memory_gb:
                break
            chosen.append(victim)
            free += victim.memory_gb
        if free + EPSILON_GB < deployment.memory_gb:
            continue
        freed = sum(v.memory_gb for v in chosen)
        if best is None or (freed, position) < (best[0], best[1]):
            best = (freed, position, runner.name, device.name, chosen)
    if best is None:
        return None
    _, _, runner_name, device_name, chosen = best
    for victim in chosen:
        drop(
            runner_name,
            victim,
            "evict",
            f"idle {victim.priority}-priority; room for {deployment.priority}-priority "
            f"{deployment.model}",
        )
    return runner_name, device_name


def _place(
    state: dict[str, Runner],
    deployment: Deployment,
    spot: tuple[str, str],
    now: float,
    decisions: list[Decision],
) -> None:
    runner_name, device_name = spot
    runner = state[runner_name]
    replica = Replica(
        model=deployment.model,
        device=device_name,
        memory_gb=deployment.memory_gb,
        priority=deployment.priority,
        last_used=now,
    )
    placed = state[runner_name] = replace(runner, replicas=(*runner.replicas, replica))
    free = placed.free_gb(_device(placed, device_name))
    reason = f"{deployment.memory_gb:g} GB, {free:g} GB left on the device"
    decisions.append(Decision("place", deployment.model, runner_name, device_name, reason))


def _device(runner: Runner, name: str) -> Device:
    return next(device for device in runner.devices if device.name == name)


def unplaced_reason(
    deployment: Deployment, runners: Iterable[Runner], classes: Sequence[str]
) -> str:
    """Why ``deployment`` (or one more replica of it) has no room on ``runners``: the
    message of the 503 its requests get when it has no replica at all."""
    up = [r for r in runners if r.up]
    model = deployment.model
    if not up:
        return f"no runner is up to serve '{model}'"
    engine = [r for r in up if deployment.engine in r.engines]
    if not engine:
        return f"no runner that is up offers the {deployment.engine} engine '{model}' needs"
    allowed = [r for r in engine if cleared(r.clearance, deployment.clearance, classes)]
    if not allowed:
        return (
            f"no runner that is up is cleared for {deployment.clearance} data, "
            f"which '{model}' is deployed for"
        )
    free_devices = [
        device
        for r in allowed
        for device in r.devices
        if not any(rep.model == model and rep.device == device.name for rep in r.replicas)
    ]
    if not free_devices:
        return (
            f"every eligible device already holds a replica of '{model}' "
            f"(it wants {deployment.replicas}; replicas never share a device)"
        )
    largest = max(device.memory_gb for device in free_devices)
    if largest + EPSILON_GB < deployment.memory_gb:
        return (
            f"'{model}' needs {deployment.memory_gb:g} GB and the largest device of an "
            f"eligible runner has {largest:g} GB"
        )
    return (
        f"every eligible runner is full: '{model}' needs {deployment.memory_gb:g} GB on one "
        "device and nothing idle of lower priority can be evicted"
    )


def memory_report(runners: Iterable[Runner]) -> list[str]:
    """One line per runner: memory used of total, and the replicas on it."""
    lines = []
    for runner in runners:
        models = ", ".join(f"{r.model}@{r.device}" for r in runner.replicas) or "-"
        lines.append(
            f"{runner.name:<12} {runner.used_gb():>6.1f} / {runner.memory_gb:<6.1f} GB  {models}"
        )
    return lines
