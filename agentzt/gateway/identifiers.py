"""Identifiers a caller chooses (request ids, task ids) go into the audit log as they
are, since they are what events are found by. One shaped like a credential (an API key,
a token) is therefore never taken: the log must hold no secret a caller sent."""

from __future__ import annotations

import re

from agentzt.guardrails.secrets import Redactor

_REDACTOR = Redactor()
# The ids agentzt and common clients make (req_<hex>, UUIDs): checked without the
# redactor, since every call carries one.
_KNOWN_SAFE = re.compile(r"(?:req_)?[0-9a-f]{32}|[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}")


def credential_shaped(value: str) -> bool:
    """Whether ``value`` holds something the secret redactor recognises as a credential."""
    if _KNOWN_SAFE.fullmatch(value):
        return False
    return bool(_REDACTOR.redact(value)[1])
