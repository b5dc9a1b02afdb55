"""Declared deployments: the config's baseline plus those applied with the CLI.

``deployments:`` in ``enclave.yaml`` is the baseline. ``enclave deployments
apply -f FILE`` stores entries in the database, so they survive restarts; a
stored entry replaces the config entry of the same model, and
``enclave deployments remove MODEL`` deletes a stored one (the config's entry,
if any, applies again). :meth:`DeploymentStore.effective` is what the
scheduler places (:func:`to_placement` turns each into its input).

A deployments file is validated like ``enclave.yaml``: every problem names the
file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from enclave.errors import ConfigError, InvalidRequest, NotFound
from enclave.runners import placement
from enclave.settings import DeploymentConfig, FieldProblem, check_deployments
from enclave.storage.models import DeploymentRow
from enclave.yaml_lines import YamlSyntaxError, compose_with_lines, line_of

_SPECS = TypeAdapter(list[DeploymentConfig])


@dataclass(frozen=True)
class DeclaredDeployment:
    spec: DeploymentConfig
    origin: Literal["config", "applied"]
    updated_at: datetime | None = None


def to_placement(spec: DeploymentConfig) -> placement.Deployment:
    """The scheduler's view of a validated deployment (clearance already resolved)."""
    assert spec.clearance is not None, "validate with check_deployments first"
    return placement.Deployment(
        model=spec.model,
        engine=spec.engine,
        memory_gb=spec.memory_gb,
        clearance=spec.clearance,
        replicas=spec.replicas,
        priority=spec.priority,
        keep_alive_s=spec.keep_alive_s,
    )


def parse_deployments(text: str, source: str, classes: Sequence[str]) -> list[DeploymentConfig]:
    """Validate a deployments file: a ``deployments:`` list, or a bare list.

    Raises :class:`ConfigError` whose lines read ``source, line N: field 'F': problem``.
    """
    try:
        data, lines = compose_with_lines(text, source)
    except YamlSyntaxError as exc:
        raise ConfigError(str(exc)) from exc
    prefix: tuple[Any, ...] = ()
    if isinstance(data, dict) and set(data) == {"deployments"}:
        data, prefix = data["deployments"], ("deployments",)
    if not isinstance(data, list) or not data:
        raise ConfigError(
            f"{source}, line 1: expected a non-empty 'deployments:' list of entries "
            "(model, source, engine, memory_gb, ...)"
        )
    try:
        specs = _SPECS.validate_python(data)
        check_deployments(specs, list(classes))
    except ValidationError as exc:
        problems = [
            _problem(source, lines, (*prefix, *error["loc"]), error["msg"], error["type"])
            for error in exc.errors()
        ]
        raise ConfigError("invalid deployments:\n  " + "\n  ".join(problems)) from None
    except FieldProblem as problem:
        path = (*prefix, *problem.loc)
        raise ConfigError(
            "invalid deployments:\n  " + _problem(source, lines, path, problem.message, "")
        ) from None
    return specs


def _problem(source: str, lines: dict, path: tuple[Any, ...], message: str, kind: str) -> str:
    line = line_of(lines, path)
    where = f"{source}, line {line}" if line is not None else source
    if kind == "extra_forbidden":
        message = "unknown field (check the spelling; see docs/configuration.md)"
    return f"{where}: field '{'.'.join(str(p) for p in path)}': {message}"


class DeploymentStore:
    """The effective deployments: the config's, replaced or extended by applied ones."""

    def __init__(
        self, sessions: sessionmaker, baseline: Sequence[DeploymentConfig], classes: Sequence[str]
    ) -> None:
        self._sessions = sessions
        self._baseline = list(baseline)
        self._classes = list(classes)

    def apply(self, specs: Sequence[DeploymentConfig]) -> list[tuple[str, str]]:
        """Store validated specs; returns (model, 'created' | 'updated' | 'unchanged')."""
        for spec in specs:
            if spec.clearance not in self._classes:
                raise InvalidRequest(
                    f"deployment '{spec.model}': clearance '{spec.clearance}' is not a "
                    "configured classification"
                )
        results = []
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            for spec in specs:
                body = spec.model_dump_json()
                row = session.get(DeploymentRow, spec.model)
                if row is None:
                    session.add(DeploymentRow(model=spec.model, spec_json=body, updated_at=now))
                    results.append((spec.model, "created"))
                elif row.spec_json != body:
                    row.spec_json, row.updated_at = body, now
                    results.append((spec.model, "updated"))
                else:
                    results.append((spec.model, "unchanged"))
        return results

    def remove(self, model: str) -> None:
        """Delete an applied deployment; one only in the config must be removed there."""
        with self._sessions.begin() as session:
            row = session.get(DeploymentRow, model)
            if row is not None:
                session.delete(row)
                return
        if any(spec.model == model for spec in self._baseline):
            raise InvalidRequest(
                f"'{model}' is declared in the config file's deployments:; remove it there."
            )
        raise NotFound(f"No deployment of '{model}'.")

    def effective(self) -> list[DeclaredDeployment]:
        """Every deployment in force, by model name."""
        declared = {spec.model: DeclaredDeployment(spec, "config") for spec in self._baseline}
        with self._sessions() as session:
            for row in session.scalars(select(DeploymentRow)):
                spec = DeploymentConfig.model_validate_json(row.spec_json)
                declared[row.model] = DeclaredDeployment(spec, "applied", row.updated_at)
        return [declared[name] for name in sorted(declared)]
