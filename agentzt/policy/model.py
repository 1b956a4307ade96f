"""The policy document: roles with their allow-lists, limits, ABAC and JIT sections."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

RISK_LEVELS = ("no_risk", "low_risk", "medium_risk", "high_risk")
_RISK_RANK = {level: rank for rank, level in enumerate(RISK_LEVELS)}


def risk_rank(level: str) -> int:
    """0 for ``no_risk`` up to 3 for ``high_risk``; an unknown level ranks highest (fail closed)."""
    return _RISK_RANK.get(level, len(RISK_LEVELS) - 1)


ResourceKind = Literal["model", "tool"]


@dataclass(frozen=True, slots=True)
class Resource:
    kind: ResourceKind
    name: str

    @property
    def scope(self) -> str:
        """The scope token for this resource, e.g. ``tool:kb.search``."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int = 60
    max_output_tokens: int = 4096


@dataclass(frozen=True, slots=True)
class HourWindow:
    """UTC hours [start, end); start > end wraps past midnight (22 → 6)."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Abac:
    allowed_hours_utc: HourWindow | None = None
    deny_above_risk_level: str | None = None


@dataclass(frozen=True, slots=True)
class Jit:
    elevatable_tools: frozenset[str] = frozenset()
    elevatable_models: frozenset[str] = frozenset()
    max_ttl_seconds: int = 300
    max_uses: int = 1

    def elevatable(self, kind: str) -> frozenset[str]:
        """The names of ``kind`` ("tool" or "model") a grant may be issued for."""
        return self.elevatable_tools if kind == "tool" else self.elevatable_models


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str
    models: tuple[str, ...]
    tools: tuple[str, ...]
    limits: Limits = field(default_factory=Limits)
    abac: Abac = field(default_factory=Abac)
    jit: Jit = field(default_factory=Jit)
    # Derived once so the hot path is one set lookup.
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        scopes = [f"model:{m}" for m in self.models] + [f"tool:{t}" for t in self.tools]
        object.__setattr__(self, "allowed", frozenset(scopes))

    @property
    def scope(self) -> list[str]:
        """The standing scope an access token for this role carries."""
        return [f"model:{m}" for m in self.models] + [f"tool:{t}" for t in self.tools]


@dataclass(frozen=True)
class Policy:
    roles: Mapping[str, Role]
