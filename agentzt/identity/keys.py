"""Ed25519 keys: generation, PKCS#8 PEM files, public-key validation and key ids.

Signing and verification use libsodium (pynacl). libsodium refuses small-order and
non-canonical public keys at verification time, where some other libraries accept a
universal forgery under such keys; we also refuse them when a key enters the registry.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentzt.errors import ConfigError, InvalidSignatureError

PUBLIC_KEY_BYTES = 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def okp_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of the Ed25519 JWK whose ``x`` is given (base64url)."""
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def check_public_key(raw: bytes) -> None:
    """Raise ValueError unless ``raw`` is a canonical Ed25519 point of prime order.

    IMPORTANT: this refuses the small-order and mixed-order keys under which a forged
    signature can verify for any message.
    """
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
        raise ValueError("not a valid Ed25519 public key (small-order or non-canonical point)")


@dataclass(frozen=True)
class VerifyKey:
    """A validated Ed25519 public key."""

    raw: bytes

    def __post_init__(self) -> None:
        check_public_key(self.raw)

    @classmethod
    def from_b64url(cls, text: str) -> VerifyKey:
        return cls(b64url_decode(text))

    @property
    def b64url(self) -> str:
        return b64url(self.raw)

    @functools.cached_property
    def kid(self) -> str:
        """RFC 7638 JWK thumbprint: a stable key id that any JOSE library can recompute."""
        return okp_thumbprint(self.b64url)

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.b64url,
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        }

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise InvalidSignatureError unless ``signature`` is valid for ``message``."""
        # IMPORTANT: the length check keeps signature and message from sliding into
        # each other in the combined form libsodium's crypto_sign_open takes.
        if len(signature) != nacl.bindings.crypto_sign_BYTES:
            raise InvalidSignatureError("signature has the wrong length")
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.raw)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
            raise InvalidSignatureError("signature does not verify") from exc


class SigningKey:
    """An Ed25519 private key. Never logged, never sent anywhere."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self.public = VerifyKey(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def to_pem(self) -> bytes:
        seed = bytes(self._key)
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        return private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str) -> SigningKey:
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: not a PKCS#8 PEM private key") from exc
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{source}: not an Ed25519 private key")
        return cls(private.private_bytes_raw())

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.public.kid!r})"


def write_private_key(path: Path, key: SigningKey) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600, created exclusively.

    IMPORTANT: the file is created with 0600 from the start (never chmod-ed afterwards),
    so there is no window in which another local user could read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.to_pem())


def read_private_key(path: Path) -> SigningKey:
    try:
        pem = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: key file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read key file ({exc.strerror})") from exc
    return SigningKey.from_pem(pem, source=str(path))


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The gateway's signing key: created on first start, read afterwards."""
    if not path.exists():
        # Another process may create it between our check and our write; theirs wins.
        with contextlib.suppress(FileExistsError):
            write_private_key(path, SigningKey.generate())
    return read_private_key(path)
