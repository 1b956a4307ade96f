"""Reading and validating ``policy.toml``."""

from __future__ import annotations

import re
from pathlib import Path

from agentzt.config import Table, read_toml
from agentzt.policy.model import RISK_LEVELS, Abac, HourWindow, Jit, Limits, Policy, Role

ROLE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
RESOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,126}")


def load_policy(path: Path) -> Policy:
    """Load roles from ``path``. A missing file means no roles: every call is denied."""
    root = Table(read_toml(path), file=path)
    roles_t = root.table("roles")
    roles: dict[str, Role] = {}
    for name in roles_t.names():
        if not ROLE_NAME.fullmatch(name):
            raise roles_t.fail(name, "is not a valid role name (lowercase letters, digits, '-')")
        roles[name] = _role(name, roles_t.table(name))
    roles_t.finish()
    root.finish()
    return Policy(roles=roles)


def _names(table: Table, key: str) -> tuple[str, ...]:
    names = table.strings(key)
    for name in names:
        if not RESOURCE_NAME.fullmatch(name):
            raise table.fail(key, f"contains {name!r}, which is not a valid model or tool name")
    return names


def _role(name: str, t: Table) -> Role:
    description = t.string("description", "")
    models = _names(t, "models")
    tools = _names(t, "tools")

    lim = t.table("limits")
    limits = Limits(
        requests_per_minute=lim.integer("requests_per_minute", 60, low=1, high=1_000_000),
        max_output_tokens=lim.integer("max_output_tokens", 4096, low=1, high=1_000_000),
    )
    lim.finish()

    ab = t.table("abac")
    window = None
    if ab.has("allowed_hours_utc"):
        hours = ab.table("allowed_hours_utc")
        window = HourWindow(
            start=hours.integer("start", 0, low=0, high=23),
            end=hours.integer("end", 24, low=1, high=24),
        )
        hours.finish()
        if window.start == window.end:
            raise hours.fail("end", "equals start; the window would be empty")
    risk = ab.optional_string("deny_above_risk_level")
    if risk is not None and risk not in RISK_LEVELS:
        raise ab.fail("deny_above_risk_level", f"must be one of {', '.join(RISK_LEVELS)}")
    ab.finish()

    jt = t.table("jit")
    jit = Jit(
        elevatable_tools=frozenset(_names(jt, "elevatable_tools")),
        elevatable_models=frozenset(_names(jt, "elevatable_models")),
        max_ttl_seconds=jt.integer("max_ttl_seconds", 300, low=1, high=86_400),
        max_uses=jt.integer("max_uses", 1, low=1, high=1000),
    )
    jt.finish()
    t.finish()

    standing = set(models) | set(tools)
    overlap = standing & (jit.elevatable_tools | jit.elevatable_models)
    if overlap:
        raise jt.fail(
            "elevatable_tools" if overlap & jit.elevatable_tools else "elevatable_models",
            f"lists {sorted(overlap)[0]!r}, which is already in standing scope; keep one",
        )
    return Role(
        name=name,
        description=description,
        models=models,
        tools=tools,
        limits=limits,
        abac=Abac(allowed_hours_utc=window, deny_above_risk_level=risk),
        jit=jit,
    )
