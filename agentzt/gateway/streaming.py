"""``POST /v1/messages`` with ``stream: true``: open the upstream stream, then relay it
through the stream guard as ``text/event-stream``.

The decision event is written by the app when this returns (the call was allowed and
the stream opened); the stream's outcome follows as a ``model.response`` event with the
same request id. A refusal before the first byte (an upstream 4xx/5xx, a refused
connection) is an ordinary error answer instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agentzt.gateway.call import Call
from agentzt.gateway.service import Gateway
from agentzt.gateway.stream_guard import StreamGuard

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class UpstreamStream(StreamingResponse):
    """The relayed stream. However it ends, the upstream stream is closed: when the agent
    disconnects while the response waits to send, and when the response is never sent
    at all (``discard``, e.g. because its decision could not be audited)."""

    def __init__(
        self,
        iterator: AsyncIterator[bytes],
        headers: dict[str, str],
        close: Callable[[], Awaitable[None]],
        discard: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(iterator, media_type="text/event-stream", headers=headers)
        self._iterator = iterator
        self._close = close
        self._discard = discard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._iterator.aclose()  # type: ignore[attr-defined]
                await self._close()

    async def discard(self) -> None:
        """Never sent (its decision could not be audited): close the upstream, record
        nothing more."""
        with anyio.CancelScope(shield=True):
            await self._discard()


async def open_stream(gw: Gateway, request: Request, call: Call, body: dict[str, Any]) -> Response:
    release = gw.stream_slots.take(str(call.agent_id))
    stack = contextlib.AsyncExitStack()
    try:
        events = await stack.enter_async_context(gw.upstream.stream(body, request.headers))
    except BaseException:
        release()
        raise
    # Registered last, so it runs first: the slot is free before the upstream is closed.
    stack.callback(release)

    def finish(outcome: str, meta: dict[str, Any]) -> asyncio.Future[None]:
        decision = "allow" if outcome == "completed" else "deny"
        reason = f"stream {outcome.replace('_', ' ')}"
        meta = {"outcome": outcome, **meta}
        return gw.audit.submit(gw.draft(call, "model.response", decision, reason, 200, meta))

    redactor = gw.guard.redactor if gw.guard.output.redact_secrets else None
    guard = StreamGuard(redactor, finish)

    async def relay() -> AsyncIterator[bytes]:
        frames = guard.frames(events)
        try:
            async for frame in frames:
                yield frame
        finally:
            with anyio.CancelScope(shield=True):
                await frames.aclose()  # type: ignore[attr-defined]
                await stack.aclose()

    async def close() -> None:
        # A stream that never started (the agent left first) still gets its outcome
        # recorded, and its upstream closed.
        guard.abandon("agent_disconnected")
        await stack.aclose()

    call.meta["stream"] = True
    return UpstreamStream(relay(), SSE_HEADERS, close=close, discard=stack.aclose)
