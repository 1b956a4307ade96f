"""Server-sent events as the Anthropic Messages API streams them: parsing an upstream's
byte stream into (event, data) pairs, and writing events back out."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from agentzt.errors import UpstreamError

_EVENT_NAME = re.compile(r"[a-z_]{1,64}")
# One event's data may not grow past this (a streamed answer sends small deltas).
MAX_EVENT_BYTES = 1024 * 1024


def error_frame(error_type: str, message: str) -> bytes:
    """The ``error`` event that ends a stream that cannot go on (Anthropic's shape)."""
    return encode("error", {"type": "error", "error": {"type": error_type, "message": message}})


def encode(event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame: ``event: NAME`` and one ``data:`` line of compact JSON."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


async def events(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Parse an SSE byte stream (split anywhere) into (event name, JSON data) pairs.

    Comment lines and events without data are skipped; data that is not a JSON object is
    an UpstreamError, since the gateway will not relay what it cannot inspect.
    """
    buffer = b""
    async for chunk in chunks:
        # CRLF becomes LF; a CR that ends this chunk is joined with its LF next time.
        buffer = (buffer + chunk).replace(b"\r\n", b"\n")
        while True:
            frame, separator, rest = buffer.partition(b"\n\n")
            if not separator:
                break
            buffer = rest
            if len(frame) > MAX_EVENT_BYTES:
                raise UpstreamError("upstream sent an oversized stream event")
            parsed = _parse(frame)
            if parsed is not None:
                yield parsed
        if len(buffer) > MAX_EVENT_BYTES:
            raise UpstreamError("upstream sent an oversized stream event")
    if buffer.strip():
        parsed = _parse(buffer)
        if parsed is not None:
            yield parsed


def _parse(frame: bytes) -> tuple[str, dict[str, Any]] | None:
    name, data = "message", []
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UpstreamError("upstream sent a stream event that is not UTF-8") from exc
    for raw in text.split("\n"):
        if raw.startswith(":"):
            continue
        field, _, value = raw.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            if not _EVENT_NAME.fullmatch(value):
                raise UpstreamError("upstream sent a stream event with a malformed name")
            name = value
        elif field == "data":
            data.append(value)
    if not data:
        return None
    try:
        parsed = json.loads("\n".join(data))
    except ValueError as exc:
        raise UpstreamError("upstream sent a stream event that is not JSON") from exc
    if not isinstance(parsed, dict):
        raise UpstreamError("upstream sent a stream event that is not a JSON object")
    return name, parsed
