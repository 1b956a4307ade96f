"""Steps 5 and 8 of the decision order: the input guardrail and the output guardrail.

The providers say how risky a text is; this module decides what that means for the call
under ``[guardrails]`` (block, flag, fail open or closed, withhold or replace) and writes
it into the Call so the audit log shows it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

from agentzt.config import GuardrailSettings
from agentzt.errors import GuardrailBlockedError, GuardrailUnavailableError
from agentzt.gateway.call import Call
from agentzt.guardrails.conversation import Turn, answer_text
from agentzt.guardrails.local import LocalDetector
from agentzt.guardrails.providers import INLINE_SCAN_CHARS, choose_provider
from agentzt.guardrails.secrets import Redactor
from agentzt.guardrails.spotlight import spotlight
from agentzt.guardrails.verdict import Verdict


def _describe(verdict: Verdict) -> dict[str, Any]:
    return {
        "provider": verdict.provider,
        "risk": verdict.risk,
        "categories": list(verdict.categories),
        "rules": list(verdict.rules),
    }


def _why(stage: str, verdict: Verdict) -> str:
    categories = ", ".join(verdict.categories) or "unspecified"
    return f"{stage} guardrail ({verdict.provider}) rated it {verdict.risk}: {categories}"


class Guard:
    def __init__(
        self, settings: GuardrailSettings, env: Mapping[str, str] = os.environ, *, source: str = ""
    ) -> None:
        self.input = settings.input
        self.output = settings.output
        self.detector = LocalDetector()
        self.provider = choose_provider(
            settings.input.provider, settings.openguardrails, env, self.detector, source=source
        )
        self.redactor = Redactor()

    @property
    def reviews_output(self) -> bool:
        """Whether model answers get the provider's output review (the local one has none)."""
        return self.output.review and self.provider.name != "local"

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def screen(self, call: Call, turns: Sequence[Turn], *, risk_needed: bool) -> str | None:
        """Step 5: score everything the model or tool will read; block or flag per mode.

        Returns the risk level for ABAC, or None when there is no verdict (guardrail off,
        or the provider failed open).
        """
        mode = self.input.mode
        if mode == "off" and not risk_needed:
            return None
        if not turns:
            return "no_risk"
        try:
            verdict = await self.provider.check_input(turns)
        except GuardrailUnavailableError as exc:
            call.meta["guardrail"] = {
                "provider": self.provider.name,
                "error": exc.detail,
                "fail_open": self.input.fail_open,
            }
            if mode != "off" and not self.input.fail_open:
                raise
            if mode != "off":
                call.note(
                    "guardrail.flag",
                    "allow",
                    f"input guardrail unavailable ({exc.detail}); allowed: fail_open = true",
                    stage="input",
                )
            return None
        call.meta["guardrail"] = _describe(verdict)
        if mode != "off" and verdict.reaches(self.input.threshold):
            reason = _why("input", verdict)
            if mode == "block":
                call.note("guardrail.block", "deny", reason, stage="input", **_describe(verdict))
                shown = ", ".join(verdict.categories) or "prompt injection suspected"
                raise GuardrailBlockedError(
                    reason,
                    message=f"request blocked by the input guardrail ({shown}; {verdict.risk})",
                )
            call.note("guardrail.flag", "allow", reason, stage="input", **_describe(verdict))
        return verdict.risk

    async def release_answer(
        self, call: Call, turns: Sequence[Turn], message: dict[str, Any]
    ) -> dict[str, Any]:
        """Step 8 for model answers: the provider's output review, then secret redaction."""
        if self.output.review:
            message = await self._review(call, turns, message)
        released = self.redact(call, message)
        assert isinstance(released, dict)
        return released

    async def _review(
        self, call: Call, turns: Sequence[Turn], message: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            verdict = await self.provider.check_output(turns, answer_text(message))
        except GuardrailUnavailableError as exc:
            call.meta["output_review"] = {"error": exc.detail, "fail_open": self.input.fail_open}
            if not self.input.fail_open:
                raise
            return message
        if verdict is None:
            return message
        call.meta["output_review"] = _describe(verdict)
        if not verdict.reaches(self.input.threshold):
            return message
        reason = _why("output", verdict)
        if self.output.on_flag == "withhold":
            call.note("guardrail.block", "deny", reason, stage="output", **_describe(verdict))
            raise GuardrailBlockedError(
                reason, message="the model's answer was withheld by the output guardrail"
            )
        call.note(
            "guardrail.flag",
            "allow",
            f"{reason}; answer replaced",
            stage="output",
            **_describe(verdict),
        )
        text = verdict.suggested_answer or self.output.replacement
        return {**message, "content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}

    def redact(self, call: Call, value: object) -> object:
        """Replace secrets with typed markers; count them in the audit meta, never store them."""
        if not self.output.redact_secrets:
            return value
        clean, counts = self.redactor.redact(value)
        if counts:
            merged = dict(call.meta.get("redactions", {}))
            for kind, count in counts.items():
                merged[kind] = merged.get(kind, 0) + count
            call.meta["redactions"] = dict(sorted(merged.items()))
        return clean

    async def release_tool_output(
        self, call: Call, tool: str, output: object, untrusted_fields: tuple[str, ...]
    ) -> object:
        """Step 8 for tools: redact, then mark third-party content as data."""
        output = self.redact(call, output)
        if not untrusted_fields or not isinstance(output, dict):
            return output
        texts = [v for k, v in output.items() if k in untrusted_fields and isinstance(v, str)]
        # Evidence for the audit log: what the page would have told a model to do.
        if sum(map(len, texts)) <= INLINE_SCAN_CHARS:
            verdict = self.detector.scan(texts)
        else:
            verdict = await asyncio.to_thread(self.detector.scan, texts)
        call.meta["untrusted_content"] = _describe(verdict)
        if not self.output.spotlight_untrusted:
            return output
        source = f"the tool {tool} (third-party content)"
        return {
            k: spotlight(v, source=source) if k in untrusted_fields and isinstance(v, str) else v
            for k, v in output.items()
        }
