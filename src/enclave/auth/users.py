"""Users: the people who sign in with the identity provider, and their groups.

A user is found by the ID token's issuer and subject (``iss`` + ``sub``), never
by e-mail or name, which people and some providers can change. Their groups are
a snapshot of what the provider last said (at sign-in, and when the session asks
the provider again, see ``auth/identity.py``); every request of the user, by
session or by one of their keys, reads them from this table again, so a change
is in force at the next request.

Whether a new person gets a user on first sign-in is ``identity.self_registration``:
with it off, the user is created disabled ("waiting for approval") unless the
groups make them an admin, and an admin enables them (``PATCH /api/admin/users/{id}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from enclave.errors import NotFound
from enclave.storage.models import UserRow


@dataclass(frozen=True)
class User:
    id: int
    issuer: str
    subject: str
    name: str
    email: str | None
    groups: frozenset[str]
    disabled: bool
    created_at: datetime | None = None
    last_login_at: datetime | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "subject": self.subject,
            "issuer": self.issuer,
            "groups": sorted(self.groups),
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "last_login_at": self.last_login_at.isoformat() if self.last_login_at else None,
        }


def _user(row: UserRow) -> User:
    return User(
        id=row.id,
        issuer=row.issuer,
        subject=row.subject,
        name=row.name,
        email=row.email,
        groups=frozenset(json.loads(row.groups_json or "[]")),
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


class UserService:
    """Creates users at sign-in, keeps their groups, lists, enables and disables them."""

    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def signed_in(
        self,
        issuer: str,
        subject: str,
        *,
        name: str,
        email: str | None,
        groups: frozenset[str],
        enabled_if_new: bool,
    ) -> User:
        """The user for a verified ID token, created when new (disabled unless
        ``enabled_if_new``), with name, e-mail and groups as the provider sent them now."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.scalar(
                select(UserRow).where(UserRow.issuer == issuer, UserRow.subject == subject)
            )
            if row is None:
                row = UserRow(issuer=issuer, subject=subject, disabled=not enabled_if_new)
                session.add(row)
            row.name = name[:255]
            row.email = email[:320] if email else None
            row.groups_json = json.dumps(sorted(groups))
            row.groups_updated_at = now
            row.last_login_at = now
            session.flush()
            return _user(row)

    def get(self, user_id: int) -> User | None:
        with self._sessions() as session:
            row = session.get(UserRow, user_id)
            return None if row is None else _user(row)

    def set_groups(self, user_id: int, groups: frozenset[str]) -> None:
        """The provider's newest word on the user's groups (a session's re-check)."""
        with self._sessions.begin() as session:
            session.execute(
                update(UserRow)
                .where(UserRow.id == user_id)
                .values(groups_json=json.dumps(sorted(groups)), groups_updated_at=datetime.now(UTC))
            )

    def list(self) -> list[User]:
        with self._sessions() as session:
            return [_user(row) for row in session.scalars(select(UserRow).order_by(UserRow.id))]

    def set_disabled(self, user_id: int, disabled: bool) -> User:
        with self._sessions.begin() as session:
            row = session.get(UserRow, user_id)
            if row is None:
                raise NotFound(f"No user with id {user_id}.")
            row.disabled = disabled
            session.flush()
            return _user(row)
