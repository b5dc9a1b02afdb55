"""Whose credentials an app's API call carries: a service's, the user's, or an exchanged one.

An API in an app's spec authenticates in one of three ways:

* without ``auth``, its ``headers`` carry a shared service token
  (``Authorization: Bearer env:HR_TOKEN``): every user's call looks the same
  to the API, and the app decides what anyone may ask;
* ``auth: {user_token: true}`` forwards the signed-in user's own access token
  (``Principal.user_token``) as the bearer, for an API that trusts the same
  identity provider; the API then decides what this user may read;
* ``auth: {token_exchange: ...}`` swaps the user's token at the identity
  provider for one meant for this API (OAuth 2.0 Token Exchange, RFC 8693):
  a form POST of ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``
  with the user's token as ``subject_token``, the client authenticated with
  HTTP Basic. Exchanged tokens are cached per user token and exchange settings
  until shortly before they expire, so a conversation costs one exchange.

The last two need a user. A request without one (a key with no user behind
it) fails with :class:`~enclave.apps.calls.CallError`; it is never sent with
the service token instead. A user's token goes only into the ``Authorization``
header of that API's calls (redirects are not followed and the egress guard
checks the host, for the token endpoint too), and never into logs, audit
entries or the model's prompt: error messages name the API, the provider and
its OAuth error code, never a token or a response body.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from enclave.apps.calls import CallError, resolve_headers
from enclave.apps.spec import ApiSpec, TokenExchange
from enclave.auth.principals import Principal
from enclave.egress import CALLER_EXTENSION, Caller, RefusedConnection

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# An exchanged token is used until this many seconds before it expires.
EXPIRY_MARGIN_S = 30.0
MAX_CACHED_TOKENS = 10_000
_OAUTH_ERROR = re.compile(r"^[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749's error code


class ApiCredentials:
    """The headers one API call carries, for the principal it runs for (one per server:
    it holds the exchanged tokens)."""

    def __init__(
        self,
        secret_env: list[str],
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret_env = secret_env
        self.environ = environ
        self.clock = clock
        # (exchange settings, hash of the user's token) -> (exchanged token, valid until).
        self._exchanged: dict[tuple[str, ...], tuple[str, float]] = {}

    async def headers(
        self,
        api: ApiSpec,
        principal: Principal,
        *,
        http: httpx.AsyncClient,
        caller: Caller,
        timeout_s: float,
    ) -> dict[str, str]:
        """The API's configured headers (``env:NAME`` resolved) and, for an API that runs
        as the user, their bearer token. ``http`` is the server's guarded client.
        Raises :class:`CallError` (safe to show)."""
        headers = resolve_headers(api.headers, self.secret_env, self.environ)
        if api.auth is None:
            return headers
        token = principal.user_token
        if not token:
            raise CallError(
                f"the {api.name} API is called as the signed-in user, and this request has "
                "no user (an API key without one); it is not called with other credentials"
            )
        if api.auth.token_exchange is not None:
            token = await self._exchange(
                api.name,
                api.auth.token_exchange,
                token,
                http=http,
                caller=caller,
                timeout_s=timeout_s,
            )
        headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _exchange(
        self,
        api: str,
        exchange: TokenExchange,
        subject_token: str,
        *,
        http: httpx.AsyncClient,
        caller: Caller,
        timeout_s: float,
    ) -> str:
        subject = hashlib.sha256(subject_token.encode()).hexdigest()
        settings = (exchange.token_url, exchange.client_id, exchange.audience, exchange.scope)
        key = (*(part or "" for part in settings), subject)
        cached = self._exchanged.get(key)
        now = self.clock()
        if cached is not None and cached[1] > now:
            return cached[0]
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if exchange.audience:
            form["audience"] = exchange.audience
        if exchange.scope:
            form["scope"] = exchange.scope
        headers = {"Accept": "application/json"}
        if exchange.client_secret:
            secret = resolve_headers(
                {"client_secret": exchange.client_secret},
                self.secret_env,
                self.environ,
                kind="token exchange",
            )["client_secret"]
            # RFC 6749 2.3.1: id and secret are form-encoded before Basic authentication.
            pair = f"{quote(exchange.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = exchange.client_id
        where = f"token exchange for the {api} API at {urlsplit(exchange.token_url).hostname}"
        try:
            request = http.build_request(
                "POST",
                exchange.token_url,
                data=form,
                headers=headers,
                timeout=httpx.Timeout(timeout_s),
                extensions={CALLER_EXTENSION: caller},
            )
            async with asyncio.timeout(timeout_s):
                response = await http.send(request, follow_redirects=False)
        except RefusedConnection as exc:
            raise CallError(f"{where}: {exc.refusal}") from None
        except (TimeoutError, httpx.TimeoutException):
            raise CallError(f"{where}: no answer within {timeout_s:g} s") from None
        except httpx.RequestError as exc:
            raise CallError(f"{where}: could not reach it ({type(exc).__name__})") from None
        body = _json_object(response)
        token = body.get("access_token")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            error = body.get("error")
            code = error if isinstance(error, str) and _OAUTH_ERROR.match(error) else None
            reason = f"HTTP {response.status_code}" + (f", {code}" if code else "")
            raise CallError(f"{where} was refused ({reason})")
        if "\r" in token or "\n" in token:
            raise CallError(f"{where}: the token endpoint sent an unusable token")
        lifetime = body.get("expires_in")
        if isinstance(lifetime, int | float) and lifetime > EXPIRY_MARGIN_S:
            if len(self._exchanged) >= MAX_CACHED_TOKENS:
                self._exchanged = {k: v for k, v in self._exchanged.items() if v[1] > now}
            if len(self._exchanged) < MAX_CACHED_TOKENS:
                self._exchanged[key] = (token, now + float(lifetime) - EXPIRY_MARGIN_S)
        return token


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
