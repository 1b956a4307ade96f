"""DPoP (RFC 9449): proof that the caller holds the key its access token is bound to.

The proxy signs one proof per request with the agent's key. The gateway checks it
against the key the token is bound to (``cnf.jkt``), which must also be the agent's
registered key. The signature is always checked with the registry's key: the proof's
``jwk`` header only has to hash to the same RFC 7638 thumbprint, so nothing in a proof
can bring its own key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from agentzt.errors import InvalidDpopProofError, ReplayedTokenError, TokenError
from agentzt.identity import jws
from agentzt.identity.keys import SigningKey, VerifyKey, b64url, okp_thumbprint
from agentzt.identity.replay import ReplayCache

Clock = Callable[[], float]
PROOF_TYP = frozenset({"dpop+jwt"})
PROOF_CLAIMS = ("jti", "htm", "htu", "iat")
# The public members an OKP key may carry; anything else (above all "d") is refused.
JWK_MEMBERS = frozenset({"kty", "crv", "x", "kid", "alg", "use", "key_ops"})
X_LENGTH = 43  # base64url of 32 bytes, no padding
MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def token_hash(access_token: str) -> str:
    """``ath``: base64url SHA-256 of the access token's ASCII form."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def _percent(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else f"%{match[1].upper()}"


@functools.lru_cache(maxsize=1024)
def normalize_url(url: str) -> str:
    """The URL as RFC 9449 section 4.3 compares it: scheme and host lower-cased, the
    default port dropped, percent-encoding normalized (RFC 3986 section 6.2.2), query
    and fragment left out. Raises ValueError for anything that is not an http(s) URL.
    """
    if len(url) > MAX_URL_CHARS or not url.isascii():
        raise ValueError("not a short ASCII URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        raise ValueError("not an http(s) URL with a host")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _PERCENT.sub(_percent, parts.path or "/")
    return f"{scheme}://{netloc}{path}"


def jwk_thumbprint(jwk: object) -> str:
    """RFC 7638 thumbprint of a public Ed25519 JWK from a proof header."""
    if not isinstance(jwk, dict):
        raise InvalidDpopProofError("DPoP proof: jwk header is not a JSON object")
    if "d" in jwk:
        raise InvalidDpopProofError("DPoP proof: jwk header carries a private key")
    if not JWK_MEMBERS.issuperset(jwk):
        raise InvalidDpopProofError("DPoP proof: jwk header has members a public key never has")
    x = jwk.get("x")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(x, str):
        raise InvalidDpopProofError("DPoP proof: jwk is not an Ed25519 public key")
    if len(x) != X_LENGTH or not x.isascii():
        raise InvalidDpopProofError("DPoP proof: jwk x is not a 32-byte key")
    return okp_thumbprint(x)


class Prover:
    """Makes DPoP proofs with one agent key (the proxy's side)."""

    def __init__(self, key: SigningKey, new_jti: Callable[[], str]) -> None:
        public = key.public
        self._new_jti = new_jti
        self._signer = jws.CompactSigner(
            key,
            {"typ": "dpop+jwt", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": public.b64url}},
        )

    def proof(self, method: str, url: str, *, now: float, access_token: str | None = None) -> str:
        claims: dict[str, Any] = {
            "jti": self._new_jti(),
            "htm": method,
            "htu": url,
            "iat": int(now),
        }
        if access_token is not None:
            claims["ath"] = token_hash(access_token)
        return self._signer.sign(claims)


class ProofVerifier:
    """Checks DPoP proofs (the gateway's side) at the token endpoint and on every call.

    ``max_age`` bounds how old a proof may be; its ``jti`` is remembered for as long as
    the proof could still be accepted, in the replay cache the client assertions share.
    """

    def __init__(self, *, replay: ReplayCache, clock: Clock, max_age: int, leeway: int) -> None:
        self._replay = replay
        self._clock = clock
        self._max_age = max_age
        self._leeway = leeway

    def verify(
        self,
        proof: object,
        *,
        key: VerifyKey,
        method: str,
        url: str,
        access_token: str | None = None,
    ) -> None:
        """Raise InvalidDpopProofError unless ``proof`` is a fresh, unused proof by
        ``key`` for this ``method`` and ``url`` (and, on a resource call, this token)."""
        expected = key.kid

        def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> VerifyKey:
            if not hmac.compare_digest(jwk_thumbprint(header.get("jwk")), expected):
                raise InvalidDpopProofError("DPoP proof: signed by another key than the bound one")
            return key

        try:
            _, claims = jws.decode(
                proof,
                key_for,
                typ=PROOF_TYP,
                required=PROOF_CLAIMS,
                allowed_headers=frozenset({"jwk"}),
            )
        except InvalidDpopProofError:
            raise
        except TokenError as exc:
            raise InvalidDpopProofError(f"DPoP proof: {exc.detail}") from exc
        if claims["htm"] != method:
            raise InvalidDpopProofError("DPoP proof: htm is not this request's method")
        htu = claims["htu"]
        try:
            matches = isinstance(htu, str) and normalize_url(htu) == normalize_url(url)
        except ValueError:
            matches = False
        if not matches:
            raise InvalidDpopProofError("DPoP proof: htu is not this request's URL")
        now, iat = self._clock(), claims["iat"]
        if iat < now - self._max_age - self._leeway:
            raise InvalidDpopProofError("DPoP proof: iat is too old")
        if iat > now + self._leeway:
            raise InvalidDpopProofError("DPoP proof: iat is in the future")
        if access_token is not None:
            ath = claims.get("ath")
            if not isinstance(ath, str) or not hmac.compare_digest(
                ath.encode("ascii", "replace"), token_hash(access_token).encode("ascii")
            ):
                raise InvalidDpopProofError("DPoP proof: ath is not this access token's hash")
        # Last, so only a proof that passed every other check takes a slot in the cache.
        try:
            self._replay.use(
                f"dpop\x00{expected}\x00{claims['jti']}",
                # Past this, the iat check refuses the proof anyway.
                until=iat + self._max_age + self._leeway,
            )
        except ReplayedTokenError as exc:
            raise InvalidDpopProofError(f"DPoP proof: {exc.detail}") from exc
