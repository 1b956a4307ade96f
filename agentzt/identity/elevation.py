"""Just-in-time elevation grants: one agent, one resource, a short life, a few uses.

A grant is a JWS signed by the gateway key with its own ``typ`` (``elevation+jwt``), so it
can never stand in for an access token or a client assertion, nor they for it.

Use counts live in the gateway's memory, so each grant also names the gateway process
that issued it (``epoch``, random per start): after a restart, which forgets the counts,
earlier grants are refused instead of counting from zero again.
"""

from __future__ import annotations

import heapq
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from agentzt.errors import (
    InvalidIssuerError,
    MissingClaimError,
    PermissionDeniedError,
)
from agentzt.identity import jws
from agentzt.identity.keys import SigningKey, VerifyKey
from agentzt.identity.tokens import CLOCK_SKEW_SECONDS, TASK_ID, new_jti, pinned_key

Clock = Callable[[], float]
ELEVATION_TYP = frozenset({"elevation+jwt"})
# The policy caps a role's max_ttl_seconds at one day; no grant may live longer.
MAX_GRANT_LIFETIME = 86_400
RESOURCE_KINDS = ("model", "tool")


@dataclass(frozen=True, slots=True)
class Grant:
    agent_id: str
    kind: str
    name: str
    reason: str
    jti: str
    iat: int
    exp: int
    # The task of the token that asked for it: the grant serves only calls of that task.
    task: str | None = None

    @property
    def scope(self) -> str:
        return f"{self.kind}:{self.name}"


def new_epoch() -> str:
    return secrets.token_urlsafe(12)


class ElevationIssuer:
    def __init__(self, key: SigningKey, *, issuer: str, clock: Clock, epoch: str) -> None:
        self._key = key
        self._issuer = issuer
        self._clock = clock
        self._epoch = epoch
        self._headers = {"typ": "elevation+jwt", "kid": key.public.kid}

    def issue(
        self,
        agent_id: str,
        *,
        kind: str,
        name: str,
        reason: str,
        ttl: int,
        task: str | None = None,
    ) -> tuple[str, Grant]:
        now = int(self._clock())
        grant = Grant(agent_id, kind, name, reason, new_jti(), now, now + ttl, task)
        payload: dict[str, object] = {
            "iss": self._issuer,
            "aud": self._issuer,
            "sub": agent_id,
            "resource": {"kind": kind, "name": name},
            "reason": reason,
            "iat": grant.iat,
            "exp": grant.exp,
            "jti": grant.jti,
            "epoch": self._epoch,
        }
        if task is not None:
            payload["task"] = task
        return jws.encode(payload, self._key, headers=self._headers), grant


class ElevationVerifier:
    """Checks a presented grant's signature, type, issuer, audience and time.

    Whether the grant fits the call (agent, resource, live policy, uses left) is the
    gateway's decision, made with this verified Grant.
    """

    def __init__(
        self,
        key: VerifyKey,
        *,
        issuer: str,
        clock: Clock,
        epoch: str,
        leeway: int = CLOCK_SKEW_SECONDS,
    ) -> None:
        self._key_for = pinned_key(key)
        self._issuer = issuer
        self._clock = clock
        self._epoch = epoch
        self._leeway = leeway

    def verify(self, token: object) -> Grant:
        _, claims = jws.decode(token, self._key_for, typ=ELEVATION_TYP)
        jws.check_time_and_audience(
            claims,
            issuer=self._issuer,
            audience=self._issuer,
            now=self._clock(),
            leeway=self._leeway,
            max_lifetime=MAX_GRANT_LIFETIME,
        )
        resource, reason = claims.get("resource"), claims.get("reason")
        if (
            not isinstance(resource, dict)
            or set(resource) != {"kind", "name"}
            or resource["kind"] not in RESOURCE_KINDS
            or not isinstance(resource["name"], str)
            or not isinstance(reason, str)
        ):
            raise MissingClaimError("resource or reason missing or malformed")
        if claims.get("epoch") != self._epoch:
            raise InvalidIssuerError("grant was issued before the gateway restarted")
        task = claims.get("task")
        if task is not None and (not isinstance(task, str) or not TASK_ID.fullmatch(task)):
            raise MissingClaimError("task is not a task id")
        return Grant(
            agent_id=claims["sub"],
            kind=resource["kind"],
            name=resource["name"],
            reason=reason,
            jti=claims["jti"],
            iat=int(claims["iat"]),
            exp=int(claims["exp"]),
            task=task,
        )


class GrantUses:
    """How many times each grant has been used, remembered until the grant expires.

    Eviction pops a heap of expiries, so a call's cost does not grow with past traffic.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._uses: dict[str, int] = {}
        self._heap: list[tuple[float, str]] = []

    def used(self, jti: str) -> int:
        self._evict()
        return self._uses.get(jti, 0)

    def consume(self, grant: Grant, *, max_uses: int) -> int:
        """Count one use of ``grant`` and return its number (1 for the first use).

        IMPORTANT: check and count happen with no await between them, so concurrent
        calls cannot together use a grant more often than ``max_uses``.
        """
        self._evict()
        used = self._uses.get(grant.jti, 0)
        if used >= max_uses:
            raise PermissionDeniedError(
                f"elevation grant {grant.jti} already used {used} of {max_uses} times",
                message="elevation grant is used up",
            )
        if used == 0:
            heapq.heappush(self._heap, (grant.exp + CLOCK_SKEW_SECONDS, grant.jti))
        self._uses[grant.jti] = used + 1
        return used + 1

    def _evict(self) -> None:
        now, heap = self._clock(), self._heap
        while heap and heap[0][0] < now:
            _, jti = heapq.heappop(heap)
            self._uses.pop(jti, None)
