"""Guardrail providers: who reads the conversation and says how risky it is.

``local`` runs the offline detector in-process. ``openguardrails`` asks an OpenGuardrails
API (hosted or self-hosted) over HTTP. Both answer with a Verdict; a provider that cannot
answer raises GuardrailUnavailableError and the caller applies ``fail_open``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Protocol

import httpx

from agentzt.config import OpenGuardrailsSettings
from agentzt.errors import ConfigError, GuardrailUnavailableError
from agentzt.guardrails.conversation import Turn
from agentzt.guardrails.local import LocalDetector
from agentzt.guardrails.verdict import RISK_LEVELS, Verdict

log = logging.getLogger("agentzt.guardrails")
# Past this much text the local scan moves off the event loop, so one huge
# conversation cannot stall every other agent's calls.
INLINE_SCAN_CHARS = 8 * 1024
_LABEL = re.compile(r"[A-Za-z0-9 _.-]{1,64}")
MAX_CATEGORIES = 16


class Provider(Protocol):
    name: str

    async def check_input(self, turns: Sequence[Turn]) -> Verdict: ...

    async def check_output(self, turns: Sequence[Turn], answer: str) -> Verdict | None:
        """Review a model's answer in context; None when the provider has no output review."""
        ...

    async def aclose(self) -> None: ...


class LocalProvider:
    name = "local"

    def __init__(self, detector: LocalDetector) -> None:
        self._detector = detector

    async def check_input(self, turns: Sequence[Turn]) -> Verdict:
        texts = [turn.text for turn in turns]
        if sum(map(len, texts)) <= INLINE_SCAN_CHARS:
            return self._detector.scan(texts)
        return await asyncio.to_thread(self._detector.scan, texts)

    async def check_output(self, turns: Sequence[Turn], answer: str) -> Verdict | None:
        return None

    async def aclose(self) -> None:
        return None


class OpenGuardrailsProvider:
    """The OpenGuardrails ``POST /guardrails`` API, through one pooled httpx client."""

    name = "openguardrails"

    def __init__(self, settings: OpenGuardrailsSettings, api_key: str) -> None:
        self._model = settings.model
        self._client = httpx.AsyncClient(
            base_url=settings.base_url,
            timeout=settings.timeout_seconds,
            headers={"authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,
        )

    async def check_input(self, turns: Sequence[Turn]) -> Verdict:
        return await self._ask(_messages(turns))

    async def check_output(self, turns: Sequence[Turn], answer: str) -> Verdict | None:
        return await self._ask([*_messages(turns), {"role": "assistant", "content": answer}])

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _ask(self, messages: list[dict[str, str]]) -> Verdict:
        try:
            response = await self._client.post(
                "/guardrails", json={"model": self._model, "messages": messages}
            )
        except httpx.TimeoutException as exc:
            raise GuardrailUnavailableError("openguardrails timed out") from exc
        except httpx.HTTPError as exc:
            raise GuardrailUnavailableError(
                f"openguardrails unreachable: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            # The body may quote our request; only the status is logged.
            raise GuardrailUnavailableError(f"openguardrails answered HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError as exc:
            raise GuardrailUnavailableError("openguardrails answered with invalid JSON") from exc
        return verdict_of(payload)


def _messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    # The API knows user and assistant turns. System text, tool descriptions and tool
    # results are content the model reads but the agent's user did not write: they are
    # sent as user turns so the provider scores them as input, not as trusted context.
    return [
        {"role": "assistant" if t.role == "assistant" else "user", "content": t.text} for t in turns
    ]


def verdict_of(payload: object) -> Verdict:
    """Map an OpenGuardrails answer to a Verdict; anything unexpected is an outage."""
    if not isinstance(payload, Mapping):
        raise GuardrailUnavailableError("openguardrails answer is not a JSON object")
    risk = payload.get("overall_risk_level")
    if risk not in RISK_LEVELS:
        raise GuardrailUnavailableError("openguardrails answer has no valid overall_risk_level")
    action = payload.get("suggest_action")
    categories: set[str] = set()
    result = payload.get("result")
    for section in result.values() if isinstance(result, Mapping) else ():
        found = section.get("categories") if isinstance(section, Mapping) else None
        for label in found if isinstance(found, list) else ():
            # Labels reach the audit log and the caller: keep them short and plain.
            if isinstance(label, str) and _LABEL.fullmatch(label):
                categories.add(label)
    answer = payload.get("suggest_answer")
    return Verdict(
        risk=str(risk),
        categories=tuple(sorted(categories)[:MAX_CATEGORIES]),
        provider=OpenGuardrailsProvider.name,
        rules=(f"suggest_action:{action}",) if action in ("pass", "reject", "replace") else (),
        suggested_answer=answer if isinstance(answer, str) and answer else None,
    )


def choose_provider(
    name: str,
    settings: OpenGuardrailsSettings,
    env: Mapping[str, str],
    detector: LocalDetector,
    *,
    source: str = "gateway.toml",
) -> Provider:
    """``auto`` picks OpenGuardrails when its API key is set, else the local detector."""
    key = env.get(settings.api_key_env, "")
    if name == "openguardrails" and not key:
        raise ConfigError(
            f"{source}: key 'guardrails.input.provider' is 'openguardrails' but "
            f"{settings.api_key_env} is not set; export the API key or use 'auto' or 'local'"
        )
    if key and name in ("openguardrails", "auto"):
        return OpenGuardrailsProvider(settings, key)
    return LocalProvider(detector)
