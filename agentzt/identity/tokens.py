"""The token profiles: client assertion (RFC 7523) and access token (RFC 9068).

Each verifier raises a TokenError subclass for the first check that fails and returns
typed claims when all pass. Time comes from an injected clock.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentzt.errors import BadAlgorithmError, MissingClaimError
from agentzt.identity import jws
from agentzt.identity.keys import SigningKey, VerifyKey
from agentzt.identity.replay import ReplayCache

Clock = Callable[[], float]
CLOCK_SKEW_SECONDS = 30
ASSERTION_TYP = frozenset({"", "jwt"})
ACCESS_TOKEN_TYP = frozenset({"at+jwt"})
# base64url of a SHA-256 digest, no padding.
X5T_LENGTH = 43
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A task id an agent names (``x-agentzt-task-id``); safe in a header, a URL path and a log.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def new_jti() -> str:
    return secrets.token_urlsafe(18)


KeyFor = Callable[[Mapping[str, Any], Mapping[str, Any]], VerifyKey]


def pinned_key(key: VerifyKey) -> KeyFor:
    """A ``key_for`` for tokens the gateway signed: only its key, whatever a ``kid`` says."""

    def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> VerifyKey:
        if header.get("kid", key.kid) != key.kid:
            raise BadAlgorithmError("kid is not the gateway key")
        return key

    return key_for


# --- client assertion: made by the proxy, checked by the token endpoint ---------------


def make_assertion(
    key: SigningKey, agent_id: str, *, audience: str, now: float, ttl: int = 60
) -> str:
    """A single-use private_key_jwt assertion proving the agent holds ``key``."""
    claims = {
        "iss": agent_id,
        "sub": agent_id,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + ttl,
        "jti": new_jti(),
    }
    return jws.encode(claims, key, headers={"kid": agent_id, "typ": "JWT"})


class AssertionVerifier:
    """Checks client assertions at ``POST /v1/token``."""

    def __init__(
        self,
        *,
        audience: str,
        key_lookup: Callable[[str], VerifyKey],
        replay: ReplayCache,
        clock: Clock,
        max_age: int,
        leeway: int = CLOCK_SKEW_SECONDS,
    ) -> None:
        self._audience = audience
        self._key_lookup = key_lookup
        self._replay = replay
        self._clock = clock
        self._max_age = max_age
        self._leeway = leeway

    def verify(self, assertion: object) -> str:
        """Return the authenticated agent id."""

        def key_for(header: Mapping[str, Any], claims: Mapping[str, Any]) -> VerifyKey:
            # IMPORTANT: the key is the one registered for the claimed agent; nothing
            # in the token can substitute another key.
            if claims["iss"] != claims["sub"] or header.get("kid", claims["sub"]) != claims["sub"]:
                raise MissingClaimError("iss, sub and kid must name the same agent")
            return self._key_lookup(claims["sub"])

        _, claims = jws.decode(assertion, key_for, typ=ASSERTION_TYP)
        jws.check_time_and_audience(
            claims,
            issuer=None,
            audience=self._audience,
            now=self._clock(),
            leeway=self._leeway,
            max_lifetime=self._max_age,
        )
        # Only a verified, current assertion consumes its jti, so garbage cannot fill the cache.
        self._replay.use(
            f"assertion\x00{claims['sub']}\x00{claims['jti']}", until=claims["exp"] + self._leeway
        )
        agent_id: str = claims["sub"]
        return agent_id


# --- access token: issued and checked by the gateway -----------------------------------


@dataclass(frozen=True, slots=True)
class AccessClaims:
    agent_id: str
    role: str
    scope: frozenset[str]
    jti: str
    iat: int
    exp: int
    # RFC 8705: the x5t#S256 thumbprint of the client certificate the token is bound to.
    x5t: str | None = None
    # RFC 9449: the thumbprint of the agent key whose DPoP proofs must accompany the token.
    jkt: str | None = None
    # The task the token was issued for; it is good only for calls naming that task.
    task: str | None = None

    @property
    def cnf(self) -> dict[str, str]:
        """The RFC 7800 confirmation claim: what the token is bound to (may be empty)."""
        return {k: v for k, v in (("x5t#S256", self.x5t), ("jkt", self.jkt)) if v is not None}

    @property
    def binding(self) -> str:
        """What the token is bound to, as the ledger and ``agentzt tokens`` show it."""
        kinds = [k for k, v in (("dpop", self.jkt), ("mtls", self.x5t)) if v is not None]
        return "+".join(kinds) or "bearer"


class AccessTokenIssuer:
    def __init__(self, key: SigningKey, *, issuer: str, ttl: int, clock: Clock) -> None:
        self._key = key
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock
        self._headers = {"typ": "at+jwt", "kid": key.public.kid}

    def issue(
        self,
        agent_id: str,
        role: str,
        scope: list[str],
        *,
        x5t: str | None = None,
        jkt: str | None = None,
        task: str | None = None,
    ) -> tuple[str, AccessClaims]:
        """A signed access token; with ``x5t``, bound to that client certificate, with
        ``jkt`` to that key's DPoP proofs, and with ``task`` to that task."""
        now = int(self._clock())
        claims = AccessClaims(
            agent_id=agent_id,
            role=role,
            scope=frozenset(scope),
            jti=new_jti(),
            iat=now,
            exp=now + self._ttl,
            x5t=x5t,
            jkt=jkt,
            task=task,
        )
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "sub": agent_id,
            "aud": self._issuer,
            "client_id": agent_id,
            "role": role,
            "scope": " ".join(scope),
            "iat": claims.iat,
            "exp": claims.exp,
            "jti": claims.jti,
        }
        if claims.cnf:
            payload["cnf"] = claims.cnf
        if task is not None:
            payload["task"] = task
        return jws.encode(payload, self._key, headers=self._headers), claims


