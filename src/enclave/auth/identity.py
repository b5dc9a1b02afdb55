"""People signing in with the identity provider, and keeping their groups current.

Sign-in (:meth:`IdentityService.finish`): the provider's verified ID token
names the person (``iss`` + ``sub``) and their groups (``identity.oidc.
groups_claim``, from the ID token, else from userinfo). The groups must give
them a role somewhere (``identity.admins`` or a workspace's members or
builders), or sign-in is refused and nobody is recorded. A new person becomes
a user when ``identity.self_registration`` allows it; otherwise their user is
recorded disabled, waiting for an admin. The session then runs on the
person's sign-in key for their first workspace (``auth/keys.py``).

What triggers a re-evaluation of the groups, exactly:

1. every request, by session or by one of the person's keys, reads the
   person's row (groups, disabled) from the database and works out the role
   again, so a change there counts at the next request;
2. signing in writes the groups the provider sends into that row;
3. a session whose last check is older than ``identity.oidc.refresh_s`` asks
   the provider again before the request runs (:meth:`recheck`): userinfo
   with the access token; when that has no groups claim or the access token is
   no longer good, the refresh token's new ID token. A provider that refuses
   both ends the session. A provider that cannot be reached leaves the last
   groups in force (logged), and is asked again after ``refresh_s``;
4. an admin disabling the user (``PATCH /api/admin/users/{id}``);
5. with ``identity.scim``, the provider provisioning over SCIM (``auth/directory.py``):
   a provisioned user's groups and ``disabled`` are SCIM's alone, so 2. and 3. leave
   them as they are (3. still ends the session when the provider refuses), and
   deactivating or deleting the user ends their sessions at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from enclave.auth.keys import KeyService
from enclave.auth.oidc import OidcClient, PendingSignIn, ProviderRefused, ProviderTokens
from enclave.auth.sessions import SessionService
from enclave.auth.users import User
from enclave.errors import AuthenticationFailed, EnclaveError, PermissionDenied
from enclave.settings import IdentityConfig

log = logging.getLogger(__name__)

CALLBACK_PATH = "/ui/oidc/callback"
DEFAULT_WORKSPACE = "default"


@dataclass(frozen=True)
class SignInResult:
    session_id: str
    user: User
    workspace: str


class IdentityService:
    """Sign-in with the provider, group re-checks and sign-out there."""

    def __init__(
        self,
        config: IdentityConfig,
        oidc: OidcClient,
        keys: KeyService,
        sessions: SessionService,
    ) -> None:
        assert config.oidc is not None
        self.config = config
        self.oidc_config = config.oidc
        self.oidc = oidc
        self.keys = keys
        self.sessions = sessions

    @property
    def display_name(self) -> str:
        return self.oidc.display_name

    def groups_of(self, claims: dict[str, Any]) -> frozenset[str] | None:
        """The groups claim as a set of names; None when the claims do not carry it."""
        value = claims.get(self.oidc_config.groups_claim)
        if isinstance(value, str):
            return frozenset({value})
        if isinstance(value, list):
            return frozenset(str(item) for item in value if isinstance(item, str | int))
        if self.oidc_config.groups_claim in (claims.get("_claim_names") or {}):
            # Entra ID's "overage": too many groups to send; see docs/identity.md.
            log.warning("the identity provider sent a groups overage claim instead of groups")
        return None

    async def begin(self, next_path: str) -> tuple[str, PendingSignIn]:
        return await self.oidc.begin(next_path)

    async def finish(self, code: str, pending: PendingSignIn) -> SignInResult:
        """Verify the sign-in and start a session; ``AuthenticationFailed`` or
        ``PermissionDenied`` (shown on the sign-in page) when the person may not."""
        signed = await self.oidc.finish(code, pending)
        claims = signed.claims
        groups = self.groups_of(claims)
        if groups is None and signed.tokens.access_token:
            info = await self.oidc.userinfo(signed.tokens.access_token)
            if info is not None and info.get("sub") == claims["sub"]:
                groups = self.groups_of(info)
                claims = {**info, **claims}
        groups = groups or frozenset()
        provisioned = None
        if self.config.scim is not None:  # SCIM's users: SCIM's groups, not the token's
            claim = claims.get(self.config.scim.match_claim)
            provisioned = await asyncio.to_thread(
                self.keys.users.provisioned_for,
                str(claims["iss"]),
                str(claims["sub"]),
                str(claim) if isinstance(claim, str | int) else None,
            )
            if provisioned is not None:
                groups = provisioned.groups
                if provisioned.disabled:
                    raise PermissionDenied(
                        "Your account is deactivated at the identity provider.",
                        code="user_disabled",
                    )
        roles = self.keys.roles
        workspaces = roles.workspaces_of(groups)
        is_admin = roles.is_admin(groups)
        if not workspaces and not is_admin:
            raise PermissionDenied(
                "You are signed in at the identity provider, but none of your groups has a "
                "role in Enclave. Ask an admin to add you to a group.",
                code="no_role",
            )
        name = str(
            claims.get("name")
            or claims.get("preferred_username")
            or claims.get("email")
            or claims["sub"]
        )
        email = claims.get("email")
        user = await asyncio.to_thread(
            self.keys.users.signed_in,
            str(claims["iss"]),
            str(claims["sub"]),
            name=name,
            email=email if isinstance(email, str) else None,
            groups=groups,
            enabled_if_new=self.config.self_registration or is_admin,
        )
        if user.disabled:
            raise PermissionDenied(
                "Your account waits for an admin to enable it.", code="user_disabled"
            )
        workspace = workspaces[0][0] if workspaces else DEFAULT_WORKSPACE
        key_id = await asyncio.to_thread(self.keys.sign_in_key, user.id, user.name, workspace)
        principal = await asyncio.to_thread(self.keys.principal_for_key_id, key_id)
        session_id = await asyncio.to_thread(
            self.sessions.create, principal, user_id=user.id, tokens=signed.tokens.as_dict()
        )
        log.info("user %d signed in to workspace %s as %s", user.id, workspace, principal.role)
        return SignInResult(session_id, user, workspace)

    async def recheck(self, session_id: str) -> None:
        """Ask the provider for the person's groups again when the session's last check
        is older than ``refresh_s``; end the session when the provider refuses."""
        state = await asyncio.to_thread(self.sessions.user_session, session_id)
        if state is None:
            return
        if state.checked_at is not None and (
            time.time() - state.checked_at.timestamp() < self.oidc_config.refresh_s
        ):
            return
        user = await asyncio.to_thread(self.keys.users.get, state.user_id)
        if user is None:
            return
        tokens = ProviderTokens.of(state.tokens)
        try:
            groups, fresh = await self._current_groups(user, tokens)
        except ProviderRefused:
            log.info("user %d: the identity provider refused; their session ends", user.id)
            await asyncio.to_thread(self.sessions.delete, session_id)
            return
        except EnclaveError as exc:  # unreachable or broken: keep the last groups
            log.warning("user %d: groups not re-checked: %s", user.id, exc.message)
            await asyncio.to_thread(self.sessions.checked, session_id, None)
            return
        if groups != user.groups and not user.provisioned:  # SCIM keeps a provisioned user's
            log.info("user %d: groups changed at the identity provider", user.id)
            await asyncio.to_thread(self.keys.users.set_groups, user.id, groups)
        await asyncio.to_thread(
            self.sessions.checked, session_id, fresh.as_dict() if fresh else None
        )

    async def _current_groups(
        self, user: User, tokens: ProviderTokens
    ) -> tuple[frozenset[str], ProviderTokens | None]:
        """The groups the provider gives now, and new tokens if it issued any."""
        expired = tokens.expires_at is not None and tokens.expires_at <= time.time() + 10
        if tokens.access_token and not expired:
            try:
                info = await self.oidc.userinfo(tokens.access_token)
            except ProviderRefused:
                info = None
                if not tokens.refresh_token:
                    raise
            if info is not None and info.get("sub") == user.subject:
                groups = self.groups_of(info)
                if groups is not None:
                    return groups, None
        if not tokens.refresh_token:
            if tokens.access_token and not expired:  # userinfo answered, without groups
                return frozenset(), None
            raise ProviderRefused("The sign-in has run out; sign in again.")
        fresh = await self.oidc.refresh(tokens.refresh_token)
        if fresh.id_token:
            claims = await self.oidc.verify(fresh.id_token, None)
            if claims["sub"] != user.subject:
                raise ProviderRefused("The identity provider answered for someone else.")
            groups = self.groups_of(claims)
            if groups is not None:
                return groups, fresh
        if fresh.access_token:
            info = await self.oidc.userinfo(fresh.access_token)
            if info is not None and info.get("sub") == user.subject:
                return self.groups_of(info) or frozenset(), fresh
        return frozenset(), fresh

    async def sign_out_url(self, session_id: str, after: str) -> str | None:
        """The provider's end-session URL for this session's person, if it has one."""
        state = await asyncio.to_thread(self.sessions.user_session, session_id)
        if state is None:
            return None
        return await self.oidc.end_session_url(state.tokens.get("id_token"), after)


def signed_in_refusal(exc: EnclaveError) -> str:
    """What the sign-in page says when the provider's sign-in is refused."""
    if isinstance(exc, AuthenticationFailed | PermissionDenied):
        return exc.message
    return f"Sign-in with the identity provider failed: {exc.message}"
