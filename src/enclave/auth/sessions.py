"""Browser sessions for the web UI: a cookie that stands for an API key.

People sign in to the UI with an API key (``POST /ui/login``). The server
then keeps a session row and gives the browser only a random session id in
an HttpOnly cookie, so the key itself never sits in the browser. Like keys,
session ids are 256-bit random strings and only their SHA-256 is stored:
someone who reads the database cannot sign in with what they find there.

A session holds the key's id, not a copy of its rights. Every request
resolves the session, then checks the key by id through
:meth:`KeyService.principal_for_key_id`, so revoking or expiring the key ends
its sessions as fast as it stops the key itself (at once in this process,
within the key cache's few seconds for a revocation by the CLI).

Each session has a CSRF token. A browser sends cookies with every request to
the site, so a cookie alone does not prove the page asked; requests that
change something must also carry the token in ``X-CSRF-Token``, which only
pages of this origin can read (``api/deps.py`` checks it). ``SameSite=Strict``
on the cookie is a second line of the same defence.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.keys import KeyService, hash_key
from enclave.auth.principals import Principal
from enclave.errors import AuthenticationFailed
from enclave.storage.models import UiSessionRow

# The cookie that carries the session id, and the header that carries the CSRF token.
SESSION_COOKIE = "enclave_session"
CSRF_HEADER = "X-CSRF-Token"


class SessionService:
    """Creates, resolves and ends UI sessions."""

    def __init__(self, sessions: sessionmaker[Session], keys: KeyService, ttl_s: int) -> None:
        self._sessions = sessions
        self._keys = keys
        self.ttl_s = ttl_s

    def create(self, principal: Principal) -> str:
        """Start a session for an authenticated key and return its id.

        The session id goes into the cookie and is never stored; the page
        reads the CSRF token from :meth:`resolve`.
        """
        self.purge_expired()
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self._sessions.begin() as session:
            session.add(
                UiSessionRow(
                    id_hash=hash_key(session_id),
                    key_id=principal.key_id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.ttl_s),
                )
            )
        return session_id

    def resolve(self, session_id: str) -> tuple[Principal, str] | None:
        """The principal and CSRF token of a live session; None when the session is
        unknown, expired, or its key no longer authenticates (the session is then ended)."""
        if not session_id:
            return None
        digest = hash_key(session_id)
        with self._sessions() as session:
            row = session.get(UiSessionRow, digest)
            if row is None:
                return None
            key_id, csrf, expires_at = row.key_id, row.csrf_token, row.expires_at
        if expires_at <= datetime.now(UTC):
            self._delete(digest)
            return None
        try:
            principal = self._keys.principal_for_key_id(key_id)
        except AuthenticationFailed:
            self._delete(digest)
            return None
        return principal, csrf

    def delete(self, session_id: str) -> None:
        """End a session (sign-out). Unknown ids are ignored."""
        self._delete(hash_key(session_id))

    def purge_expired(self) -> None:
        """Delete expired sessions."""
        with self._sessions.begin() as session:
            session.execute(
                delete(UiSessionRow).where(UiSessionRow.expires_at <= datetime.now(UTC))
            )

    def _delete(self, digest: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(UiSessionRow).where(UiSessionRow.id_hash == digest))
