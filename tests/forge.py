"""Hand-built JWS for adversarial tests: nothing here goes through the code under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agentzt.identity import SigningKey, VerifyKey


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def to_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def compact(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: SigningKey
) -> str:
    """A compact JWS built by hand (no pyjwt), signed with Ed25519 by ``key``."""
    h = header if isinstance(header, bytes) else to_json(header)
    p = payload if isinstance(payload, bytes) else to_json(payload)
    signing_input = f"{b64u(h)}.{b64u(p)}"
    return f"{signing_input}.{b64u(key.sign(signing_input.encode('ascii')))}"


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64u(to_json(header))}.{b64u(to_json(payload))}."


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """A compact JWS MAC-ed with HS256 under ``secret``, built by hand."""
    signing_input = f"{b64u(to_json(header))}.{b64u(to_json(payload))}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(mac)}"


def public_pem(key: VerifyKey) -> bytes:
    public = ed25519.Ed25519PublicKey.from_public_bytes(key.raw)
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
