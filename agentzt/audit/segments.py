"""The files one audit log is made of: sealed archives in seq order, then the active file.

An archive is named after the seq of its last event, ``gateway-audit-000000001234.jsonl``
for the active ``gateway-audit.jsonl``, so listing the directory gives the chain's order.
"""

from __future__ import annotations

import re
from pathlib import Path

from agentzt.audit.canonical import MAX_LINE_BYTES

__all__ = ["archive_path", "archives", "hash_at", "pending_path", "segments"]


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


def hash_at(active: Path, seq: int, chunk: int = 1 << 16) -> str | None:
    """The ``hash`` recorded on event ``seq``, read backwards from the end of the log.

    Reads only the lines after it, so checking a checkpoint at start-up costs what the
    events since that checkpoint cost, not the log's length. ``None`` if the log holds no
    such event or a line on the way has no readable seq.
    """
    for file in reversed(segments(active)):
        try:
            stream = file.open("rb")
        except FileNotFoundError:
            continue
        with stream:
            end = stream.seek(0, 2)
            carry = b""
            while end > 0:
                start = max(0, end - chunk)
                stream.seek(start)
                lines = (stream.read(end - start) + carry).split(b"\n")
                carry = lines.pop(0) if start > 0 else b""
                for line in reversed(lines):
                    if not line:
                        continue
                    found = _field(line, b',"seq":', b",")
                    if found is None or not found.isdigit():
                        return None
                    if int(found) == seq:
                        return _field(line, b',"hash":"', b'"')
                    if int(found) < seq:
                        return None
                end = start
                if len(carry) > MAX_LINE_BYTES:
                    return None
    return None


def _field(line: bytes, key: bytes, stop: bytes) -> str | None:
    """A top-level field's raw value: the last ``key`` for seq (it sorts after meta), the
    first for hash (it sorts before it)."""
    at = line.rfind(key) if key.startswith(b',"seq"') else line.find(key)
    if at < 0:
        return None
    begin = at + len(key)
    end = line.find(stop, begin)
    return line[begin:end].decode("ascii", "replace") if end > begin else None
