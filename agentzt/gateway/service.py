"""The gateway's enforcement state, built once at start-up.

Everything the hot path needs (keys, policy, compiled schemas, the audit writer) is
loaded here, so a request does lookups and checks only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from agentzt.audit import AuditLog
from agentzt.config import GatewaySettings, Paths, load_gateway_settings
from agentzt.errors import AuthenticationError, PermissionDeniedError
from agentzt.gateway.ratelimit import SlidingWindowLimiter
from agentzt.identity import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    AssertionVerifier,
    Registry,
    ReplayCache,
    VerifyKey,
    load_or_create_signing_key,
)
from agentzt.policy import DecisionRequest, Policy, Resource, decide, load_policy
from agentzt.policy.load import RESOURCE_NAME
from agentzt.policy.model import Role
from agentzt.tools import ToolBox, default_toolbox

log = logging.getLogger("agentzt.gateway")
Clock = Callable[[], float]


@dataclass
class Call:
    """What one request did, filled in as it goes and written to the audit log."""

    request_id: str
    action: str
    started: float
    agent_id: str | None = None
    role: str | None = None
    resource: str | None = None
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Gateway:
    """The policy enforcement point: authenticates, asks the PDP, limits, audits."""

    def __init__(
        self,
        paths: Paths,
        *,
        public_url: str,
        settings: GatewaySettings | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings or load_gateway_settings(paths.gateway_toml)
        self.issuer = (self.settings.issuer or public_url).rstrip("/")
        self.token_endpoint = f"{self.issuer}/v1/token"
        self.clock = clock
        self.policy: Policy = load_policy(paths.policy_toml)
        if not self.policy.roles:
            log.warning(
                "%s defines no roles: every call will be denied (no configuration means no access)",
                paths.policy_toml,
            )
        self.registry = Registry(paths.agents_toml)
        signing_key = load_or_create_signing_key(paths.gateway_key)
        self.public_key: VerifyKey = signing_key.public
        tokens = self.settings.tokens
        self.replay = ReplayCache(clock)
        self.assertions = AssertionVerifier(
            audience=self.token_endpoint,
            key_lookup=lambda agent_id: self.registry.active(agent_id).public_key,
            replay=self.replay,
            clock=clock,
            max_age=tokens.assertion_max_age_seconds,
        )
        self.issuer_of_tokens = AccessTokenIssuer(
            signing_key, issuer=self.issuer, ttl=tokens.access_token_ttl_seconds, clock=clock
        )
        self.verifier = AccessTokenVerifier(
            self.public_key,
            issuer=self.issuer,
            max_ttl=tokens.access_token_ttl_seconds,
            clock=clock,
        )
        self.limiter = SlidingWindowLimiter(clock)
        self.toolbox: ToolBox = default_toolbox()
        self.max_body_bytes = self.settings.limits.max_body_bytes
        self.audit = AuditLog(paths.audit_log, clock=clock)

    def close(self) -> None:
        self.audit.close()

    # --- the enforcement steps, in decision order ---------------------------------

    def admit(self, request: Request, call: Call) -> tuple[AccessClaims, Role]:
        """Steps 1 and 3 for every resource call: authenticate, then count the call.

        IMPORTANT: the rate limit counts every authenticated call before authorization,
        so a stream of denied calls is throttled like any other and cannot flood the
        audit log.
        """
        claims = self.authenticate(request, call)
        role = self.policy.roles.get(claims.role)
        if role is None:
            raise PermissionDeniedError(f"role {claims.role} is not in the live policy")
        self.limiter.hit(claims.agent_id, role.limits.requests_per_minute)
        return claims, role

    def authenticate(self, request: Request, call: Call) -> AccessClaims:
        """Step 1: a valid access token for an agent that is still active in its role."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("no bearer token")
        claims = self.verifier.verify(token.strip())
        call.agent_id, call.role = claims.agent_id, claims.role
        call.meta["jti"] = claims.jti
        # IMPORTANT: the registry is consulted on every call, so disabling an agent or
        # changing its role takes effect at once, not when its tokens expire.
        if self.registry.active(claims.agent_id).role != claims.role:
            raise AuthenticationError("the agent's registered role changed since issuance")
        return claims

    def authorize(self, call: Call, claims: AccessClaims, resource: Resource) -> None:
        """Step 2: the PDP must allow this resource for this token and role."""
        call.resource = resource.scope
        decision = decide(
            self.policy,
            DecisionRequest(
                agent_id=claims.agent_id,
                role=claims.role,
                resource=resource,
                token_scope=claims.scope,
            ),
        )
        call.meta["rule"] = decision.rule
        call.reason = decision.reason
        if not decision.allowed:
            shown = resource.name if RESOURCE_NAME.fullmatch(resource.name) else "requested"
            raise PermissionDeniedError(
                decision.reason,
                message=f"{resource.kind} '{shown}' is not allowed for this agent's role",
            )

    @staticmethod
    def allowed_for(claims: AccessClaims, role: Role, kind: str) -> list[str]:
        """Names of ``kind`` ("model" or "tool") this token may use under the live role."""
        names = role.models if kind == "model" else role.tools
        return [n for n in names if f"{kind}:{n}" in claims.scope]
