"""Identifiers a caller chooses (request ids, task ids) go into the audit log as they
are, since they are what events are found by. One shaped like a credential (an API key,
a token) is therefore never taken: the log must hold no secret a caller sent."""

from __future__ import annotations

from agentzt.guardrails.secrets import Redactor

_REDACTOR = Redactor()


def credential_shaped(value: str) -> bool:
    """Whether ``value`` holds something the secret redactor recognises as a credential."""
    return bool(_REDACTOR.redact(value)[1])
