"""Step 8 for streamed answers: the output guardrail applied event by event.

- Text (and thinking) deltas go through a ``StreamRedactor``: what may still be the start
  of a secret waits for the next delta, everything else is released at once.
- A tool_use block's ``input_json_delta`` pieces are held until the block stops, then the
  whole input is redacted as JSON and released as one delta: the agent never sees an
  argument before it has been checked.
- Every other event is redacted as JSON data and relayed in order.
- The outcome (usage, redactions, how the stream ended) is audited before
  ``message_stop`` is sent; if that write fails the agent gets an ``error`` event instead,
  so every stream an agent saw complete is in the log.
- An upstream failure midway ends the stream with an SSE ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agentzt import sse
from agentzt.errors import AgentztError, AuditWriteError
from agentzt.guardrails.secrets import Redactor
from agentzt.guardrails.stream_redact import StreamRedactor
from agentzt.sse import error_frame

log = logging.getLogger("agentzt.gateway")
Event = tuple[str, dict[str, Any]]
# Called once with (outcome, meta) when the stream ends: hands the outcome event to the
# audit writer; the future fails with AuditWriteError if it cannot be written.
Finish = Callable[[str, dict[str, Any]], "asyncio.Future[None] | Future[Any]"]
TEXT_FIELDS = {"text_delta": "text", "thinking_delta": "thinking"}


@dataclass
class _Block:
    kind: str
    text: StreamRedactor | None = None
    json_parts: list[str] = field(default_factory=list)


class StreamGuard:
    """Turns upstream events into the SSE bytes the agent may see."""

    def __init__(self, redactor: Redactor | None, finish: Finish) -> None:
        self._redactor = redactor
        self._finish = finish
        self._blocks: dict[int, _Block] = {}
        self.counts: Counter[str] = Counter()
        self.usage: dict[str, int] = {}
        self.finished = False

    async def end(self, outcome: str) -> None:
        """Audit how the stream ended, once. Raises AuditWriteError if it cannot."""
        if self.finished:
            return
        self.finished = True
        await asyncio.wrap_future(self._finish(outcome, self._meta()))

    def abandon(self, outcome: str) -> None:
        """``end`` for a stream that is already over for the agent: the event is handed
        over without waiting, and a failed write is logged, since there is nobody left to
        refuse."""
        if self.finished:
            return
        self.finished = True

        def report(written: asyncio.Future[None] | Future[Any]) -> None:
            error = None if written.cancelled() else written.exception()
            if isinstance(error, AuditWriteError):
                log.error("audit write failed for a stream that ended %s: %s", outcome, error)

        self._finish(outcome, self._meta()).add_done_callback(report)

    async def frames(self, events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
        try:
            async for name, data in events:
                if name == "message_stop":
                    try:
                        await self.end("completed")
                    except AuditWriteError as exc:
                        log.error("audit write failed at the end of a stream: %s", exc.detail)
                        yield error_frame("api_error", exc.message)
                        return
                    yield sse.encode(name, data)
                    return
                for frame in self._handle(name, data):
                    yield frame
                if name == "error":
                    # The upstream ended the stream with its own error event.
                    self.abandon("upstream_error")
                    return
            self.abandon("upstream_ended_early")
            yield error_frame("api_error", "the upstream stream ended before message_stop")
        except AgentztError as exc:
            log.warning("upstream stream failed: %s", exc.detail)
            self.abandon("upstream_error")
            yield error_frame(exc.error_type, exc.message)
        finally:
            # Whatever else stopped the stream: the agent went away.
            self.abandon("agent_disconnected")

    def _meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"usage": dict(self.usage)}
        if self.counts:
            meta["redactions"] = dict(sorted(self.counts.items()))
        return meta

    def _clean(self, value: dict[str, Any]) -> dict[str, Any]:
        if self._redactor is None:
            return value
        clean, counts = self._redactor.redact(value)
        self.counts.update(counts)
        assert isinstance(clean, dict)
        return clean

    def _handle(self, name: str, data: dict[str, Any]) -> list[bytes]:
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self._count_usage(data["message"].get("usage"))
        elif kind == "message_delta":
            self._count_usage(data.get("usage"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            block_kind = block.get("type") if isinstance(block, dict) else None
            self._blocks[_index(data)] = _Block(
                kind=str(block_kind),
                text=(
                    StreamRedactor(self._redactor, self.counts)
                    if self._redactor is not None
                    else None
                ),
            )
        elif kind == "content_block_delta":
            return self._delta(name, data)
        elif kind == "content_block_stop":
            return [*self._close_block(data), sse.encode(name, data)]
        return [sse.encode(name, self._clean(data))]

    def _delta(self, name: str, data: dict[str, Any]) -> list[bytes]:
        delta = data.get("delta")
        block = self._blocks.get(_index(data))
        if not isinstance(delta, dict) or block is None:
            return [sse.encode(name, self._clean(data))]
        delta_kind = delta.get("type")
        if delta_kind == "input_json_delta" and self._redactor is not None:
            block.json_parts.append(str(delta.get("partial_json", "")))
            return []
        text_field = TEXT_FIELDS.get(str(delta_kind))
        if text_field is not None and block.text is not None:
            released = block.text.feed(str(delta.get(text_field, "")))
            if not released:
                return []
            return [sse.encode(name, {**data, "delta": {**delta, text_field: released}})]
        return [sse.encode(name, self._clean(data))]

    def _close_block(self, data: dict[str, Any]) -> list[bytes]:
        """What a block still held, released just before its content_block_stop."""
        index = _index(data)
        block = self._blocks.pop(index, None)
        if block is None:
            return []
        frames = []
        if block.text is not None:
            rest = block.text.flush()
            if rest:
                field_name = "thinking" if block.kind == "thinking" else "text"
                delta_type = "thinking_delta" if block.kind == "thinking" else "text_delta"
                frames.append(_delta_frame(index, {"type": delta_type, field_name: rest}))
        if block.json_parts:
            frames.append(_delta_frame(index, self._tool_input(block.json_parts)))
        return frames

    def _tool_input(self, parts: list[str]) -> dict[str, Any]:
        assert self._redactor is not None
        raw = "".join(parts)
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            # IMPORTANT: input cut short (max_tokens) cannot be checked as JSON, and a
            # partial parser would decode escapes text redaction cannot see: fail closed.
            self.counts["unverified"] += 1
            return {"type": "input_json_delta", "partial_json": "{}"}
        clean, counts = self._redactor.redact(parsed)
        self.counts.update(counts)
        return {"type": "input_json_delta", "partial_json": json.dumps(clean, ensure_ascii=False)}

    def _count_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool):
                # message_delta carries the running total of output tokens.
                self.usage[key] = value


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else -1


def _delta_frame(index: int, delta: dict[str, Any]) -> bytes:
    return sse.encode(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )
