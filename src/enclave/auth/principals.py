"""Who is calling: the identity every authenticated request carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    # The person behind the request (signed in with OIDC, or owning the key); None for a
    # service key. ``groups`` are theirs (from the identity provider), and decide which
    # restricted documents they may see; a request without a user sees none of those.
    user_id: int | None = None
    user_name: str | None = None
    groups: frozenset[str] = frozenset()
    # The user's access token from the identity provider, for app API calls that run
    # as the user (never logged, never stored in the audit log).
    user_token: str | None = field(default=None, repr=False)
    # What the caller may do in this workspace: member, builder or admin (auth/roles.py).
    # None: from ``is_admin`` (admin, else builder, what keys could do before roles);
    # given, it decides ``is_admin`` (admin only), so the two never disagree.
    role: Literal["member", "builder", "admin"] | None = None

    def __post_init__(self) -> None:
        if self.role is None:
            object.__setattr__(self, "role", "admin" if self.is_admin else "builder")
        else:
            object.__setattr__(self, "is_admin", self.role == "admin")

    @property
    def tenant(self) -> str:
        """The unit the fair queue shares capacity between."""
        return f"key:{self.key_id}"
