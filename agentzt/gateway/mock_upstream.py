"""The offline ``mock`` upstream: deterministic Anthropic-shaped answers."""

from __future__ import annotations

import json
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


def stream_events(answer: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``answer`` as the Messages API streams it: message_start, then per content block a
    start, deltas and a stop, a ping, message_delta with the output usage, message_stop."""
    usage = answer["usage"]
    start = {
        **{k: v for k, v in answer.items() if k != "content"},
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    for index, block in enumerate(answer["content"]):
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": _empty(block)},
            )
        )
        for delta in _deltas(block):
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _empty(block: Mapping[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"type": "text", "text": ""}
    return {**block, "input": {}}


def _deltas(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "text":
        words = block["text"].split(" ")
        # A few words a delta, as a model streams them.
        pieces = [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
        return [
            {"type": "text_delta", "text": piece if i == 0 else " " + piece}
            for i, piece in enumerate(pieces)
        ]
    return [{"type": "input_json_delta", "partial_json": json.dumps(block.get("input", {}))}]
