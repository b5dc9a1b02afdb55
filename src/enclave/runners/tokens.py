"""Join tokens: what a remote runner presents to join the control plane.

An admin creates one (``enclave runners token create``, or
``POST /api/admin/runners/tokens``) and gives it to the machine that runs
``enclave runner --join URL --token TOKEN``. A token looks like ``ejt-``
followed by 43 URL-safe characters (256 random bits); like API keys
(:mod:`enclave.auth.keys`, whose hash it reuses) only its SHA-256 and an
8-character prefix are stored, and the secret is shown once.

A token may cap the clearance a runner joining with it can declare
(``max_clearance``), so a leaked token cannot bring in a machine that claims
to be cleared for the most sensitive data. Verification is not cached: a
runner presents its token when it registers, not on every request, and a
revoked token must stop working at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from enclave.auth.keys import credential_status, hash_key
from enclave.errors import AuthenticationFailed, InvalidRequest, NotFound
from enclave.storage.models import JoinTokenRow

TOKEN_PREFIX = "ejt-"


def generate_join_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class JoinToken:
    """A token as listed and as verified: everything but the secret."""

    id: int
    name: str
    prefix: str
    max_clearance: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def status(self) -> str:
        return credential_status(self.revoked_at, self.expires_at)


class JoinTokenService:
    """Creates, lists, revokes and verifies join tokens."""

    def __init__(self, sessions: sessionmaker, classes: list[str]) -> None:
        self._sessions = sessions
        self._classes = classes

    def create(
        self,
        name: str,
        *,
        expires_at: datetime | None = None,
        max_clearance: str | None = None,
    ) -> tuple[str, JoinToken]:
        """Create a token and return ``(secret, token)``. The secret is never stored."""
        if not name.strip() or len(name) > 128:
            raise InvalidRequest("a join token needs a name of 1 to 128 characters", param="name")
        if max_clearance is not None and max_clearance not in self._classes:
            raise InvalidRequest(
                f"'{max_clearance}' is not one of the classifications ({', '.join(self._classes)})",
                param="max_clearance",
            )
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        secret = generate_join_token()
        with self._sessions.begin() as session:
            row = JoinTokenRow(
                name=name,
                prefix=secret[:8],
                token_hash=hash_key(secret),
                max_clearance=max_clearance,
                expires_at=expires_at,
            )
            session.add(row)
            session.flush()
            return secret, _token(row)

    def list(self) -> list[JoinToken]:
        with self._sessions() as session:
            rows = session.scalars(select(JoinTokenRow).order_by(JoinTokenRow.id)).all()
            return [_token(row) for row in rows]

    def revoke(self, token_id: int) -> JoinToken:
        """Revoke a token; the caller also drops the runners that joined with it
        (:meth:`enclave.runners.registry.RunnerRegistry.forget_token`)."""
        with self._sessions.begin() as session:
            row = session.get(JoinTokenRow, token_id)
            if row is None:
                raise NotFound(f"No join token with id {token_id}.")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return _token(row)

    def verify_join_token(self, secret: str) -> JoinToken:
        """The token a runner presented, or ``AuthenticationFailed`` when it is unknown,
        revoked (code ``invalid_join_token``) or expired (``expired_join_token``)."""
        with self._sessions.begin() as session:
            row = session.scalar(
                select(JoinTokenRow).where(JoinTokenRow.token_hash == hash_key(secret))
            )
            if row is None or row.revoked_at is not None:
                raise AuthenticationFailed("Invalid join token.", code="invalid_join_token")
            now = datetime.now(UTC)
            if row.expires_at is not None and row.expires_at <= now:
                raise AuthenticationFailed(
                    "This join token has expired.", code="expired_join_token"
                )
            row.last_used_at = now
            return _token(row)


def _token(row: JoinTokenRow) -> JoinToken:
    return JoinToken(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        max_clearance=row.max_clearance,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )
