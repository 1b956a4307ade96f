"""The record of one request, filled in as it goes and written to the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Note:
    """A decision taken along the way (a guardrail flag or block), audited before the
    request's own event and under the same request id."""

    action: str
    decision: str
    reason: str
    meta: dict[str, Any]


@dataclass
class Call:
    request_id: str
    action: str
    started: float
    agent_id: str | None = None
    role: str | None = None
    resource: str | None = None
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)

    def note(self, action: str, decision: str, reason: str, **meta: Any) -> None:
        self.notes.append(Note(action, decision, reason, meta))
