"""Compact JWS with EdDSA only, and the strict claim checks every agentzt token shares.

pyjwt serializes the compact form; the signature itself is made and checked by libsodium
through ``SigningKey`` / ``VerifyKey``. Parsing is our own: one regular expression for
the three base64url segments, then strict JSON. (pyjwt checks the alphabet character by
character in Python, which cost about 100 µs of the 150 µs a DPoP proof took to verify,
on every call.) Claim validation is our own too, so the profile is exact: required
claims with their JSON types, a single-string ``aud`` that must match exactly, bounded
lifetimes, duplicate JSON keys refused in the header and the payload alike.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from agentzt.errors import (
    BadAlgorithmError,
    ExpiredTokenError,
    ImmatureTokenError,
    InvalidAudienceError,
    InvalidIssuerError,
    LifetimeTooLongError,
    MalformedTokenError,
    MissingClaimError,
)
from agentzt.identity.keys import SigningKey, VerifyKey

ALGORITHM = "EdDSA"
# A token larger than this is refused before any parsing work is done.
MAX_TOKEN_CHARS = 8192
MAX_STRING_CLAIM = 256
# Far beyond any real date, small enough for exact float arithmetic.
MAX_NUMERIC_DATE = 2**53
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")
# Header parameters that would let the token name its own key or its own rules.
# IMPORTANT: keys come only from the registry or the gateway's own key, never from here.
FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})
# header.payload.signature, each unpadded base64url. An empty signature parses (so an
# "alg": "none" token is refused for its alg) and then fails the length check.
COMPACT = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


class _Ed25519(Algorithm):
    """EdDSA over libsodium, so pyjwt never picks a verifier we did not choose."""

    def prepare_key(self, key: Any) -> Any:
        if isinstance(key, SigningKey | VerifyKey):
            return key
        raise jwt.InvalidKeyError("agentzt keys only")

    def sign(self, msg: bytes, key: Any) -> bytes:
        assert isinstance(key, SigningKey)
        return key.sign(msg)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        # decode() below verifies through VerifyKey; nothing may verify through pyjwt.
        raise NotImplementedError("agentzt verifies signatures through VerifyKey only")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise jwt.InvalidKeyError("not supported")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise jwt.InvalidKeyError("not supported")


# IMPORTANT: an empty allow-list drops every default algorithm (HS256, none, RSA...),
# so the only algorithm this instance knows is ours.
_JWS = jwt.PyJWS(algorithms=[])
_JWS.register_algorithm(ALGORITHM, _Ed25519())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


# UTF-8 only (RFC 7519), duplicate names and NaN/Infinity refused; built once.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


class CompactSigner:
    """Signs many compact JWSs with one key under one header, such as a DPoP prover's:
    the header's segment is encoded once, at start-up, not per proof."""

    __slots__ = ("_head", "_key")

    def __init__(self, key: SigningKey, headers: Mapping[str, Any]) -> None:
        header = json.dumps({"alg": ALGORITHM, **headers}, separators=(",", ":"), sort_keys=True)
        self._head = _b64url_encode(header.encode("utf-8")) + b"."
        self._key = key

    def sign(self, claims: Mapping[str, Any]) -> str:
        payload = json.dumps(claims, separators=(",", ":"), allow_nan=False).encode("utf-8")
        signing_input = self._head + _b64url_encode(payload)
        signature = _b64url_encode(self._key.sign(signing_input))
        return (signing_input + b"." + signature).decode("ascii")


def _b64url_encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def encode(claims: Mapping[str, Any], key: SigningKey, *, headers: Mapping[str, Any]) -> str:
    payload = json.dumps(claims, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return _JWS.encode(payload, key, algorithm=ALGORITHM, headers=dict(headers))  # type: ignore[arg-type]


def decode(
    token: object,
    key_for: Callable[[Mapping[str, Any], Mapping[str, Any]], VerifyKey],
    *,
    typ: frozenset[str],
    required: tuple[str, ...] = REQUIRED_CLAIMS,
    allowed_headers: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify ``token`` and return ``(header, claims)``; raise a TokenError otherwise.

    ``key_for(header, claims)`` picks the key from trusted state (the registry, the
    gateway key) using the unverified claims; the signature is then checked with it.
    ``typ`` lists the accepted ``typ`` header values, lower-cased ("" for absent).
    ``required`` names the claims the profile must carry; ``allowed_headers`` lifts the
    ban on a header the profile itself defines (DPoP's ``jwk``), never any other.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise MalformedTokenError("token missing, not a string or too large")
    header, payload, signature = _split(token)
    # IMPORTANT: the accepted algorithm is pinned here, never read from the token.
    if header.get("alg") != ALGORITHM:
        raise BadAlgorithmError("alg is not EdDSA")
    if (FORBIDDEN_HEADERS - allowed_headers).intersection(header):
        raise BadAlgorithmError("header carries key material or critical extensions")
    token_typ = header.get("typ", "")
    if not isinstance(token_typ, str) or token_typ.lower().removeprefix("application/") not in typ:
        raise BadAlgorithmError("typ header not accepted for this token kind")
    claims = parse_claims(payload, required)
    key = key_for(header, claims)
    signing_input = token.rsplit(".", 1)[0].encode("ascii", "strict")
    key.verify(signing_input, signature)
    return header, claims


def _b64url(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise MalformedTokenError("a segment is not base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedTokenError("a segment is not base64url") from exc
    # IMPORTANT: only the canonical spelling (unused low bits zero), so each token and
    # proof has exactly one string form; otherwise 16 spellings of one signature would
    # all verify.
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment.encode("ascii"):
        raise MalformedTokenError("a segment is not canonical base64url")
    return decoded


def _split(token: str) -> tuple[dict[str, Any], bytes, bytes]:
    """The header (a JSON object), the payload bytes and the signature of ``token``."""
    match = COMPACT.fullmatch(token)
    if match is None:
        raise MalformedTokenError("not a compact JWS")
    try:
        header = _STRICT_JSON.decode(_b64url(match[1]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MalformedTokenError("header is not a JSON object") from exc
    if not isinstance(header, dict):
        raise MalformedTokenError("header is not a JSON object")
    return header, _b64url(match[2]), _b64url(match[3])


def parse_claims(payload: bytes, required: tuple[str, ...] = REQUIRED_CLAIMS) -> dict[str, Any]:
    try:
        claims = _STRICT_JSON.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MalformedTokenError("payload is not a JSON object") from exc
    if not isinstance(claims, dict):
        raise MalformedTokenError("payload is not a JSON object")
    for name in required:
        if name not in claims:
            raise MissingClaimError(f"claim {name} missing")
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name, 0)
        # IMPORTANT: bound the magnitude before any arithmetic; a 400-digit integer would
        # otherwise overflow float conversion in the time checks. NaN fails the bound too.
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE
        ):
            raise MissingClaimError(f"claim {name} is not a NumericDate")
    for name in ("iss", "sub", "jti", "aud"):
        if name not in claims and name not in required:
            continue
        value = claims[name]
        if not isinstance(value, str) or not value or len(value) > MAX_STRING_CLAIM:
            raise MissingClaimError(f"claim {name} is not a non-empty string")
        # A "\ud800" escape parses to a lone surrogate, which has no UTF-8 form: such a
        # name could not be written to the audit log or matched against the registry.
        if not value.isascii() and not _is_unicode(value):
            raise MissingClaimError(f"claim {name} is not valid Unicode")
    return claims


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_time_and_audience(
    claims: Mapping[str, Any],
    *,
    issuer: str | None,
    audience: str,
    now: float,
    leeway: float,
    max_lifetime: float,
) -> None:
    """Raise unless the token is current, not too long-lived, and meant for us."""
    if issuer is not None and claims["iss"] != issuer:
        raise InvalidIssuerError("iss does not match")
    # IMPORTANT: exact string match; a list or a prefix of the audience is refused.
    if claims["aud"] != audience:
        raise InvalidAudienceError("aud does not match")
    exp, iat = claims["exp"], claims["iat"]
    if exp <= iat:
        raise LifetimeTooLongError("exp is not after iat")
    if exp - iat > max_lifetime:
        raise LifetimeTooLongError("lifetime over the maximum")
    if now > exp + leeway:
        raise ExpiredTokenError("exp is in the past")
    if iat > now + leeway or claims.get("nbf", 0) > now + leeway:
        raise ImmatureTokenError("iat or nbf is in the future")