class AccessTokenVerifier:
    """Checks bearer tokens on every resource call.

    A token that verified once is remembered, byte for byte, until it expires, so the
    hot path does one dictionary lookup instead of a signature check per call. Only the
    exact string that passed every check is cached; any other string is verified afresh.
    """

    CACHE_SIZE = 10_000

    def __init__(
        self,
        key: VerifyKey,
        *,
        issuer: str,
        max_ttl: int,
        clock: Clock,
        leeway: int = CLOCK_SKEW_SECONDS,
    ) -> None:
        self._issuer = issuer
        self._max_ttl = max_ttl
        self._clock = clock
        self._leeway = leeway
        self._cache: dict[str, AccessClaims] = {}
        self._key_for = pinned_key(key)

    def verify(self, token: object) -> AccessClaims:
        if isinstance(token, str):
            cached = self._cache.get(token)
            if cached is not None:
                if self._clock() <= cached.exp + self._leeway:
                    return cached
                del self._cache[token]
        verified = self._verify(token)
        assert isinstance(token, str)
        if len(self._cache) >= self.CACHE_SIZE:
            # Drop the oldest entry: dicts keep insertion order.
            del self._cache[next(iter(self._cache))]
        self._cache[token] = verified
        return verified

    def _verify(self, token: object) -> AccessClaims:
        _, claims = jws.decode(token, self._key_for, typ=ACCESS_TOKEN_TYP)
        jws.check_time_and_audience(
            claims,
            issuer=self._issuer,
            audience=self._issuer,
            now=self._clock(),
            leeway=self._leeway,
            max_lifetime=self._max_ttl,
        )
        role, scope = claims.get("role"), claims.get("scope")
        if not isinstance(role, str) or not isinstance(scope, str):
            raise MissingClaimError("role or scope missing")
        task = claims.get("task")
        if task is not None and (not isinstance(task, str) or not TASK_ID.fullmatch(task)):
            raise MissingClaimError("task is not a task id")
        x5t, jkt = _confirmation(claims)
        return AccessClaims(
            agent_id=claims["sub"],
            role=role,
            scope=frozenset(scope.split()),
            jti=claims["jti"],
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
            x5t=x5t,
            jkt=jkt,
            task=task,
        )


def _confirmation(claims: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The certificate and key thumbprints in ``cnf`` (``x5t#S256``, ``jkt``), if any.

    IMPORTANT: a ``cnf`` this gateway cannot check (another member, another shape) is
    refused: a token bound to something we cannot verify must not pass as a bearer token.
    """
    if "cnf" not in claims:
        return None, None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict) or not cnf or not {"x5t#S256", "jkt"}.issuperset(cnf):
        raise MissingClaimError("cnf must hold x5t#S256, jkt or both, and nothing else")
    for thumbprint in cnf.values():
        if not isinstance(thumbprint, str) or len(thumbprint) != X5T_LENGTH:
            raise MissingClaimError("cnf holds something that is not a SHA-256 thumbprint")
    return cnf.get("x5t#S256"), cnf.get("jkt")
