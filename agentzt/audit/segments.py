"""The files one audit log is made of: sealed archives in seq order, then the active file.

An archive is named after the seq of its last event, ``gateway-audit-000000001234.jsonl``
for the active ``gateway-audit.jsonl``, so listing the directory gives the chain's order.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["archive_path", "archives", "pending_path", "segments"]


def archive_path(active: Path, last_seq: int) -> Path:
    return active.with_name(f"{active.stem}-{last_seq:012d}{active.suffix}")


def pending_path(active: Path) -> Path:
    """The side name a rotation writes the next active file under first."""
    return active.with_name(f".{active.name}.next")


def archives(active: Path) -> list[Path]:
    """The sealed files of the log whose active file is ``active``, oldest first."""
    pattern = re.compile(re.escape(active.stem) + r"-(\d{12})" + re.escape(active.suffix))
    found: list[tuple[int, Path]] = []
    try:
        names = [entry.name for entry in active.parent.iterdir()]
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is not None:
            found.append((int(match[1]), active.with_name(name)))
    return [path for _, path in sorted(found)]


def segments(active: Path) -> list[Path]:
    """Every file of the log in chain order; the active file last, if it exists."""
    files = archives(active)
    if active.exists():
        files.append(active)
    return files
