"""The on-disk format of the audit log: canonical JSON, event fields, line framing, chaining.

Writer (``log``), verifier (``verify``) and reader (``query``) all take the format from
here, so the bytes that are hashed, written and re-checked are defined exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import IO, Any, Final

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` the first event of every log chains on."""

EVENT_FIELDS: Final = frozenset(
    {
        "seq",
        "ts",
        "request_id",
        "agent_id",
        "role",
        "action",
        "resource",
        "decision",
        "reason",
        "status",
        "latency_ms",
        "meta",
        "hash",
    }
)
"""Exactly the fields of one audit event (PROTOCOL.md, "Audit log")."""

# One encoder for every event: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)

MAX_LINE_BYTES: Final = 1 << 20
"""The longest line (newline included) the writer produces and the readers accept.

The bound keeps start-up and verification in bounded memory even on a damaged file.
"""


def canonical_json(obj: Any) -> bytes:
    """Serialize ``obj`` as canonical JSON: sorted keys, no whitespace, UTF-8.

    Raises ``ValueError`` for NaN or infinities (they are not JSON) and for strings that
    cannot be encoded as UTF-8 (lone surrogates), and ``TypeError`` for values JSON
    cannot represent.
    """
    return _ENCODER.encode(obj).encode("utf-8")


def chain_hash(prev_hash: str, event_without_hash: Mapping[str, Any]) -> str:
    """Return ``sha256_hex(prev_hash + "\\n" + canonical_json(event_without_hash))``.

    Raises ``ValueError`` if ``event_without_hash`` still contains the ``hash`` field,
    because a hash over itself could never be reproduced by a verifier.
    """
    if "hash" in event_without_hash:
        raise ValueError("chain_hash() takes the event without its 'hash' field")
    digest = hashlib.sha256()
    digest.update(prev_hash.encode())
    digest.update(b"\n")
    digest.update(canonical_json(dict(event_without_hash)))
    return digest.hexdigest()


def iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Yield the raw lines of ``stream`` in constant memory, newline included.

    A line longer than ``MAX_LINE_BYTES`` is yielded as its first ``MAX_LINE_BYTES``
    bytes without a newline and the rest of it is skipped, so consumers treat it like
    any other incomplete line. A final line without a newline is yielded as it is.
    """
    while True:
        line = stream.readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) == MAX_LINE_BYTES and not line.endswith(b"\n"):
            # Skip the remainder so that a fragment of an over-long line is never
            # mistaken for a line of its own.
            while True:
                rest = stream.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
        yield line
