"""Who is calling: the identity every authenticated request carries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API key, as services see it."""

    key_id: int
    key_name: str
    workspace_id: int
    workspace: str
    is_admin: bool
    # The highest class this key may receive (see enclave.gateway.disclosure); None: unset.
    clearance: str | None = None

    @property
    def tenant(self) -> str:
        """The unit the fair queue shares capacity between."""
        return f"key:{self.key_id}"
