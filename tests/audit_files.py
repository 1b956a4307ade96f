"""Audit-log files built by hand, as a crash would leave them, for the tests that start
from such a state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def rotated_line(active: Path) -> tuple[Path, bytes]:
    """The archive name and ``audit.rotated`` line a rotation of ``active`` writes first,
    built with the PROTOCOL.md formula and nothing from agentzt."""
    last = json.loads(active.read_bytes().splitlines()[-1])
    archive = active.with_name(f"{active.stem}-{last['seq']:012d}{active.suffix}")
    event = {
        "seq": last["seq"] + 1,
        "ts": last["ts"],
        "request_id": "agentzt-audit",
        "agent_id": None,
        "role": None,
        "action": "audit.rotated",
        "resource": f"audit:{active.name}",
        "decision": "allow",
        "reason": f"continues {archive.name}",
        "status": 0,
        "latency_ms": 0.0,
        "meta": {
            "previous_file": archive.name,
            "previous_seq": last["seq"],
            "previous_head": last["hash"],
        },
    }
    body = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    event["hash"] = hashlib.sha256(f"{last['hash']}\n{body}".encode()).hexdigest()
    line = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return archive, line.encode() + b"\n"
