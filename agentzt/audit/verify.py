"""Verification of an audit log's hash chain, from the first line to the last."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentzt.audit.canonical import (
    EVENT_FIELDS,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    canonical_json,
    chain_hash,
    iter_lines,
)
from agentzt.errors import AuditChainError

__all__ = ["ChainReport", "verify_chain"]


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The summary of a log whose chain verified from seq 1 to the end."""

    events: int
    """How many events the log holds (the ``seq`` of the last one)."""
    head_hash: str
    """The ``hash`` of the last event; ``GENESIS_HASH`` for an empty log."""
    first_ts: str | None
    """The ``ts`` of the first event; ``None`` for an empty log."""
    last_ts: str | None
    """The ``ts`` of the last event; ``None`` for an empty log."""


def verify_chain(path: Path) -> ChainReport:
    """Check every event of the log at ``path`` and return a summary.

    Streams the file in constant memory. Raises ``AuditChainError`` at the first bad
    event, with ``seq`` set to the seq that line should have had: a line that is not a
    JSON object with exactly the audit fields, not in canonical form, out of sequence, or
    whose ``hash`` does not match its content and its predecessor; or a final line cut
    short. A missing file raises ``AuditChainError`` with ``seq`` 0; an empty file
    verifies with no events.
    """
    prev_hash = GENESIS_HASH
    seq = 0
    first_ts: str | None = None
    last_ts: str | None = None
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        raise AuditChainError(f"audit log {path} does not exist", seq=0) from None
    except OSError as exc:
        raise AuditChainError(
            f"cannot read audit log {path}: {exc.strerror or exc}", seq=0
        ) from exc
    with stream:
        try:
            for line in iter_lines(stream):
                event = _check_line(line, seq + 1, prev_hash)
                seq, prev_hash = event["seq"], event["hash"]
                last_ts = event["ts"] if isinstance(event["ts"], str) else None
                if seq == 1:
                    first_ts = last_ts
        except OSError as exc:
            raise AuditChainError(
                f"seq {seq + 1}: cannot read audit log {path}: {exc.strerror or exc}",
                seq=seq + 1,
            ) from exc
    return ChainReport(events=seq, head_hash=prev_hash, first_ts=first_ts, last_ts=last_ts)


def _check_line(line: bytes, expected: int, prev_hash: str) -> dict[str, Any]:
    """Return the event on ``line`` if it is event ``expected`` chained on ``prev_hash``."""

    def bad(why: str) -> AuditChainError:
        return AuditChainError(f"seq {expected}: {why}", seq=expected)

    if not line.endswith(b"\n"):
        if len(line) >= MAX_LINE_BYTES:
            raise bad(f"line is longer than {MAX_LINE_BYTES} bytes")
        raise bad("final line is incomplete (no trailing newline); the log was cut short")
    try:
        event = json.loads(line, parse_constant=_reject_constant)
    except ValueError:
        raise bad("line is not valid JSON") from None
    if not isinstance(event, dict):
        raise bad("line is not a JSON object")
    if event.keys() != EVENT_FIELDS:
        missing = sorted(EVENT_FIELDS - event.keys())
        extra = sorted(event.keys() - EVENT_FIELDS)
        raise bad(
            f"fields do not match the audit schema "
            f"(missing {_short(missing)}, unexpected {_short(extra)})"
        )
    found = event["seq"]
    if type(found) is not int or found != expected:
        raise bad(
            f"found seq {_short(found)} instead; an event was deleted, duplicated or reordered"
        )
    recorded = event.pop("hash")
    try:
        # IMPORTANT: the hash is recomputed from the parsed content and the previous hash,
        # never trusted from the line, so editing any field or any earlier line shows here.
        computed = chain_hash(prev_hash, event)
    except ValueError:
        # Only a string with a lone surrogate escape gets here: it parses but has no
        # UTF-8 form, so the writer cannot have produced it.
        raise bad("line holds a string that is not valid Unicode") from None
    if recorded != computed:
        raise bad("hash does not match its content")
    event["hash"] = recorded
    # The writer only ever writes canonical JSON; anything else (extra whitespace,
    # duplicate keys, escapes) means the bytes were rewritten after the hash was taken.
    if canonical_json(event) + b"\n" != line:
        raise bad("line is not in canonical JSON form")
    return event


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which Python's parser accepts but JSON does not have."""
    raise ValueError(f"{name} is not JSON")


def _short(value: object, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters; it may come from a forged line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
