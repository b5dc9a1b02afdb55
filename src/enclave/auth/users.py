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

A user the identity provider *provisioned* over SCIM (``identity.scim``,
``auth/directory.py``) is SCIM's: their name, e-mail, groups and whether they are
disabled change only through SCIM (or an admin), never at sign-in or at a
session's re-check, so a stale ID token cannot undo SCIM's removal from a group.
Until their first sign-in such a user may be *unbound*: SCIM knew their
``externalId`` (the ID token claim ``identity.scim.match_claim``, e.g. Entra's
``oid``) but not their ``sub``; they are kept under :data:`UNBOUND_ISSUER` with
the externalId as subject, and :meth:`UserService.provisioned_for` binds them to
the real issuer and subject when that claim first signs in.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from enclave.errors import NotFound
from enclave.storage.models import UserRow

log = logging.getLogger(__name__)

# The issuer of provisioned users not yet matched to an ID token (never an http(s) URL,
# which every real issuer is), and the prefix of a superseded user's issuer.
UNBOUND_ISSUER = "urn:enclave:scim:unbound"
SUPERSEDED_ISSUER = "urn:enclave:scim:superseded:"


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
    # Provisioned over SCIM: SCIM owns the groups, name, e-mail and ``disabled``.
    provisioned: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "subject": self.subject,
            "issuer": self.issuer,
            "groups": sorted(self.groups),
            "disabled": self.disabled,
            "provisioned": self.provisioned,
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
        provisioned=row.provisioned,
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
        ``enabled_if_new``), with name, e-mail and groups as the provider sent them now;
        a provisioned user keeps SCIM's (only their last sign-in is recorded)."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            row = session.scalar(
                select(UserRow).where(UserRow.issuer == issuer, UserRow.subject == subject)
            )
            if row is None:
                row = UserRow(issuer=issuer, subject=subject, disabled=not enabled_if_new)
                session.add(row)
            elif row.provisioned:
                row.last_login_at = now
                session.flush()
                return _user(row)
            row.name = name[:255]
            row.email = email[:320] if email else None
            row.groups_json = json.dumps(sorted(groups))
            row.groups_updated_at = now
            row.last_login_at = now
            session.flush()
            return _user(row)

    def provisioned_for(self, issuer: str, subject: str, claim: str | None) -> User | None:
        """The provisioned user a verified ID token names, or None (not provisioned).

        Found by issuer and subject, else (first sign-in) as the unbound user whose
        externalId is ``claim`` (the ID token's ``identity.scim.match_claim``), which is
        then bound to this issuer and subject. A user recorded for the same person
        before SCIM provisioned them is superseded: disabled, and moved off the
        issuer so the provisioned user takes its place.
        """
        with self._sessions.begin() as session:
            row = session.scalar(
                select(UserRow).where(UserRow.issuer == issuer, UserRow.subject == subject)
            )
            if row is not None and row.provisioned:
                return _user(row)
            if not claim:
                return None
            unbound = session.scalar(
                select(UserRow).where(
                    UserRow.issuer == UNBOUND_ISSUER,
                    UserRow.subject == claim[:255],
                    UserRow.provisioned,
                )
            )
            if unbound is None:
                return None
            if row is not None:
                row.issuer = f"{SUPERSEDED_ISSUER}{row.id}"
                row.disabled = True
                session.flush()
                log.warning(
                    "user %d is superseded by provisioned user %d (the same person) and disabled",
                    row.id,
                    unbound.id,
                )
            unbound.issuer, unbound.subject = issuer, subject[:255]
            session.flush()
            log.info("provisioned user %d is bound to their sign-in", unbound.id)
            return _user(unbound)

    def get(self, user_id: int) -> User | None:
        with self._sessions() as session:
            row = session.get(UserRow, user_id)
            return None if row is None else _user(row)

    def set_groups(self, user_id: int, groups: frozenset[str]) -> None:
        """The provider's newest word on the user's groups (a session's re-check); a
        provisioned user's groups are SCIM's, and stay."""
        with self._sessions.begin() as session:
            session.execute(
                update(UserRow)
                .where(UserRow.id == user_id, UserRow.provisioned.is_(False))
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
