"""The offline ``mock`` upstream: deterministic Anthropic-shaped answers."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, Mapping):
                if isinstance(block.get("text"), str):
                    parts.append(block["text"])
                elif "content" in block:
                    parts.append(_text_of(block["content"]))
        return "\n".join(parts)
    return ""


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A stable stand-in for a tokenizer: about four characters a token."""
    text = _text_of(body.get("system", ""))
    for message in body.get("messages", []):
        if isinstance(message, Mapping):
            text += _text_of(message.get("content"))
    return max(1, len(text) // 4)


def message(body: Mapping[str, Any]) -> dict[str, Any]:
    """A reply to a Messages API request. It never echoes the prompt back."""
    messages = body.get("messages", [])
    last = _text_of(messages[-1].get("content")) if messages else ""
    reply = (
        f"This is the agentzt mock model. Your last message had {len(last.split())} words "
        f"across {len(messages)} message(s) in the conversation."
    )
    max_tokens = int(body.get("max_tokens", 1024))
    words = reply.split()
    stop_reason = "end_turn"
    if len(words) > max_tokens:
        reply, stop_reason = " ".join(words[:max_tokens]), "max_tokens"
    return {
        # Unique like a real message id; the content is what stays deterministic.
        "id": f"msg_mock_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": reply}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": estimate_tokens(body),
            "output_tokens": min(max_tokens, len(reply.split())),
        },
    }
