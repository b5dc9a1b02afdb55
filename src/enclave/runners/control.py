"""The control plane's side of remote runners, in one object.

:class:`RunnerControl` holds the join tokens, the registry of joined runners
and the declared deployments, and runs the scheduler over them. The wiring
(registration with ``--join``, heartbeats, the placement loop) calls:

* ``tokens.verify_join_token(secret)`` then ``registry.register(info, token)``
  when a runner joins; ``registry.heartbeat(name, stats)`` on each heartbeat;
  ``registry.sweep()`` about once a second;
* :meth:`RunnerControl.plan` after each of those, carrying out its
  decisions (load, evict, unload) on the runners;
* :meth:`RunnerControl.unavailable` to build the 503 for a deployed model that
  has no replica.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.orm import sessionmaker

from enclave.errors import ServiceUnavailable
from enclave.metrics import Metrics
from enclave.runners import placement
from enclave.runners.deployments import DeploymentStore, to_placement
from enclave.runners.registry import RunnerRegistry
from enclave.runners.tokens import JoinTokenService
from enclave.settings import Settings


@dataclass
class RunnerControl:
    classes: list[str]
    tokens: JoinTokenService
    registry: RunnerRegistry
    deployments: DeploymentStore

    @classmethod
    def build(
        cls, settings: Settings, sessions: sessionmaker, metrics: Metrics | None = None
    ) -> RunnerControl:
        classes = list(settings.classifications)
        return cls(
            classes=classes,
            tokens=JoinTokenService(sessions, classes),
            registry=RunnerRegistry(
                classes,
                heartbeat_timeout_s=settings.remote_runners.heartbeat_timeout_s,
                metrics=metrics,
            ),
            deployments=DeploymentStore(sessions, settings.deployments, classes),
        )

    def plan(self, now: float, demand: Collection[str] = ()) -> placement.Plan:
        """The scheduler over the registered runners and the effective deployments."""
        return placement.plan(
            self.registry.placement_runners(),
            [to_placement(d.spec) for d in self.deployments.effective()],
            classes=self.classes,
            now=now,
            demand=demand,
        )

    def unavailable(self, model: str, now: float) -> ServiceUnavailable | None:
        """The 503 for a deployed model with no replica loaded, or None if it has one
        (or is not a deployment). A keep_alive model not yet loaded is not unavailable
        when there is room for it: its request triggers the load."""
        declared = {d.spec.model: to_placement(d.spec) for d in self.deployments.effective()}
        deployment = declared.get(model)
        if deployment is None:
            return None
        runners = self.registry.placement_runners()
        if any(rep.model == model for r in runners if r.up for rep in r.replicas):
            return None
        trial = placement.plan(
            runners, declared.values(), classes=self.classes, now=now, demand={model}
        )
        if model not in trial.unavailable:
            return None
        return ServiceUnavailable(
            f"The model '{model}' is not placed on any runner: {trial.unavailable[model]}.",
            code="model_unplaced",
        )
