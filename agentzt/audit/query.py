"""Reading events back from an audit log, filtered: for display, export and tailing."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from agentzt.audit.canonical import MAX_LINE_BYTES, iter_lines
from agentzt.audit.segments import archives, segments

__all__ = ["Follower", "iter_log_lines", "matcher", "read_events"]


def iter_log_lines(path: Path) -> Iterator[bytes]:
    """The complete lines of every file of the log at ``path``, in chain order.

    An incomplete line (a crash's torn tail) is left out; a file that disappears while
    being listed (rotated meanwhile) is skipped.
    """
    for file in segments(path):
        yield from _complete_lines(file)


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def read_events(
    path: Path,
    *,
    request_id: str | None = None,
    agent_id: str | None = None,
    task: str | None = None,
    since: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Return the events of the log at ``path`` that match every filter given, in log order.

    ``request_id`` and ``agent_id`` match those fields exactly, ``task`` the task id an
    event's meta names, and ``since`` keeps events whose ``ts`` is not before it (an
    RFC 3339 UTC time in the log's own format compares as text). With ``limit`` only
    the last ``limit`` matches are kept, in bounded memory however long the log is. A
    missing log has no events and returns ``[]``. Lines that are incomplete or do not
    parse as a JSON object are skipped: this reads for display and does not judge
    integrity, which is ``verify_chain``'s job.

    Raises ``ValueError`` if ``limit`` is negative, and ``OSError`` if a file exists but
    cannot be read.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    matches: deque[dict[str, Any]] = deque(maxlen=limit)
    match = matcher(request_id=request_id, agent_id=agent_id, task=task, since=since)
    for line in iter_log_lines(path):
        event = _event(line)
        if event is not None and match(event):
            matches.append(event)
    return list(matches)


def matcher(
    *,
    request_id: str | None = None,
    agent_id: str | None = None,
    task: str | None = None,
    since: str | None = None,
) -> Callable[[dict[str, Any]], bool]:
    """The filter ``read_events`` applies, for a reader of its own (``--follow``)."""

    def match(event: dict[str, Any]) -> bool:
        if request_id is not None and event.get("request_id") != request_id:
            return False
        if agent_id is not None and event.get("agent_id") != agent_id:
            return False
        if task is not None:
            meta = event.get("meta")
            if not isinstance(meta, dict) or meta.get("task") != task:
                return False
        if since is not None:
            ts = event.get("ts")
            if not isinstance(ts, str) or ts < since:
                return False
        return True

    return match


class Follower:
    """The lines appended to a log from the moment this is made on, across rotations.

    Polls the active file from the offset after the last complete line it gave, and
    never holds a partial line: a line cut off by a crash and quarantined at the next
    start is never stitched to what follows. When the active file is replaced (a
    rotation), the rest of the old file and every file sealed since are read before the
    new active file is followed from its start.
    """

    def __init__(self, path: Path, *, poll_seconds: float = 0.2) -> None:
        self._path = path
        self._poll = poll_seconds
        self._stream = _open(path)
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        # With no active file yet, "from now on" is every archive not already there.
        self._before = {_identity(a) for a in archives(path)} if self._stream is None else set()
        if self._stream is not None:
            self._offset = os.fstat(self._stream.fileno()).st_size
            self._identity = _fstat_identity(self._stream)

    def lines(self, stop: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
        """Yield each complete line, newline included, until ``stop()`` is true."""
        try:
            while not stop():
                if self._stream is not None:
                    complete = self._read_complete()
                    if complete:
                        yield from complete
                        continue
                current = _identity(self._path)
                if current is None or current == self._identity:
                    # Nothing new, or the path is between the two renames of a rotation.
                    time.sleep(self._poll)
                    continue
                # Rotated (maybe more than once), or created. The old file is finished:
                # what was written to it after the last read comes first.
                if self._stream is not None:
                    while complete := self._read_complete():
                        yield from complete
                    self._stream.close()
                    self._stream = None
                stream, identity, missed = self._next_file()
                if stream is None:
                    continue
                for archive in missed:
                    yield from _complete_lines(archive)
                self._stream, self._identity, self._offset = stream, identity, 0
        finally:
            if self._stream is not None:
                self._stream.close()

    def _read_complete(self) -> list[bytes]:
        """The complete lines after the offset, which moves past them."""
        assert self._stream is not None
        data = os.pread(self._stream.fileno(), MAX_LINE_BYTES, self._offset)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return []
        self._offset += end
        return [line + b"\n" for line in data[: end - 1].split(b"\n")]

    def _next_file(self) -> tuple[IO[bytes] | None, tuple[int, int] | None, list[Path]]:
        """The active file, opened, and the archives sealed between the one followed so
        far and it: every rotation since, not only the last."""
        while True:
            stream = _open(self._path)
            if stream is None:
                return None, None, []
            identity = _fstat_identity(stream)
            sealed = [(a, _identity(a)) for a in archives(self._path)]
            if all(found != identity for _, found in sealed):
                break
            # Rotated again between the open and the listing: look once more.
            stream.close()
        if self._identity is None:
            return stream, identity, [a for a, found in sealed if found not in self._before]
        after = [i for i, (_, found) in enumerate(sealed) if found == self._identity]
        start = after[0] + 1 if after else len(sealed)
        return stream, identity, [a for a, _ in sealed[start:]]


def _complete_lines(path: Path) -> Iterator[bytes]:
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return
    with stream:
        for line in iter_lines(stream):
            if line.endswith(b"\n"):
                yield line


def _fstat_identity(stream: IO[bytes]) -> tuple[int, int]:
    info = os.fstat(stream.fileno())
    return info.st_dev, info.st_ino


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _open(path: Path) -> IO[bytes] | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None
