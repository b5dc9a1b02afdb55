"""API keys: creation, hashing, lookup and revocation.

A key looks like ``ek-`` followed by 43 URL-safe characters (256 random bits).
Only its SHA-256 is stored, plus an 8-character prefix so people can tell keys
apart in listings. Because keys are long random strings, a plain hash is as
strong as a password KDF here, and it keeps verification to one indexed
lookup. Verified keys are cached for a few seconds so the hot path does not
touch the database on every request; revocation (or a changed clearance)
through this service clears the cache at once, and on Postgres it also
notifies every replica in the same transaction (``storage/notify.py``), whose
listener calls :meth:`KeyService.forget`. The short TTL bounds how long a key
changed where no listener hears it still works. Browser sessions hold a key id
rather than the secret; :meth:`KeyService.principal_for_key_id` checks that key
with the same cache and the same revocation and expiry rules.

A key belongs to a person (``user_id``) or to a service (none). A person's key
never has more rights than the person has now: after the cache, each request
reads the owner's row (disabled? which groups?) and caps the key's role at the
owner's role in the key's workspace (``auth/roles.py``), so a person who loses a
group, or is disabled, loses it on their keys at their next request. A person
signed in to the web UI acts through their *sign-in key*, one per workspace,
whose secret was never kept (prefix ``sign-in``): sessions, conversations,
usage and the audit log keep working by key id, and the cap applies to it too.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.principals import Principal
from enclave.auth.roles import RoleMap, capped, key_role
from enclave.auth.users import UserService
from enclave.errors import AuthenticationFailed, InvalidRequest, NotFound
from enclave.settings import IdentityConfig
from enclave.storage.models import ApiKeyRow, WorkspaceRow
from enclave.storage.notify import KEYS_CHANNEL, announce

KEY_PREFIX = "ek-"
# The prefix shown for a person's sign-in key, which has no secret anyone knows.
SIGN_IN_PREFIX = "sign-in"
CACHE_SECONDS = 5.0

_K = TypeVar("_K", str, int)
# (valid until, on the monotonic clock; the principal; the key's expiry)
_Cached = tuple[float, Principal, datetime | None]


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def credential_status(revoked_at: datetime | None, expires_at: datetime | None) -> str:
    """ "revoked", "expired" or "active": for API keys and runner join tokens alike."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= datetime.now(UTC):
        return "expired"
    return "active"


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: everything but the secret."""

    id: int
    name: str
    prefix: str
    workspace: str
    is_admin: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    clearance: str | None = None
    user_id: int | None = None
    role: str = "builder"

    @property
    def status(self) -> str:
        return credential_status(self.revoked_at, self.expires_at)


class KeyService:
    """Creates, verifies, lists and revokes API keys and their workspaces."""

    def __init__(self, sessions: sessionmaker, identity: IdentityConfig | None = None) -> None:
        self._sessions = sessions
        self._cache: dict[str, _Cached] = {}
        self._by_id: dict[int, _Cached] = {}
        # Bumped by every forget: a lookup that began before one does not fill the cache
        # (it may have read the row just before the change committed).
        self._generation = 0
        self.roles = RoleMap(identity or IdentityConfig())
        self.users = UserService(sessions)

    def ensure_workspace(self, name: str) -> int:
        with self._sessions.begin() as session:
            row = session.scalar(select(WorkspaceRow).where(WorkspaceRow.name == name))
            if row is None:
                row = WorkspaceRow(name=name)
                session.add(row)
                session.flush()
            return row.id

    def create(
        self,
        name: str,
        *,
        workspace: str = "default",
        is_admin: bool = False,
        expires_at: datetime | None = None,
        key: str | None = None,
        clearance: str | None = None,
        user_id: int | None = None,
        role: str | None = None,
        prefix: str | None = None,
    ) -> tuple[str, KeyInfo]:
        """Create a key and return ``(secret, info)``. The secret is never stored.

        ``clearance`` is the highest class the key may receive (a class name the
        caller has checked), see :mod:`enclave.gateway.disclosure`. ``user_id``
        makes it a person's key; ``role`` is its ceiling (member, builder, admin;
        when given it decides ``is_admin``).
        """
        if key is not None and len(key) < 16:
            raise InvalidRequest("an API key must be at least 16 characters long")
        if role is not None:
            try:
                is_admin = key_role(is_admin, role) == "admin"
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="role") from None
        if user_id is not None and self.users.get(user_id) is None:
            raise NotFound(f"No user with id {user_id}.")
        secret = key or generate_key()
        workspace_id = self.ensure_workspace(workspace)
        with self._sessions.begin() as session:
            row = ApiKeyRow(
                workspace_id=workspace_id,
                name=name,
                prefix=prefix or secret[:8],
                key_hash=hash_key(secret),
                is_admin=is_admin,
                expires_at=expires_at,
                receive_clearance=clearance,
                user_id=user_id,
                role=role,
            )
            session.add(row)
            session.flush()
            info = self._info(row, workspace)
        return secret, info

    def has_admin_key(self) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(ApiKeyRow.id).where(
                    ApiKeyRow.is_admin,
                    ApiKeyRow.revoked_at.is_(None),
                    ApiKeyRow.user_id.is_(None),  # a person's key is only as good as they are
                )
            )
            return found is not None

    def find(self, secret: str) -> KeyInfo | None:
        """The stored key matching a secret, whatever its status, or None."""
        with self._sessions() as session:
            found = session.execute(
                select(ApiKeyRow, WorkspaceRow.name)
                .join(WorkspaceRow, WorkspaceRow.id == ApiKeyRow.workspace_id)
                .where(ApiKeyRow.key_hash == hash_key(secret))
            ).first()
            return None if found is None else self._info(found[0], found[1])

    def authenticate(self, secret: str) -> Principal:
        """Return the principal for a presented key, or raise ``AuthenticationFailed``."""
        digest = hash_key(secret)
        return self._verified(self._cache, digest, lambda: ApiKeyRow.key_hash == digest)

    def principal_for_key_id(self, key_id: int) -> Principal:
        """The principal of a key known by id (a browser session's), checked like
        :meth:`authenticate`: ``AuthenticationFailed`` once it is revoked or expired."""
        return self._verified(self._by_id, key_id, lambda: ApiKeyRow.id == key_id)

    def _verified(
        self,
        cache: dict[_K, _Cached],
        cache_key: _K,
        condition: Callable[[], ColumnElement[bool]],
    ) -> Principal:
        # ``condition`` is built only on a cache miss: this runs on every gateway request.
        now = time.monotonic()
        cached = cache.get(cache_key)
        if cached is None or cached[0] < now:
            generation = self._generation
            with self._sessions() as session:
                found = session.execute(
                    select(ApiKeyRow, WorkspaceRow.name)
                    .join(WorkspaceRow, WorkspaceRow.id == ApiKeyRow.workspace_id)
                    .where(condition())
                ).first()
            if found is None or found[0].revoked_at is not None:
                cache.pop(cache_key, None)
                raise AuthenticationFailed("Invalid API key.")
            row, workspace = found
            principal = Principal(
                row.id,
                row.name,
                row.workspace_id,
                workspace,
                row.is_admin,
                row.receive_clearance,
                user_id=row.user_id,
                role=key_role(row.is_admin, row.role),
            )
            cached = (now + CACHE_SECONDS, principal, row.expires_at)
            if generation == self._generation:
                cache[cache_key] = cached
        _, principal, expires_at = cached
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise AuthenticationFailed("This API key has expired.", code="expired_api_key")
        if principal.user_id is not None:
            return self.as_owner_allows(principal)
        return principal

    def as_owner_allows(self, principal: Principal) -> Principal:
        """A person's key as far as its owner may act now: the lower of the key's role and
        the owner's role in its workspace, the owner's groups. Read on every request (not
        cached), so a lost group or a disabled user stops the key at its next request."""
        assert principal.user_id is not None
        owner = self.users.get(principal.user_id)
        if owner is None or owner.disabled:
            raise AuthenticationFailed("This key's user is disabled.", code="user_disabled")
        role = capped(
            principal.role or "member", self.roles.role_in(owner.groups, principal.workspace)
        )
        if role is None:
            raise AuthenticationFailed(
                f"{owner.name} no longer has a role in workspace '{principal.workspace}'.",
                code="no_role",
            )
        return replace(principal, role=role, user_name=owner.name, groups=owner.groups)

    def sign_in_key(self, user_id: int, user_name: str, workspace: str) -> int:
        """The id of the person's sign-in key for a workspace (made on first use).

        Its secret is discarded at once: it is reached only through the person's
        browser sessions, and always capped at the person's role.
        """
        workspace_id = self.ensure_workspace(workspace)
        with self._sessions() as session:
            found = session.scalar(
                select(ApiKeyRow.id).where(
                    ApiKeyRow.user_id == user_id,
                    ApiKeyRow.workspace_id == workspace_id,
                    ApiKeyRow.prefix == SIGN_IN_PREFIX,
                    ApiKeyRow.revoked_at.is_(None),
                )
            )
        if found is not None:
            return int(found)
        _, info = self.create(
            f"sign-in: {user_name}"[:128],
            workspace=workspace,
            user_id=user_id,
            role="admin",
            prefix=SIGN_IN_PREFIX,
        )
        return info.id

    def workspaces(self) -> list[tuple[str, int]]:
        """Every workspace with its number of active (not revoked, not expired) keys."""
        now = datetime.now(UTC)
        active = (
            select(ApiKeyRow.workspace_id, func.count(ApiKeyRow.id).label("active"))
            .where(
                ApiKeyRow.revoked_at.is_(None),
                or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now),
            )
            .group_by(ApiKeyRow.workspace_id)
            .subquery()
        )
        with self._sessions() as session:
            rows = session.execute(
                select(WorkspaceRow.name, func.coalesce(active.c.active, 0))
                .outerjoin(active, active.c.workspace_id == WorkspaceRow.id)
                .order_by(WorkspaceRow.name)
            ).all()
        return [(name, int(keys)) for name, keys in rows]

    def list(self, workspace: str | None = None) -> list[KeyInfo]:
        with self._sessions() as session:
            query = select(ApiKeyRow, WorkspaceRow.name).join(
                WorkspaceRow, WorkspaceRow.id == ApiKeyRow.workspace_id
            )
            if workspace:
                query = query.where(WorkspaceRow.name == workspace)
            rows = session.execute(query.order_by(ApiKeyRow.id)).all()
            return [self._info(row, name) for row, name in rows]

    @staticmethod
    def _key_row(session: Session, key_id: int) -> tuple[ApiKeyRow, str]:
        """A key's row and its workspace's name, for a change; NotFound when there is none."""
        found = session.execute(
            select(ApiKeyRow, WorkspaceRow.name)
            .join(WorkspaceRow, WorkspaceRow.id == ApiKeyRow.workspace_id)
            .where(ApiKeyRow.id == key_id)
        ).first()
        if found is None:
            raise NotFound(f"No API key with id {key_id}.")
        row, workspace = found
        return row, workspace

    def set_clearance(self, key_id: int, clearance: str | None) -> KeyInfo:
        """Change the highest class a key may receive (None: back to the default)."""
        with self._sessions.begin() as session:
            row, workspace = self._key_row(session, key_id)
            row.receive_clearance = clearance
            announce(session, KEYS_CHANNEL, str(row.id))
            info = self._info(row, workspace)
        self.forget(key_id)  # after the commit: a lookup now reads the new row
        return info

    def revoke(self, key_id: int) -> KeyInfo:
        with self._sessions.begin() as session:
            row, workspace = self._key_row(session, key_id)
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            announce(session, KEYS_CHANNEL, str(row.id))
            info = self._info(row, workspace)
        self.forget(key_id)  # after the commit: a lookup now reads the new row
        return info

    def forget(self, key_id: int | str) -> None:
        """Drop a key from the cache (its next use reads the database): after a change
        here, or one another replica announced (``storage/notify.py``)."""
        try:
            key_id = int(key_id)
        except ValueError:
            return self.forget_all()
        self._generation += 1
        self._by_id.pop(key_id, None)
        for digest, (_, principal, _) in list(self._cache.items()):
            if principal.key_id == key_id:
                self._cache.pop(digest, None)

    def forget_all(self) -> None:
        """Drop every cached key (a replica that may have missed announcements)."""
        self._generation += 1
        self._cache.clear()
        self._by_id.clear()

    def revoke_user_keys(self, user_id: int) -> int:
        """Revoke every active key of a person (deprovisioned); how many there were."""
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ApiKeyRow).where(
                    ApiKeyRow.user_id == user_id, ApiKeyRow.revoked_at.is_(None)
                )
            ).all()
            for row in rows:
                row.revoked_at = now
                announce(session, KEYS_CHANNEL, str(row.id))
            revoked = [row.id for row in rows]
        for key_id in revoked:  # after the commit, as revoke()
            self.forget(key_id)
        return len(revoked)

    @staticmethod
    def _info(row: ApiKeyRow, workspace: str) -> KeyInfo:
        return KeyInfo(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            workspace=workspace,
            is_admin=row.is_admin,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            clearance=row.receive_clearance,
            user_id=row.user_id,
            role=key_role(row.is_admin, row.role),
        )
