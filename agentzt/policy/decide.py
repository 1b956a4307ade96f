"""The policy decision point: a pure function from a request to a Decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentzt.policy.model import Policy, Resource

Effect = Literal["allow", "deny"]


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    agent_id: str
    role: str
    resource: Resource
    # The scope the access token carries; policy is checked again on top of it.
    token_scope: frozenset[str]


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reason: str
    rule: str

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"


def decide(policy: Policy, request: DecisionRequest) -> Decision:
    """Allow only what both the token's scope and the live role allow; deny otherwise.

    IMPORTANT: deny is the default. A role missing from the live policy, a resource
    outside the token's scope or the role's allow-list, or any error, is a deny.
    """
    try:
        return _decide(policy, request)
    except Exception as exc:  # fail closed: a broken rule must not become an allow
        return Decision("deny", f"policy error: {type(exc).__name__}", "fail-closed")


def _decide(policy: Policy, request: DecisionRequest) -> Decision:
    role = policy.roles.get(request.role)
    if role is None:
        return Decision("deny", f"role {request.role} is not in the live policy", "default-deny")
    scope = request.resource.scope
    if scope not in request.token_scope:
        return Decision("deny", f"{scope} is not in the token's scope", "token-scope")
    if scope not in role.allowed:
        return Decision("deny", f"{scope} is not allowed for role {role.name}", "default-deny")
    return Decision("allow", f"{scope} is allowed for role {role.name}", f"roles.{role.name}")
