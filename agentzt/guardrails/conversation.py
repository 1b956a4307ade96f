"""The text a guardrail must read: every turn of a conversation, not just the last one.

Instructions smuggled in through a tool result, a text document, a fetched page quoted
in an assistant turn, a system prompt or a tool description reach the model all the
same, so all of them are collected. Only identifiers and binary payloads are skipped.
The blocks of one message are joined, because the model reads them as one text: an
instruction split across two blocks must not slip past as two harmless halves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# Keys whose string values are identifiers or enums, never prose a model reads. Only a
# string is skipped: an object under such a key (a schema property named "id") is read.
_SKIPPED_KEYS = frozenset({"type", "id", "tool_use_id", "media_type", "signature"})
# Objects the model or the agent wrote freely, where a key can carry a sentence.
_FREE_FORM_KEYS = frozenset({"input", "input_schema"})


@dataclass(frozen=True, slots=True)
class Turn:
    """One piece of text and who it comes from: system, user, assistant or tool."""

    role: str
    text: str


def strings_in(value: object) -> Iterator[str]:
    """Every non-empty string of JSON-like ``value``, walked without recursion.

    ``data`` is skipped only in a base64 source (an image or a PDF): a plain-text
    document carries its prose there. Keys are read inside a ``tool_use`` block's
    ``input`` and a tool's ``input_schema``, where whoever wrote the object chose them;
    elsewhere keys are the API's own field names.
    """
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        item, free_form = stack.pop()
        if isinstance(item, str):
            if item.strip():
                yield item
        elif isinstance(item, Mapping):
            binary = item.get("type") == "base64"
            for key, child in reversed(list(item.items())):
                skipped = key in _SKIPPED_KEYS or (binary and key == "data")
                if not free_form and skipped and isinstance(child, str):
                    continue
                stack.append((child, free_form or key in _FREE_FORM_KEYS))
                if free_form:
                    stack.append((key, True))
        elif isinstance(item, list | tuple):
            stack.extend((child, free_form) for child in reversed(item))


def _joined(value: object) -> str:
    return "\n".join(strings_in(value))


def message_turns(body: Mapping[str, Any]) -> list[Turn]:
    """The turns of an Anthropic Messages request, in order, tool results marked as such."""
    turns: list[Turn] = []
    if system := _joined(body.get("system")):
        turns.append(Turn("system", system))
    for tool in body.get("tools") or ():
        # A poisoned tool description is an instruction to the model too.
        if text := _joined(tool):
            turns.append(Turn("system", text))
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        role = str(message.get("role"))
        content = message.get("content")
        blocks = [content] if isinstance(content, str) else content
        own: list[object] = []
        for block in blocks if isinstance(blocks, list) else ():
            if isinstance(block, Mapping) and block.get("type") == "tool_result":
                # Tool output is third-party text: its own turn, scored as such.
                if text := _joined(block.get("content")):
                    turns.append(Turn("tool", text))
            else:
                own.append(block)
        if text := _joined(own):
            turns.append(Turn(role, text))
    return turns


def argument_turns(arguments: Mapping[str, Any]) -> list[Turn]:
    """What an agent sends a tool is screened as the agent's own words, as one text."""
    text = _joined(arguments)
    return [Turn("user", text)] if text else []


def answer_text(message: Mapping[str, Any]) -> str:
    """The text of a model's answer: its text blocks and any tool input it wrote."""
    return _joined(message.get("content"))
