"""What a guardrail says about a piece of text: a risk level and the categories seen."""

from __future__ import annotations

from dataclasses import dataclass

from agentzt.policy.model import RISK_LEVELS, risk_rank

__all__ = ["RISK_LEVELS", "Verdict", "risk_rank"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A provider's reading of the input or output it was shown.

    ``categories`` are short lowercase labels such as ``instruction_override``;
    ``rules`` name what matched (rule ids, never the matched text), for the audit log.
    """

    risk: str
    categories: tuple[str, ...] = ()
    provider: str = "local"
    rules: tuple[str, ...] = ()
    # A safe answer the provider proposes in place of a flagged one (OpenGuardrails).
    suggested_answer: str | None = None

    @property
    def rank(self) -> int:
        return risk_rank(self.risk)

    def reaches(self, level: str) -> bool:
        """True when this verdict's risk is at or above ``level``."""
        return self.rank >= risk_rank(level)
