"""The Ed25519 keys that sign the audit log's head and checkpoints, kept out of the database.

The private key signs; the public key is all an auditor needs to check an
export. Keys are PEM: the private key PKCS#8 (``openssl genpkey -algorithm
ed25519``), the public key SubjectPublicKeyInfo (``openssl pkey -pubout``). A
key's id is the first 16 hex digits of the SHA-256 of its 32 raw public bytes;
every signed record names the id of the key that signed it.

The server's key comes from ``audit.signing_key`` (an ``env:``/``file:``
reference). Without one, the server creates ``<home>/audit-signing-key.pem``
(mode 0600) on first start and logs its path and id, so a default install
signs; that key sits next to the database, though, so it protects against
someone who can write the database but not read the server's files. Use a
reference to a key the database's administrators cannot read for more.

Public keys trusted by ``verify`` come from the signing key, from
``audit.trusted_public_keys`` (earlier keys, after a rotation) or from the
command line, never from files next to the log: a key found there would be
the forger's.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from enclave.errors import ConfigError

if TYPE_CHECKING:
    from enclave.settings import Settings

log = logging.getLogger(__name__)

SIGNING_KEY_FILE = "audit-signing-key.pem"

# key id -> public key
TrustedKeys = dict[str, Ed25519PublicKey]


def default_signing_key_path(settings: Settings) -> Path:
    """Where the server keeps the signing key it generated (when none is configured)."""
    return settings.home / SIGNING_KEY_FILE


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class AuditSigner:
    """An Ed25519 private key and its id."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, message: bytes) -> str:
        """The signature, base64."""
        return base64.b64encode(self.private_key.sign(message)).decode()

    @classmethod
    def generate(cls) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate())


def check_signature(public_key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        public_key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_private_key(text: str, source: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS#8 PEM; ConfigError naming ``source`` otherwise."""
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"{source} is not an Ed25519 key (create one with `enclave audit keygen`)"
        )
    return key


def load_public_key(text: str, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (a private key's PEM gives its public half)."""
    data = text.encode()
    try:
        if b"PRIVATE KEY" in data:
            private = serialization.load_pem_private_key(data, password=None)
            key: object = private.public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{source} is not an Ed25519 key")
    return key


def write_private_key(path: Path, signer: AuditSigner) -> None:
    """Write the key as PKCS#8 PEM to a new file with mode 0600; FileExistsError if present."""
    pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())


def signer_from_settings(settings: Settings, *, create: bool = True) -> AuditSigner | None:
    """The configured signing key; else ``<home>/audit-signing-key.pem``, created if allowed.

    Returns None only when no key is configured, none exists and ``create`` is false.
    """
    from enclave.settings import resolve_secret

    reference = settings.audit.signing_key
    if reference:
        return AuditSigner(
            load_private_key(resolve_secret(reference), f"audit.signing_key ({reference})")
        )
    path = default_signing_key_path(settings)
    if not path.exists():
        if not create:
            return None
        signer = AuditSigner.generate()
        try:
            write_private_key(path, signer)
        except FileExistsError:  # another process won the race; use its key
            pass
        else:
            log.warning(
                "audit log: created the signing key %s (key id %s). It signs the audit log's "
                "checkpoints; keep a copy of its public key (`enclave audit public-key`) off "
                "this machine, and see docs/operations.md to keep the key itself elsewhere.",
                path,
                signer.key_id,
            )
            return signer
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit signing key {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("audit log: %s is readable by other users; chmod 600 it", path)
    return AuditSigner(load_private_key(text, str(path)))


def trusted_keys_from_settings(settings: Settings) -> TrustedKeys:
    """Keys verify trusts: the signing key's (if there is one) and ``trusted_public_keys``."""
    keys: TrustedKeys = {}
    signer = signer_from_settings(settings, create=False)
    if signer is not None:
        keys[signer.key_id] = signer.public_key
    keys.update(load_public_key_files(settings.audit.trusted_public_keys))
    return keys


def load_public_key_files(paths: list[Path]) -> TrustedKeys:
    keys: TrustedKeys = {}
    for path in paths:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the public key {path}: {exc.strerror}") from exc
        public = load_public_key(text, str(path))
        keys[key_id(public)] = public
    return keys
