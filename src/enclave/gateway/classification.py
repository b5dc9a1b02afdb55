"""The effective classification of a request, and the reasons for it.

A request's class is the highest of:

- the workspace floor (``workspaces[].classification``);
- the ``X-Enclave-Classification`` header, which can raise the class but
  never lower it;
- the class of every knowledge passage used to answer it (the grounding
  step passes these in: a document's class, or its base's);
- what the detectors find in the request's text, each detector mapped to a
  class in ``detectors:``.

Every contribution is kept as a reason (``"workspace floor: confidential"``,
``"detector iban x2: confidential"``) for the 403 message and the audit log.
Findings carry types and counts only, never the matched values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from enclave.errors import InvalidRequest
from enclave.gateway.detectors import DetectorSet, Finding

CLASSIFICATION_HEADER = "x-enclave-classification"


class Levels:
    """The configured classes, lowest first, with their ranks."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.rank = {name: index for index, name in enumerate(self.names)}

    @property
    def lowest(self) -> str:
        return self.names[0]

    def allows(self, clearance: str, level: str) -> bool:
        """Whether a provider with ``clearance`` may receive data of class ``level``."""
        return self.rank[clearance] >= self.rank[level]

    def parse(
        self,
        value: str,
        *,
        where: str = " in X-Enclave-Classification",
        param: str | None = None,
    ) -> str:
        """The class named by ``value`` (any case, spaces ignored), or a 400.

        ``where`` is put after the value in the message (say where it came
        from); ``param`` names the request field it was in.
        """
        name = value.strip().lower()
        if name not in self.rank:
            raise InvalidRequest(
                f"Unknown classification '{value}'{where} (known: {', '.join(self.names)}).",
                param=param,
                code="invalid_classification",
            )
        return name


@dataclass(frozen=True, slots=True)
class Decision:
    """The effective class of one request."""

    level: str
    reasons: tuple[str, ...]
    findings: tuple[Finding, ...]


class Classifier:
    """Computes :class:`Decision` for a request. One per app."""

    def __init__(
        self, levels: Levels, detectors: DetectorSet, detector_levels: dict[str, str]
    ) -> None:
        self.levels = levels
        self.detectors = detectors
        self.detector_levels = detector_levels

    def classify(
        self,
        *,
        workspace: str,
        floor: str,
        header: str | None,
        texts: Iterable[str],
        knowledge: Sequence[tuple[str, str]] = (),
        raised: Sequence[tuple[str, str]] = (),
    ) -> Decision:
        """Combine the floor, header, knowledge classes and detector findings.

        ``knowledge`` holds (class, what) for each source the answer draws on,
        e.g. ``("confidential", "hr-policies/leave.pdf")``. ``raised`` holds
        (class, reason) for anything else that raises the floor, e.g. an app's
        ``("confidential", "app 'hr-assistant'")``.
        """
        levels = self.levels
        level = floor
        reasons = [f"workspace '{workspace}' floor: {floor}"]

        def consider(candidate: str, reason: str) -> None:
            nonlocal level
            reasons.append(f"{reason}: {candidate}")
            if levels.rank[candidate] > levels.rank[level]:
                level = candidate

        if header is not None:
            consider(levels.parse(header), "header X-Enclave-Classification")
        # Distinct loop names: rebinding ``level`` here once reset the running maximum.
        for raised_level, reason in raised:
            consider(levels.parse(raised_level, where=f" raised by {reason}"), reason)
        for source_level, source in knowledge:
            consider(levels.parse(source_level, where=f" of {source}"), f"knowledge {source}")
        findings = tuple(self.detectors.scan(texts))
        for finding in findings:
            consider(
                self.detector_levels[finding.type], f"detector {finding.type} x{finding.count}"
            )
        return Decision(level, tuple(reasons), findings)
