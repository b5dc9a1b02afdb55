"""The egress rule: what a key may *receive*, checked wherever content leaves Enclave.

A provider has a clearance for what it may be sent. A client of ``/mcp`` (a
desktop assistant, perhaps driven by a cloud model on a laptop) is a
destination too: whatever Enclave returns to it leaves Enclave. So each API
key has a **receive clearance**, the highest class it may be given.

* On ``/mcp`` every key has one: the key's own (``receive_clearance``), else
  the workspace floor (the lowest class the workspace's data can have), so a
  key nobody thought about receives the least.
* On ``/api/knowledge/{kb}/query`` only keys that carry a clearance are
  limited; other keys keep the behaviour they always had.

:class:`Disclosure` answers "may this key receive class X?", keeps only the
items at or below the clearance (:meth:`Disclosure.keep`), and refuses what is
above it with a :class:`ClearanceRefused` that says why
(:meth:`Disclosure.refuse`). Every withheld item and every refusal is one
audit entry (outcome ``denied``, code ``above_clearance``), naming the
classes and the endpoint, never the content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from enclave.auth.principals import Principal
from enclave.errors import PolicyDenied
from enclave.gateway.audit import AuditRecord
from enclave.gateway.classification import Levels
from enclave.gateway.service import Gateway

T = TypeVar("T")
REFUSAL_CODE = "above_clearance"


class ClearanceRefused(PolicyDenied):
    """Content above the caller's receive clearance was asked for (403)."""

    default_code = REFUSAL_CODE


@dataclass(frozen=True, slots=True)
class Withheld:
    """What :meth:`Disclosure.keep` left out: how many items, and their highest class."""

    count: int
    highest: str | None

    def note(self, clearance: str) -> str | None:
        """A sentence for the client, or None when nothing was withheld."""
        if not self.count:
            return None
        return (
            f"{self.count} result(s) withheld: classified '{self.highest}', above this key's "
            f"receive clearance '{clearance}'."
        )


class Disclosure:
    """Receive clearances of keys, and the check at each exit (see the module docstring)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def levels(self) -> Levels:
        return self.gateway.routing.levels

    def floor(self, workspace: str) -> str:
        return self.gateway.policy(workspace).classification or self.levels.lowest

    def clearance(self, principal: Principal, *, default_to_floor: bool = True) -> str | None:
        """The highest class ``principal`` may receive.

        A stored clearance no longer among the configured classes falls back to
        the floor (fail closed). ``default_to_floor=False`` returns None for a key
        without one (the query API: no limit).
        """
        stored = principal.clearance
        if stored is not None and stored in self.levels.rank:
            return stored
        if stored is None and not default_to_floor:
            return None
        return self.floor(principal.workspace)

    def allows(self, clearance: str | None, level: str) -> bool:
        """Whether content of class ``level`` may go to a key with ``clearance``.

        An unknown ``level`` is never allowed (fail closed).
        """
        if clearance is None:
            return True
        if level not in self.levels.rank:
            return False
        return self.levels.allows(clearance, level)

    def keep(
        self,
        principal: Principal,
        clearance: str | None,
        items: Sequence[T],
        class_of: Callable[[T], str],
        *,
        endpoint: str,
    ) -> tuple[list[T], Withheld]:
        """The items at or below ``clearance``; the rest are withheld and audited."""
        kept = [item for item in items if self.allows(clearance, class_of(item))]
        dropped = [class_of(item) for item in items if not self.allows(clearance, class_of(item))]
        if not dropped:
            return kept, Withheld(0, None)
        highest = max(dropped, key=lambda level: self.levels.rank.get(level, len(self.levels.rank)))
        assert clearance is not None  # nothing is dropped without one
        self._audit(principal, endpoint, highest, clearance, f"{len(dropped)} item(s) withheld")
        return kept, Withheld(len(dropped), highest)

    def refuse(
        self, principal: Principal, clearance: str, level: str, *, endpoint: str, what: str
    ) -> ClearanceRefused:
        """Audit and return (for the caller to raise) the refusal of ``what`` at ``level``."""
        self._audit(principal, endpoint, level, clearance, what)
        return ClearanceRefused(
            f"Refused: {what} is classified '{level}', above this key's receive clearance "
            f"'{clearance}'. Whatever Enclave returns here leaves Enclave; an admin can raise "
            "the key's clearance (PATCH /api/keys/{id}) if its client may receive it."
        )

    def check(
        self, principal: Principal, clearance: str | None, level: str, *, endpoint: str, what: str
    ) -> None:
        """Raise :class:`ClearanceRefused` (audited) when ``level`` is above ``clearance``."""
        if clearance is not None and not self.allows(clearance, level):
            raise self.refuse(principal, clearance, level, endpoint=endpoint, what=what)

    def _audit(
        self, principal: Principal, endpoint: str, level: str, clearance: str, what: str
    ) -> None:
        self.gateway.audit.append(
            AuditRecord(
                time=datetime.now(UTC),
                key_id=principal.key_id,
                workspace=principal.workspace,
                endpoint=endpoint,
                requested_model="",
                classification=level,
                reasons=(what, f"key receive clearance {clearance}"),
                provider=None,
                location=None,
                outcome="denied",
                status=403,
                error_code=REFUSAL_CODE,
            )
        )
