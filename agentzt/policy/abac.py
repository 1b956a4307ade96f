"""Attribute-based checks on call-time context: the hour, and the guardrail's risk level.

Evaluated on every call, not when the token was issued, so a token obtained at 21:59
does not carry a 22:00 cut-off past it.
"""

from __future__ import annotations

import time

from agentzt.policy.decide import Decision
from agentzt.policy.model import HourWindow, Role, risk_rank


def in_window(window: HourWindow, hour: int) -> bool:
    """True when ``hour`` (0-23, UTC) is in [start, end); start > end wraps midnight."""
    if window.start < window.end:
        return window.start <= hour < window.end
    return hour >= window.start or hour < window.end


def check_hours(role: Role, now: float) -> Decision:
    window = role.abac.allowed_hours_utc
    if window is None:
        return Decision("allow", "no operating-hours rule", "abac.none")
    hour = time.gmtime(now).tm_hour
    span = f"{window.start:02d}:00-{window.end:02d}:00 UTC"
    if in_window(window, hour):
        return Decision("allow", f"within operating hours {span}", f"roles.{role.name}.abac")
    return Decision(
        "deny",
        f"outside operating hours {span} for role {role.name} (hour {hour:02d} UTC)",
        f"roles.{role.name}.abac.allowed_hours_utc",
    )


def check_risk(role: Role, risk: str | None) -> Decision:
    """Deny when the guardrail's risk reaches the role's ``deny_above_risk_level``.

    IMPORTANT: ``risk`` None means no verdict was obtained (the provider failed open);
    a role that conditions on risk is then denied, because unknown is not low.
    """
    limit = role.abac.deny_above_risk_level
    if limit is None:
        return Decision("allow", "no risk rule", "abac.none")
    rule = f"roles.{role.name}.abac.deny_above_risk_level"
    if risk is None:
        return Decision("deny", f"guardrail risk unknown; role {role.name} requires one", rule)
    if risk_rank(risk) >= risk_rank(limit):
        return Decision("deny", f"guardrail risk {risk} reaches the role's limit {limit}", rule)
    return Decision("allow", f"guardrail risk {risk} is below {limit}", rule)
