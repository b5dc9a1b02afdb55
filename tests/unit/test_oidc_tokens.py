"""ID token checks (``auth/oidc.py``) with keys made here: only a token signed by the
provider's key, for this client, from this issuer, not expired, with this browser's
nonce, passes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from enclave.auth.oidc import IdTokenRefused, verify_id_token

ISSUER = "https://login.example.org/realms/bank"
CLIENT = "enclave"
NONCE = "n-0123456789"

SIGNING = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, another key
JWKS = KeySet([SIGNING]).as_dict(private=False)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "nonce": NONCE,
        "groups": ["hr-partners"],
    }
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = SIGNING, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": "k1"}, payload, key)


def verify(token: str, nonce: str | None = NONCE) -> dict[str, Any]:
    return verify_id_token(token, JWKS, issuer=ISSUER, client_id=CLIENT, nonce=nonce)


def test_a_good_token_passes_and_gives_its_claims() -> None:
    assert verify(sign(claims()))["groups"] == ["hr-partners"]


def test_a_tampered_payload_is_refused() -> None:
    header, payload, signature = sign(claims()).split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["groups"] = ["ai-platform"]  # promote oneself to admin
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    with pytest.raises(IdTokenRefused, match="signature"):
        verify(f"{header}.{forged}.{signature}")


def test_a_token_signed_by_another_key_is_refused() -> None:
    with pytest.raises(IdTokenRefused, match="signature"):
        verify(sign(claims(), OTHER))


def test_a_wrong_nonce_is_refused() -> None:
    with pytest.raises(IdTokenRefused, match="nonce"):
        verify(sign(claims(nonce="someone-elses")))
    with pytest.raises(IdTokenRefused, match="nonce"):
        verify(sign(claims(nonce=None)))  # no nonce at all


def test_an_expired_token_is_refused_after_the_leeway() -> None:
    now = int(time.time())
    assert verify(sign(claims(exp=now - 30, iat=now - 600)))  # clock skew: within a minute
    with pytest.raises(IdTokenRefused, match="exp"):
        verify(sign(claims(exp=now - 120, iat=now - 600)))


@pytest.mark.parametrize(
    "change",
    [
        {"iss": "https://evil.example.org/realms/bank"},
        {"aud": "another-client"},
        {"aud": ["another-client", CLIENT]},  # several audiences: azp must be us
        {"sub": None},
        {"iat": None},
        {"exp": None},
        {"iat": int(time.time()) + 3600},  # issued in the future
    ],
)
def test_issuer_audience_and_required_claims_are_checked(change: dict[str, Any]) -> None:
    with pytest.raises(IdTokenRefused):
        verify(sign(claims(**change)))


def test_several_audiences_pass_when_azp_is_this_client() -> None:
    assert verify(sign(claims(aud=["another-client", CLIENT], azp=CLIENT)))["sub"] == "alice"


def test_unsigned_and_symmetric_tokens_are_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=").decode()
    with pytest.raises(IdTokenRefused):
        verify(f"{header}.{payload}.")
    # HS256 with a key someone could know (the client secret, or the public key's bytes)
    secret = OctKey.import_key("a-client-secret-anyone-in-the-office-has-0123456789")
    hs_jwks = KeySet([secret]).as_dict(private=True)
    with pytest.raises(IdTokenRefused):
        verify_id_token(
            jwt.encode({"alg": "HS256"}, claims(), secret),
            hs_jwks,
            issuer=ISSUER,
            client_id=CLIENT,
            nonce=NONCE,
            algorithms=frozenset({"HS256", "RS256"}),
        )


def test_an_algorithm_the_provider_does_not_announce_is_refused() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "k1"})
    token = sign(claims(), ec, "ES256")
    keys = KeySet([ec]).as_dict(private=False)
    assert verify_id_token(token, keys, issuer=ISSUER, client_id=CLIENT, nonce=NONCE)
    with pytest.raises(IdTokenRefused):
        verify_id_token(
            token,
            keys,
            issuer=ISSUER,
            client_id=CLIENT,
            nonce=NONCE,
            algorithms=frozenset({"RS256"}),
        )


def test_a_refresh_token_id_token_needs_no_nonce() -> None:
    assert verify(sign(claims(nonce=None)), nonce=None)["sub"] == "alice"
