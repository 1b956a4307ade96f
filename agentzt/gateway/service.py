"""The gateway's enforcement state, built once at start-up.

Everything the hot path needs (keys, policy, compiled schemas, the audit writer) is
loaded here, so a request does lookups and checks only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from agentzt.audit import Draft
from agentzt.config import GatewaySettings, Paths, load_gateway_settings
from agentzt.errors import AuthenticationError, PermissionDeniedError, RevokedTokenError
from agentzt.gateway.audit_trail import open_audit_trail
from agentzt.gateway.binding import SenderChecks
from agentzt.gateway.call import Call
from agentzt.gateway.guard import Guard
from agentzt.gateway.ratelimit import SlidingWindowLimiter, StreamSlots
from agentzt.gateway.upstream import Upstream, create_upstream
from agentzt.identity import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    AssertionVerifier,
    ElevationIssuer,
    ElevationVerifier,
    Grant,
    GrantUses,
    Ledger,
    OperatorCredential,
    ProofVerifier,
    Registry,
    ReplayCache,
    VerifyKey,
    load_or_create_signing_key,
)
from agentzt.identity.elevation import new_epoch
from agentzt.identity.registry import AgentRecord
from agentzt.identity.tokens import CLOCK_SKEW_SECONDS
from agentzt.policy import Decision, DecisionRequest, Policy, Resource, decide, load_policy
from agentzt.policy.abac import check_hours, check_risk
from agentzt.policy.load import RESOURCE_NAME
from agentzt.policy.model import Role
from agentzt.tools import ToolBox, default_toolbox

log = logging.getLogger("agentzt.gateway")
Clock = Callable[[], float]
ELEVATION_HEADER = "x-agentzt-elevation"


class Gateway:
    """The policy enforcement point: authenticates, asks the PDP, limits, audits."""

    def __init__(
        self,
        paths: Paths,
        *,
        public_url: str,
        settings: GatewaySettings | None = None,
        clock: Clock = time.time,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.settings = settings or load_gateway_settings(paths.gateway_toml)
        self.issuer = (self.settings.issuer or public_url).rstrip("/")
        self.token_endpoint = f"{self.issuer}/v1/token"
        self.clock = clock
        self.mtls = self.settings.tls.mtls
        # Built first: a configuration error must stop start-up before any file is written.
        self.guard = Guard(self.settings.guardrails, env, source=str(paths.gateway_toml))
        self.upstream: Upstream = create_upstream(
            self.settings.upstream, env, source=str(paths.gateway_toml)
        )
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
        self.replay = ReplayCache(clock, journal=paths.replay_journal)
        self.ledger = Ledger(paths.token_ledger)
        self.operator = OperatorCredential.load_or_create(paths.operator_token)
        self.senders = SenderChecks(
            issuer=self.issuer,
            token_endpoint=self.token_endpoint,
            mtls=self.mtls,
            dpop=tokens.dpop,
            proofs=ProofVerifier(
                replay=self.replay,
                clock=clock,
                max_age=tokens.dpop_proof_max_age_seconds,
                leeway=CLOCK_SKEW_SECONDS,
            ),
        )
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
        epoch = new_epoch()
        self.elevations = ElevationIssuer(signing_key, issuer=self.issuer, clock=clock, epoch=epoch)
        self.grants = ElevationVerifier(
            self.public_key, issuer=self.issuer, clock=clock, epoch=epoch
        )
        self.grant_uses = GrantUses(clock)
        self.limiter = SlidingWindowLimiter(clock)
        # Its own table, so keys from unauthenticated addresses never crowd out the
        # agents' call counts.
        self.oauth_limiter = SlidingWindowLimiter(clock)
        self.stream_slots = StreamSlots(self.settings.limits.max_concurrent_streams)
        self.toolbox: ToolBox = default_toolbox()
        self.limits = self.settings.limits
        self.max_body_bytes = self.limits.max_body_bytes
        self.audit, self.correlate = open_audit_trail(paths, self.settings.audit, clock)

    async def aclose(self) -> None:
        await self.guard.aclose()
        await self.upstream.aclose()
        await self.audit.aclose()
        self.ledger.close()
        self.replay.close()

    # --- the audit trail ---------------------------------------------------------

    def draft(
        self,
        call: Call,
        action: str,
        decision: str,
        reason: str,
        status: int,
        meta: Mapping[str, Any],
    ) -> Draft:
        return Draft(
            request_id=call.request_id,
            agent_id=call.agent_id,
            role=call.role,
            action=action,
            resource=call.resource,
            decision=decision,
            reason=reason,
            status=status,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            meta=meta,
        )

    def _noted(self, call: Call, status: int) -> list[Draft]:
        drafts = [
            self.draft(call, n.action, n.decision, n.reason, status, n.meta) for n in call.notes
        ]
        call.notes.clear()
        return drafts

    async def record_decision(self, call: Call) -> None:
        """Audit before acting: the allow decision (and the notes taken on the way) is
        written, as durably as ``[audit] fsync`` says, before the upstream call, the tool
        run or the issuance it allows. Raises ``AuditWriteError`` (503) if it cannot be,
        and then nothing happens.

        Its action is the route's with ``.authorized`` appended and its status is 0 (no
        answer yet); the route's own event follows with the outcome.
        """
        drafts = self._noted(call, 0)
        drafts.append(
            self.draft(call, f"{call.action}.authorized", "allow", call.reason, 0, dict(call.meta))
        )
        await self.audit.record(*drafts)

    async def record_outcome(self, call: Call, action: str, decision: str, status: int) -> None:
        """The notes not yet written and the request's own event; ``AuditWriteError`` if
        they cannot be written."""
        drafts = self._noted(call, status)
        drafts.append(self.draft(call, action, decision, call.reason, status, call.meta))
        await self.audit.record(*drafts)

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
        """Step 1: a valid, unrevoked access token, presented as it is bound, for an agent
        that is still active in its role."""
        headers = request.headers.getlist("authorization")
        scheme, _, token = (headers[0] if len(headers) == 1 else "").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in ("bearer", "dpop") or not token:
            raise AuthenticationError("no access token (Authorization: DPoP or Bearer)")
        claims, record = self.live(token, call)
        self.senders.check(request, call, scheme, token, claims, record)
        return claims

    def live(self, token: str, call: Call | None = None) -> tuple[AccessClaims, AgentRecord]:
        """The claims of ``token`` and its agent's record, if the token is live: it
        verifies, the ledger holds it unrevoked, its agent is still active in the token's
        role, and the key and certificate it is bound to are still the agent's registered
        ones. Everything but the checks of the request presenting it, so introspection
        gives the same answer a call would get.
        """
        claims = self.verifier.verify(token)
        if call is not None:
            call.agent_id, call.role = claims.agent_id, claims.role
            call.meta["jti"] = claims.jti
            # The token itself is a credential; its keyed hash lets an operator holding
            # a leaked token find its calls (`agentzt audit hash`).
            call.meta["token_hmac"] = self.correlate(token)
            if claims.task is not None:
                call.meta["task"] = claims.task
        # IMPORTANT: the ledger row is read on every call (the verified claims are
        # cached, their revocation is not), so a revocation takes effect at once. A token
        # the ledger never recorded is refused too: the ledger is the list of what is live.
        known, revoked = self.ledger.revocation(claims.jti)
        if not known:
            raise RevokedTokenError("token is not in the issuance ledger")
        if revoked is not None:
            raise RevokedTokenError(f"token revoked: {revoked}")
        # IMPORTANT: the registry is consulted on every call, so disabling an agent,
        # changing its role, re-enrolling its key or renewing its certificate takes
        # effect at once, not when its tokens expire.
        record = self.registry.active(claims.agent_id)
        if record.role != claims.role:
            raise AuthenticationError("the agent's registered role changed since issuance")
        if claims.jkt is not None and claims.jkt != record.public_key.kid:
            raise AuthenticationError("the token is bound to a key that is no longer registered")
        if claims.x5t is not None and claims.x5t != record.certificate:
            raise AuthenticationError(
                "the token is bound to a certificate that is not the agent's registered one",
                message="channel binding mismatch: the token is bound to a certificate that "
                "is not the agent's registered one",
            )
        return claims, record

    def authorize(
        self, request: Request, call: Call, claims: AccessClaims, role: Role, resource: Resource
    ) -> Grant | None:
        """Step 2: the PDP must allow the resource, or a valid JIT grant must cover it.

        Returns the grant when the call goes through one (to be used in ``use_grant``).
        """
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
        if decision.allowed:
            return None
        presented = request.headers.getlist(ELEVATION_HEADER)
        if not presented:
            shown = resource.name if RESOURCE_NAME.fullmatch(resource.name) else "requested"
            raise PermissionDeniedError(
                decision.reason,
                message=f"{resource.kind} '{shown}' is not allowed for this agent's role",
            )
        return self._check_grant(presented, call, claims, role, resource)

    def _check_grant(
        self,
        presented: list[str],
        call: Call,
        claims: AccessClaims,
        role: Role,
        resource: Resource,
    ) -> Grant:
        def refuse(reason: str) -> PermissionDeniedError:
            return PermissionDeniedError(
                f"invalid elevation grant: {reason}", message=f"invalid elevation grant: {reason}"
            )

        if len(presented) != 1:
            raise refuse("more than one grant presented")
        try:
            grant = self.grants.verify(presented[0].strip())
        except AuthenticationError as exc:
            raise PermissionDeniedError(
                f"invalid elevation grant: {exc.detail}", message="invalid elevation grant"
            ) from exc
        call.meta["grant"] = {"jti": grant.jti, "exp": grant.exp}
        if grant.agent_id != claims.agent_id:
            raise refuse("issued to another agent")
        if grant.scope != resource.scope:
            raise refuse("issued for another resource")
        # A grant asked for under a task dies with it: only that task's token (revoked
        # when the task ends) can present it.
        if grant.task != claims.task:
            raise refuse("issued for another task")
        # The live policy decides, so removing a resource from a role's jit list (or
        # shortening its TTL) also retires grants already handed out.
        if resource.name not in role.jit.elevatable(resource.kind):
            raise refuse(f"{resource.scope} is not elevatable for role {role.name}")
        if grant.exp - grant.iat > role.jit.max_ttl_seconds:
            raise refuse("lifetime over the role's max_ttl_seconds")
        if self.grant_uses.used(grant.jti) >= role.jit.max_uses:
            raise refuse("used up")
        call.meta["rule"] = f"roles.{role.name}.jit"
        call.reason = f"{resource.scope} allowed by JIT grant {grant.jti}"
        return grant

    def use_grant(self, call: Call, grant: Grant | None, role: Role) -> None:
        """Count one use of the grant right before the resource is used (step 7)."""
        if grant is None:
            return
        use = self.grant_uses.consume(grant, max_uses=role.jit.max_uses)
        call.meta.update(via="jit", grant={"jti": grant.jti, "use": use, "of": role.jit.max_uses})

    def check_hours(self, call: Call, role: Role) -> None:
        """Step 6, hours: operating hours are checked at call time with the gateway clock."""
        self._enforce(call, check_hours(role, self.clock()), "outside this role's operating hours")

    def check_risk(self, call: Call, role: Role, risk: str | None) -> None:
        """Step 6, risk: the guardrail's risk level against the role's limit."""
        message = (
            "request risk is above this role's limit"
            if risk is not None
            else "request risk is unknown (guardrail unavailable) and this role requires it"
        )
        self._enforce(call, check_risk(role, risk), message)

    @staticmethod
    def _enforce(call: Call, decision: Decision, message: str) -> None:
        if not decision.allowed:
            call.meta["abac"] = decision.rule
            raise PermissionDeniedError(decision.reason, message=message)

    @staticmethod
    def allowed_for(claims: AccessClaims, role: Role, kind: str) -> list[str]:
        """Names of ``kind`` ("model" or "tool") this token may use under the live role."""
        names = role.models if kind == "model" else role.tools
        return [n for n in names if f"{kind}:{n}" in claims.scope]
