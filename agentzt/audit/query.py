"""Reading events back from an audit log, filtered, for display."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any

from agentzt.audit.canonical import iter_lines

__all__ = ["read_events"]


def read_events(
    path: Path,
    *,
    request_id: str | None = None,
    agent_id: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Return the events of the log at ``path`` that match every filter given, in log order.

    ``request_id`` and ``agent_id`` match those fields exactly. With ``limit`` only the
    last ``limit`` matches are kept, in bounded memory however long the log is. A missing
    file has no events and returns ``[]``. Lines that are incomplete or do not parse as a
    JSON object are skipped: this reads for display and does not judge integrity, which
    is ``verify_chain``'s job.

    Raises ``ValueError`` if ``limit`` is negative, and ``OSError`` if the file exists
    but cannot be read.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    matches: deque[dict[str, Any]] = deque(maxlen=limit)
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return []
    with stream:
        for line in iter_lines(stream):
            if not line.endswith(b"\n"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            if request_id is not None and event.get("request_id") != request_id:
                continue
            if agent_id is not None and event.get("agent_id") != agent_id:
                continue
            matches.append(event)
    return list(matches)
