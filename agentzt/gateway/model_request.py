"""What a Messages API request may ask for through agentzt.

The gateway forwards only what it can read and govern. Fields outside this list, server
tools and MCP servers (which would run with the enterprise key outside the gateway's
tool policy), and content the guardrail cannot read (``url`` and ``file`` sources) are
refused with 400, naming the field.
"""

from __future__ import annotations

from typing import Any

from agentzt.errors import InvalidRequestError

ALLOWED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_k",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
    }
)
# What count_tokens forwards: the request without max_tokens and the sampling settings.
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
# Sources the guardrail reads (text) or that carry their bytes inline (base64).
READABLE_SOURCES = frozenset({"text", "base64", "content"})


def _refuse(reason: str) -> InvalidRequestError:
    return InvalidRequestError(reason, message=reason)


def check_fields(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        # IMPORTANT: the name is the caller's text, so it goes back to the caller only,
        # never into the audit log, which must hold nothing a caller could smuggle in.
        shown = unknown[0][:64]
        raise InvalidRequestError(
            "a top-level field of the body is not accepted through agentzt",
            message=f"field '{shown}' is not accepted through agentzt",
        )
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type", "custom") != "custom":
            raise _refuse("server tools are not accepted through agentzt; define custom tools")
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            _check_sources(content)
    if isinstance(body.get("system"), list):
        _check_sources(body["system"])


def _check_sources(blocks: list[Any]) -> None:
    for block in blocks:
        if not isinstance(block, dict):
            continue
        source = block.get("source")
        kind_of = source.get("type") if isinstance(source, dict) else None
        # Only a string can name a readable source; an object or array here is no less
        # refused (and must not reach the set lookup, which would raise).
        if isinstance(source, dict) and (
            not isinstance(kind_of, str) or kind_of not in READABLE_SOURCES
        ):
            kind = str(source.get("type"))[:32]
            raise InvalidRequestError(
                "a content source type is not accepted: send the content",
                message=f"content source type '{kind}' is not accepted: send the content",
            )
        nested = block.get("content")
        if isinstance(nested, list):
            _check_sources(nested)
