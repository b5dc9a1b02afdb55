"""Which providers may serve a request, and in what order. Fails closed.

:meth:`RoutingTable.candidates` turns what the client asked for
(``provider/model``, a bare model name, an alias, or ``default``) into
targets in preference order. :func:`plan` then keeps only the targets whose
clearance covers the request's class and orders them: healthy before those
whose circuit is open, idle before busy, then by preference. The plan is the
complete list of places the request may go. The gateway tries them in order
and never anywhere else, so retries and fallbacks cannot leak data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from enclave.errors import InvalidRequest, ModelNotFound
from enclave.gateway.classification import Levels
from enclave.providers.base import ModelCard, Provider
from enclave.settings import Settings

Capability = str  # "chat", "completion" or "embeddings"


@dataclass(frozen=True, slots=True)
class Target:
    """One provider's model that a request could be sent to."""

    provider: str
    model: str
    clearance: str
    location: str
    preference: int

    @property
    def qualified(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class Plan:
    """Eligible targets in the order to try them, and why the others were left out."""

    routes: tuple[Target, ...]
    excluded: tuple[tuple[Target, str], ...]


def plan(
    targets: Sequence[Target],
    level: str,
    levels: Levels,
    *,
    is_down: Callable[[str], bool] = lambda provider: False,
    is_busy: Callable[[str], bool] = lambda provider: False,
) -> Plan:
    """Order the targets that may receive ``level`` data; exclude every other one."""
    eligible: list[tuple[tuple[bool, int], Target]] = []
    excluded: list[tuple[Target, str]] = []
    for target in targets:
        if not levels.allows(target.clearance, level):
            excluded.append((target, f"cleared only up to '{target.clearance}'"))
        elif is_down(target.provider):
            excluded.append((target, "down (circuit open)"))
        else:
            eligible.append(((is_busy(target.provider), target.preference), target))
    eligible.sort(key=lambda item: item[0])
    return Plan(tuple(target for _, target in eligible), tuple(excluded))


class Breaker:
    """A circuit breaker for one provider.

    After ``threshold`` consecutive failures the circuit opens for
    ``cooldown`` seconds; then one trial request is let through (half open),
    and its outcome closes or reopens the circuit.
    """

    def __init__(
        self,
        threshold: int = 3,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def is_down(self) -> bool:
        """True while open, and while half open with the trial request out."""
        state = self.state
        return state == "open" or (state == "half-open" and self.trial_in_flight)

    def attempt(self) -> None:
        if self.state == "half-open":
            self.trial_in_flight = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.failures >= self.threshold:
            self.opened_at = self.clock()


class Replicas(Protocol):
    """Models deployed on runners (:class:`enclave.runners.fleet.RunnerFleet`).

    Their replicas are ordinary targets of the table (one provider per runner,
    with the runner's clearance and location), added and removed at run time;
    this interface only makes sure one is loaded and orders them.
    """

    def deployed(self) -> list[str]: ...

    async def ready(self, model: str) -> None:
        """Return once ``model`` has a replica; raise ``ServiceUnavailable`` (503) if it
        cannot get one."""

    def order(self, targets: list[Target], key: str | None) -> list[Target]:
        """The replicas in the order to try them (least loaded, prefix affinity)."""


@dataclass
class RoutingTable:
    """Targets by name, built from settings and the started providers."""

    levels: Levels
    default_model: str
    providers: dict[str, Provider]
    cards: dict[tuple[str, str], ModelCard]
    targets: dict[str, Target]  # by provider/model
    by_model: dict[str, list[Target]]  # bare name -> targets in config order
    aliases: dict[str, list[str]]
    breakers: dict[str, Breaker] = field(default_factory=dict)
    replicas: Replicas | None = None

    @classmethod
    def build(
        cls, settings: Settings, providers: Sequence[Provider], default_model: str | None = None
    ) -> RoutingTable:
        by_name = {provider.name: provider for provider in providers}
        configs = {config.name: config for config in settings.providers}
        cards: dict[tuple[str, str], ModelCard] = {}
        targets: dict[str, Target] = {}
        by_model: dict[str, list[Target]] = {}
        for provider in providers:
            config = configs.get(provider.name)
            clearance = (
                config.clearance if config and config.clearance else settings.classifications[-1]
            )
            location = config.location if config and config.location else "on-prem"
            for card in provider.models():
                target = Target(provider.name, card.id, clearance, location, len(targets))
                cards[(provider.name, card.id)] = card
                targets[target.qualified] = target
                by_model.setdefault(card.id, []).append(target)
        return cls(
            levels=Levels(settings.classifications),
            default_model=default_model or settings.default_model,
            providers=by_name,
            cards=cards,
            targets=targets,
            by_model=by_model,
            aliases=dict(settings.aliases),
            breakers={name: Breaker() for name in by_name},
        )

    def candidates(self, requested: str, capability: Capability) -> list[Target]:
        """Targets for a requested model id, in preference order, that can do ``capability``."""
        name = self.default_model if requested == "default" else requested
        if name in self.aliases:
            found = [self.targets[qualified] for qualified in self.aliases[name]]
        elif name in self.targets:
            found = [self.targets[name]]
        elif name in self.by_model:
            found = list(self.by_model[name])
        else:
            raise ModelNotFound(requested)
        found = [replace(target, preference=rank) for rank, target in enumerate(found)]
        able = [target for target in found if self.can(target, capability)]
        if not able:
            raise InvalidRequest(
                f"The model '{requested}' does not support {capability}.", param="model"
            )
        return able

    def can(self, target: Target, capability: Capability) -> bool:
        capabilities = self.cards[(target.provider, target.model)].capabilities
        return bool(getattr(capabilities, capability))

    def plan(self, targets: Sequence[Target], level: str) -> Plan:
        return plan(
            targets,
            level,
            self.levels,
            is_down=lambda provider: self.breakers[provider].is_down(),
            is_busy=lambda provider: self.providers[provider].is_busy(),
        )

    def model_ids(self) -> list[tuple[str, str]]:
        """(id, owner) for /v1/models: every bare model name once, the aliases, then the
        deployed models that have no replica now (a request for one gets a clear 503)."""
        listed = [(name, targets[0].provider) for name, targets in self.by_model.items() if targets]
        listed += [(alias, "alias") for alias in self.aliases]
        if self.replicas is not None:
            names = {name for name, _ in listed}
            listed += [(m, "deployment") for m in self.replicas.deployed() if m not in names]
        return listed

    def set_provider_targets(
        self, provider: Provider, cards: Sequence[ModelCard], clearance: str, location: str
    ) -> None:
        """Replace a run-time provider's targets (a runner's replicas) with ``cards``.

        Called with no cards when the runner is down or holds nothing. The
        provider and its breaker stay known, so a request already routed to it
        finishes (or fails) normally.
        """
        name = provider.name
        self.providers[name] = provider
        self.breakers.setdefault(name, Breaker())
        for qualified in [q for q, t in self.targets.items() if t.provider == name]:
            del self.targets[qualified]
        for model in list(self.by_model):
            kept = [t for t in self.by_model[model] if t.provider != name]
            if kept:
                self.by_model[model] = kept
            else:
                del self.by_model[model]
        for key in [key for key in self.cards if key[0] == name]:
            del self.cards[key]
        for card in cards:
            target = Target(name, card.id, clearance, location, len(self.targets))
            self.cards[(name, card.id)] = card
            self.targets[target.qualified] = target
            self.by_model.setdefault(card.id, []).append(target)
