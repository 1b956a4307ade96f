"""The policy decision point (PDP): policy documents and a pure ``decide`` over them.

Nothing here does I/O beyond reading the policy file at start-up, and nothing imports an
HTTP framework: the gateway builds a DecisionRequest, enforces the Decision, audits it.
"""

from agentzt.policy.decide import Decision, DecisionRequest, decide
from agentzt.policy.load import load_policy
from agentzt.policy.model import Policy, Resource, Role

__all__ = ["Decision", "DecisionRequest", "Policy", "Resource", "Role", "decide", "load_policy"]
