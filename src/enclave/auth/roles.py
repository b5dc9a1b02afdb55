"""Roles: what a person may do in a workspace, from the groups the identity provider sends.

Three roles, each including the one below it:

- ``member``: chat, knowledge queries, apps (use them, confirm their actions);
- ``builder``: also manage knowledge bases and apply apps;
- ``admin``: also workspaces, providers, keys, users and the audit log, in every workspace.

``identity.admins`` names the groups of admins; ``identity.workspaces`` the groups of
each workspace's members and builders. A person's role in a workspace is the highest
one any of their groups grants there, or None (no access). Keys carry a role of their
own as a ceiling: an admin key is ``admin``, any other key made before roles existed is
``builder`` (what such keys could always do); a key owned by a person has the lower of
its own role and the owner's role now (:func:`capped`), so it never has more rights
than the person, and loses them when the person does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, cast, get_args

from enclave.settings import IdentityConfig

Role = Literal["member", "builder", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)


def rank(role: Role | None) -> int:
    """0 for no access, then member < builder < admin."""
    return 0 if role is None else ROLES.index(role) + 1


def parse_role(value: str) -> Role:
    if value not in ROLES:
        raise ValueError(f"'{value}' is not a role ({', '.join(ROLES)})")
    return cast(Role, value)


def key_role(is_admin: bool, role: str | None) -> Role:
    """A key's own ceiling: its stored role, else admin or builder (keys made before roles)."""
    if role is not None:
        return parse_role(role)
    return "admin" if is_admin else "builder"


def capped(own: Role, owner: Role | None) -> Role | None:
    """The lower of two roles: a key's own and its owner's (None: the owner has none)."""
    if owner is None:
        return None
    return own if rank(own) <= rank(owner) else owner


def at_least(role: Role | None, needed: Role) -> bool:
    return rank(role) >= rank(needed)


class RoleMap:
    """``identity.admins`` and ``identity.workspaces`` as lookups by group name."""

    def __init__(self, identity: IdentityConfig) -> None:
        self._admins = frozenset(_names(identity.admins))
        self._workspaces = {
            name: (frozenset(_names(roles.members)), frozenset(_names(roles.builders)))
            for name, roles in identity.workspaces.items()
        }

    def is_admin(self, groups: Iterable[str]) -> bool:
        return not self._admins.isdisjoint(groups)

    def role_in(self, groups: Iterable[str], workspace: str) -> Role | None:
        """The highest role the groups grant in a workspace, or None."""
        held = frozenset(groups)
        if not self._admins.isdisjoint(held):
            return "admin"
        members, builders = self._workspaces.get(workspace, (frozenset(), frozenset()))
        if not builders.isdisjoint(held):
            return "builder"
        if not members.isdisjoint(held):
            return "member"
        return None

    def workspaces_of(self, groups: Iterable[str]) -> list[tuple[str, Role]]:
        """Each configured workspace the groups grant a role in, in config order, with it."""
        held = frozenset(groups)
        found = []
        for name in self._workspaces:
            role = self.role_in(held, name)
            if role is not None:
                found.append((name, role))
        return found


def _names(refs: Iterable[str]) -> list[str]:
    """``group:NAME`` -> ``NAME`` (settings checked the prefix)."""
    return [ref.removeprefix("group:") for ref in refs]
