"""The text a guardrail must read: every turn of a conversation, not just the last one.

Instructions smuggled in through a tool result, a fetched page quoted in an assistant
turn, a system prompt or a tool description reach the model all the same, so all of
them are collected. Only fields that are identifiers or binary payloads are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Keys whose values are identifiers, enums or binary data, never prose a model reads.
_SKIPPED_KEYS = frozenset(
    {"type", "id", "tool_use_id", "media_type", "signature", "cache_control", "data"}
)


@dataclass(frozen=True, slots=True)
class Turn:
    """One piece of text and who it comes from: system, user, assistant or tool."""

    role: str
    text: str


def strings_in(value: object) -> Iterator[str]:
    """Every non-empty string leaf of JSON-like ``value``, walked without recursion."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item.strip():
                yield item
        elif isinstance(item, Mapping):
            stack.extend(v for k, v in reversed(list(item.items())) if k not in _SKIPPED_KEYS)
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))


def message_turns(body: Mapping[str, Any]) -> list[Turn]:
    """The turns of an Anthropic Messages request, in order, tool results marked as such."""
    turns = [Turn("system", text) for text in strings_in(body.get("system"))]
    for tool in body.get("tools") or ():
        # A poisoned tool description is an instruction to the model too.
        turns.extend(Turn("system", text) for text in strings_in(tool))
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role"))
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else content
        for block in blocks if isinstance(blocks, list) else ():
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                turns.extend(Turn("tool", text) for text in strings_in(block.get("content")))
            else:
                turns.extend(Turn(role, text) for text in strings_in(block))
    return turns


def argument_turns(arguments: Mapping[str, Any]) -> list[Turn]:
    """What an agent sends a tool is screened as the agent's own words."""
    return [Turn("user", text) for text in strings_in(arguments)]


def answer_text(message: Mapping[str, Any]) -> str:
    """The text of a model's answer: its text blocks and any tool input it wrote."""
    return "\n".join(strings_in(message.get("content")))
