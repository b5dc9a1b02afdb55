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

A session can also stand for a person signed in with the identity provider
(``auth/identity.py``): it then holds the user's id and their *sign-in key*
(``auth/keys.py``), so the rules above apply unchanged, and the key's rights
are capped at the person's on every request. The provider's tokens (access,
refresh, ID token) are kept with the session, sealed with AES-GCM under a key
derived from the session id. The id is only in the browser's cookie (the table
holds its hash), so the tokens in the database are unreadable without it, and
no server-wide secret is needed. They are never logged.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, update
from sqlalchemy.orm import Session, sessionmaker

from enclave.auth.keys import KeyService, hash_key
from enclave.auth.principals import Principal
from enclave.errors import AuthenticationFailed
from enclave.storage.models import UiSessionRow

# The cookie that carries the session id, and the header that carries the CSRF token.
SESSION_COOKIE = "enclave_session"
CSRF_HEADER = "X-CSRF-Token"


def _token_key(session_id: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"enclave ui session tokens"
    ).derive(session_id.encode())


def seal_tokens(session_id: str, tokens: dict[str, Any]) -> str:
    """The tokens, encrypted and authenticated with a key only the cookie gives."""
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_token_key(session_id)).encrypt(nonce, json.dumps(tokens).encode(), None)
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def open_tokens(session_id: str, sealed: str | None) -> dict[str, Any] | None:
    """What :func:`seal_tokens` sealed for this session id; None if anything is off."""
    if not sealed:
        return None
    try:
        raw = base64.urlsafe_b64decode(sealed.encode())
        plain = AESGCM(_token_key(session_id)).decrypt(raw[:12], raw[12:], None)
        tokens = json.loads(plain)
    except (InvalidTag, ValueError):
        return None
    return tokens if isinstance(tokens, dict) else None


@dataclass(frozen=True)
class UserSession:
    """A signed-in person's session, as the group re-check needs it."""

    user_id: int
    tokens: dict[str, Any] = dataclasses.field(repr=False)
    checked_at: datetime | None


class SessionService:
    """Creates, resolves and ends UI sessions."""

    def __init__(self, sessions: sessionmaker[Session], keys: KeyService, ttl_s: int) -> None:
        self._sessions = sessions
        self._keys = keys
        self.ttl_s = ttl_s

    def create(
        self,
        principal: Principal,
        *,
        user_id: int | None = None,
        tokens: dict[str, Any] | None = None,
    ) -> str:
        """Start a session for an authenticated key and return its id.

        The session id goes into the cookie and is never stored; the page
        reads the CSRF token from :meth:`resolve`. ``user_id`` and ``tokens``:
        a person signed in with the identity provider, and the provider's tokens.
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
                    user_id=user_id,
                    tokens=seal_tokens(session_id, tokens) if tokens else None,
                    checked_at=now if user_id is not None else None,
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
            user_id, sealed = row.user_id, row.tokens
        if expires_at <= datetime.now(UTC):
            self._delete(digest)
            return None
        try:
            principal = self._keys.principal_for_key_id(key_id)
        except AuthenticationFailed:
            self._delete(digest)
            return None
        if user_id is not None and principal.user_id != user_id:  # never another's key
            self._delete(digest)
            return None
        if user_id is not None:
            tokens = open_tokens(session_id, sealed) or {}
            principal = dataclasses.replace(principal, user_token=tokens.get("access_token"))
        return principal, csrf

    def user_session(self, session_id: str) -> UserSession | None:
        """The person and provider tokens of a live session; None for a key's session."""
        if not session_id:
            return None
        with self._sessions() as session:
            row = session.get(UiSessionRow, hash_key(session_id))
            if row is None or row.user_id is None or row.expires_at <= datetime.now(UTC):
                return None
            return UserSession(
                row.user_id, open_tokens(session_id, row.tokens) or {}, row.checked_at
            )

    def switch_key(self, session_id: str, key_id: int) -> None:
        """Move a person's session to another of their sign-in keys (another workspace)."""
        with self._sessions.begin() as session:
            session.execute(
                update(UiSessionRow)
                .where(UiSessionRow.id_hash == hash_key(session_id))
                .values(key_id=key_id)
            )

    def checked(self, session_id: str, tokens: dict[str, Any] | None) -> None:
        """Record a re-check with the provider (and its new tokens, if any)."""
        values: dict[str, Any] = {"checked_at": datetime.now(UTC)}
        if tokens is not None:
            values["tokens"] = seal_tokens(session_id, tokens)
        with self._sessions.begin() as session:
            session.execute(
                update(UiSessionRow)
                .where(UiSessionRow.id_hash == hash_key(session_id))
                .values(**values)
            )

    def delete(self, session_id: str) -> None:
        """End a session (sign-out). Unknown ids are ignored."""
        self._delete(hash_key(session_id))

    def end_user_sessions(self, user_id: int) -> int:
        """End every session of a person (deprovisioned); how many there were."""
        with self._sessions.begin() as session:
            ended = session.execute(delete(UiSessionRow).where(UiSessionRow.user_id == user_id))
            return int(getattr(ended, "rowcount", 0) or 0)

    def purge_expired(self) -> None:
        """Delete expired sessions."""
        with self._sessions.begin() as session:
            session.execute(
                delete(UiSessionRow).where(UiSessionRow.expires_at <= datetime.now(UTC))
            )

    def _delete(self, digest: str) -> None:
        with self._sessions.begin() as session:
            session.execute(delete(UiSessionRow).where(UiSessionRow.id_hash == digest))
