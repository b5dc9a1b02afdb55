"""The OpenID Connect relying party: sign-in at the identity provider, checked ID tokens.

The flow is the authorization code flow with PKCE (S256), ``state`` and
``nonce``. :meth:`OidcClient.begin` makes the three random values and the URL
to send the browser to; the caller keeps them in a short-lived cookie bound to
that browser. :meth:`OidcClient.finish` swaps the code for tokens at the token
endpoint (httpx; the S256 challenge is authlib's) and checks the ID token with
:func:`verify_id_token`: signed by a key from the provider's JWKS with an
asymmetric algorithm the provider announces (never ``none``, never HMAC),
``iss`` exactly the configured issuer, ``aud`` holding the client id (and
``azp`` equal to it when there are several), not expired (one minute of
leeway for clock skew), and ``nonce`` the one this browser was given. JOSE
is joserfc's; nothing here parses a JWT by hand.

The provider's addresses come from ``<issuer>/.well-known/openid-configuration``,
read once and kept for :data:`DISCOVERY_TTL_S`. The issuer is configured by an
admin, so it may be on loopback or the organisation's network. The JWKS is
fetched at each sign-in, so a rotated signing key is picked up at once.
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import ClaimsOption

from enclave.errors import AuthenticationFailed, ServiceUnavailable
from enclave.settings import OidcConfig, resolve_secret

log = logging.getLogger(__name__)

DISCOVERY_TTL_S = 300.0
LEEWAY_S = 60
HTTP_TIMEOUT_S = 10.0
# Signature algorithms an ID token may use: asymmetric only, so no one holding the
# client secret (or nothing, with "none") can mint one.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class IdTokenRefused(AuthenticationFailed):
    """An ID token that failed a check; the message says which, never the token."""

    default_code = "id_token_refused"


class ProviderRefused(AuthenticationFailed):
    """The provider refused a code, a refresh token or an access token."""

    default_code = "provider_refused"


@dataclass(frozen=True)
class PendingSignIn:
    """What the browser must bring back to the callback (kept in its cookie)."""

    state: str
    nonce: str
    code_verifier: str
    next_path: str = "/"


@dataclass
class ProviderTokens:
    """Tokens the provider issued; held server-side, sealed (``auth/sessions.py``)."""

    access_token: str | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    expires_at: float | None = None  # epoch seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
            "expires_at": self.expires_at,
        }

    @classmethod
    def of(cls, data: dict[str, Any]) -> ProviderTokens:
        expires_at = data.get("expires_at")
        if expires_at is None and isinstance(data.get("expires_in"), int | float):
            expires_at = time.time() + float(data["expires_in"])
        return cls(
            access_token=data.get("access_token"),
            refresh_token=data.get("refresh_token"),
            id_token=data.get("id_token"),
            expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
        )

    def __repr__(self) -> str:  # never the tokens themselves
        return f"ProviderTokens(expires_at={self.expires_at})"


@dataclass
class SignedIn:
    """A finished sign-in: the verified ID token's claims (plus userinfo's) and the tokens."""

    claims: dict[str, Any]
    tokens: ProviderTokens = field(repr=False)


def verify_id_token(
    token: str,
    keys: dict[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str | None,
    algorithms: frozenset[str] = ASYMMETRIC_ALGORITHMS,
    now: Callable[[], int] | None = None,
) -> dict[str, Any]:
    """The claims of an ID token that passes every check, else ``IdTokenRefused``.

    ``keys`` is the provider's JWKS document. ``nonce`` None skips the nonce
    check (a token from a refresh, which carries none of this browser's).
    """
    allowed = sorted(algorithms & ASYMMETRIC_ALGORITHMS)
    if not allowed:
        raise IdTokenRefused("The identity provider signs ID tokens with no usable algorithm.")
    try:
        key_set = KeySet.import_key_set(keys)  # type: ignore[arg-type]
        decoded = jwt.decode(token, key_set, algorithms=allowed)
    except (JoseError, ValueError, TypeError) as exc:
        raise IdTokenRefused(f"The ID token's signature does not verify ({_why(exc)}).") from None
    claims = dict(decoded.claims)
    options: dict[str, ClaimsOption] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    registry = jwt.JWTClaimsRegistry(now=now, leeway=LEEWAY_S, **options)
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise IdTokenRefused(f"The ID token was refused ({_why(exc)}).") from None
    audience = claims["aud"]
    if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != client_id:
        raise IdTokenRefused("The ID token was refused (azp is not this client).")
    return claims


def _why(exc: Exception) -> str:
    return getattr(exc, "description", None) or getattr(exc, "error", None) or type(exc).__name__


class OidcClient:
    """Talks to one OpenID Connect provider for the web UI's sign-in."""

    def __init__(
        self,
        config: OidcConfig,
        redirect_uri: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self._transport = transport
        self._discovery: dict[str, Any] | None = None
        self._discovered_at = 0.0

    @property
    def display_name(self) -> str:
        return self.config.display_name or httpx.URL(self.config.issuer).host or "single sign-on"

    def _http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, transport=self._transport)

    async def _token_request(
        self, endpoints: dict[str, Any], form: dict[str, str]
    ) -> dict[str, Any]:
        """POST to the token endpoint with this client's authentication; the JSON answer.

        ``ProviderRefused`` when the provider says no (an OAuth error), ``ServiceUnavailable``
        when it cannot be reached or answers something else.
        """
        secret = resolve_secret(self.config.client_secret) if self.config.client_secret else None
        methods = endpoints.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        data = dict(form)
        headers = {"Accept": "application/json"}
        if secret is None:
            data["client_id"] = self.config.client_id
        elif "client_secret_basic" in methods:  # RFC 6749 2.3.1: form-encoded, then Basic
            pair = f"{quote_plus(self.config.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            data.update(client_id=self.config.client_id, client_secret=secret)
        try:
            async with self._http() as http:
                response = await http.post(
                    endpoints["token_endpoint"],
                    data=data,
                    headers=headers,
                )
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"The identity provider cannot be reached ({type(exc).__name__}).",
                code="identity_provider_unavailable",
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServiceUnavailable(
                f"The identity provider's token endpoint answered {response.status_code}.",
                code="identity_provider_unavailable",
            )
        if response.status_code != 200 or "error" in answer:
            error = str(answer.get("error") or response.status_code)[:64]
            raise ProviderRefused(f"The identity provider refused ({error}).")
        return answer

    @property
    def scopes(self) -> list[str]:
        return ["openid", *(s for s in self.config.scopes if s != "openid")]

    async def endpoints(self) -> dict[str, Any]:
        """The provider's discovery document (cached a few minutes)."""
        if self._discovery is not None and time.monotonic() - self._discovered_at < DISCOVERY_TTL_S:
            return self._discovery
        url = self.config.issuer + "/.well-known/openid-configuration"
        document = await self._get_json(url, "discovery document")
        if document.get("issuer") != self.config.issuer:
            raise ServiceUnavailable(
                "The identity provider's discovery document names another issuer.",
                code="identity_provider_unavailable",
            )
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(name), str):
                raise ServiceUnavailable(
                    f"The identity provider's discovery document has no {name}.",
                    code="identity_provider_unavailable",
                )
        self._discovery, self._discovered_at = document, time.monotonic()
        return document

    async def _get_json(self, url: str, what: str, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._http() as http:
                response = await http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"The identity provider cannot be reached ({type(exc).__name__}).",
                code="identity_provider_unavailable",
            ) from None
        if token is not None and response.status_code in (401, 403):
            raise ProviderRefused("The identity provider no longer accepts this sign-in.")
        if response.status_code != 200:
            raise ServiceUnavailable(
                f"The identity provider's {what} answered {response.status_code}.",
                code="identity_provider_unavailable",
            )
        try:
            document = response.json()
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise ServiceUnavailable(
                f"The identity provider's {what} is not a JSON object.",
                code="identity_provider_unavailable",
            )
        return document

    async def begin(self, next_path: str) -> tuple[str, PendingSignIn]:
        """The provider's authorization URL to send the browser to, and what to keep."""
        endpoints = await self.endpoints()
        pending = PendingSignIn(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
            next_path=next_path,
        )
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
        url = endpoints["authorization_endpoint"]
        return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}", pending

    async def finish(self, code: str, pending: PendingSignIn) -> SignedIn:
        """Swap the code for tokens and verify the ID token (nonce included)."""
        endpoints = await self.endpoints()
        token = await self._token_request(
            endpoints,
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.redirect_uri,
                "code_verifier": pending.code_verifier,
            },
        )
        tokens = ProviderTokens.of(token)
        if not tokens.id_token:
            raise IdTokenRefused("The identity provider sent no ID token.")
        claims = await self.verify(tokens.id_token, pending.nonce)
        return SignedIn(claims, tokens)

    async def verify(self, id_token: str, nonce: str | None) -> dict[str, Any]:
        endpoints = await self.endpoints()
        keys = await self._get_json(endpoints["jwks_uri"], "key set")
        announced = endpoints.get("id_token_signing_alg_values_supported") or ["RS256"]
        return verify_id_token(
            id_token,
            keys,
            issuer=self.config.issuer,
            client_id=self.config.client_id,
            nonce=nonce,
            algorithms=frozenset(str(a) for a in announced),
        )

    async def userinfo(self, access_token: str) -> dict[str, Any] | None:
        """The userinfo endpoint's claims; None when the provider has none.
        ``ProviderRefused`` when it no longer accepts the access token."""
        endpoints = await self.endpoints()
        url = endpoints.get("userinfo_endpoint")
        if not isinstance(url, str):
            return None
        return await self._get_json(url, "userinfo endpoint", token=access_token)

    async def refresh(self, refresh_token: str) -> ProviderTokens:
        """New tokens for a refresh token; ``ProviderRefused`` when it is no longer good."""
        endpoints = await self.endpoints()
        token = await self._token_request(
            endpoints, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
        fresh = ProviderTokens.of(token)
        if fresh.refresh_token is None:  # providers that do not rotate keep the old one
            fresh.refresh_token = refresh_token
        return fresh

    async def end_session_url(self, id_token: str | None, after: str) -> str | None:
        """Where to send the browser to sign out at the provider too; None without one."""
        try:
            endpoints = await self.endpoints()
        except ServiceUnavailable:
            return None
        url = endpoints.get("end_session_endpoint")
        if not isinstance(url, str):
            return None
        params = {"client_id": self.config.client_id, "post_logout_redirect_uri": after}
        if id_token:
            params["id_token_hint"] = id_token
        return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
