"""The append-only, hash-chained audit log writer.

One gateway process owns one log file: it holds an exclusive ``flock`` on it for as long
as the log is open, learns where the chain ends from the last line alone, and appends one
whole line per event with a single ``write`` on an ``O_APPEND`` descriptor.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from agentzt.audit.canonical import GENESIS_HASH, MAX_LINE_BYTES, canonical_json, chain_hash
from agentzt.errors import AuditWriteError

__all__ = ["AuditLog"]

_DECISIONS: Final = frozenset({"allow", "deny"})
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK: Final = 8192
_VERIFY_HINT: Final = "run `agentzt audit --verify` to locate the damage"


class AuditLog:
    """An open, exclusively locked audit log that events are appended to.

    ``AuditLog(path)`` creates the file (mode 0600) and its missing parent directories
    (mode 0700), locks it against a second gateway process and reads the tail to continue
    the chain. It raises ``AuditWriteError`` if the log is locked by another process,
    cannot be opened, or ends with a line that is not a valid event.

    ``clock`` returns POSIX seconds and stamps ``ts``; tests pass their own.
    Appends are serialized by an internal lock, so one instance may be shared by threads.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        # Set after a write that may have left a partial line on disk; see _write_line().
        self._broken: str | None = None
        _make_private_dirs(path.parent)
        fd = _open_locked(path)
        try:
            self._seq, self._head = _read_head(fd, path)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd

    @property
    def path(self) -> Path:
        """The path of the log file."""
        return self._path

    @property
    def seq(self) -> int:
        """The ``seq`` of the last event in the log; 0 for an empty log."""
        return self._seq

    @property
    def head_hash(self) -> str:
        """The ``hash`` of the last event; ``GENESIS_HASH`` for an empty log."""
        return self._head

    def append(
        self,
        *,
        request_id: str,
        agent_id: str | None,
        role: str | None,
        action: str,
        resource: str | None,
        decision: str,
        reason: str,
        status: int,
        latency_ms: float,
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append one event and return it exactly as written, ``seq`` and ``hash`` included.

        Raises ``ValueError`` if ``decision`` is not ``"allow"`` or ``"deny"``, and
        ``AuditWriteError`` if the event cannot be serialized or written; in either case
        nothing is written and ``seq`` and ``head_hash`` are unchanged.
        """
        if decision not in _DECISIONS:
            raise ValueError(f"decision must be 'allow' or 'deny', not {decision!r}")
        with self._lock:
            fd = self._writable_fd()
            seq = self._seq + 1
            draft: dict[str, Any] = {
                "seq": seq,
                "ts": _rfc3339_utc(self._clock()),
                "request_id": request_id,
                "agent_id": agent_id,
                "role": role,
                "action": action,
                "resource": resource,
                "decision": decision,
                "reason": reason,
                "status": status,
                "latency_ms": round(float(latency_ms), 3),
                "meta": dict(meta) if meta is not None else {},
            }
            try:
                # IMPORTANT: hash the event as a verifier will read it back from disk. The
                # JSON round trip turns tuples into lists and non-string keys into strings
                # (which can change key order); hashing the caller's objects instead would
                # write an event that can never verify.
                event: dict[str, Any] = json.loads(canonical_json(draft))
                event["hash"] = chain_hash(self._head, event)
                line = canonical_json(event) + b"\n"
            except (TypeError, ValueError) as exc:
                raise AuditWriteError(
                    f"audit event seq {seq} cannot be serialized as JSON: {exc}"
                ) from exc
            if len(line) > MAX_LINE_BYTES:
                raise AuditWriteError(
                    f"audit event seq {seq} is {len(line)} bytes, over the "
                    f"{MAX_LINE_BYTES}-byte line limit; shrink its meta"
                )
            self._write_line(fd, line)
            # IMPORTANT: the chain head moves only once the line is on disk, so a failed
            # write is retried with the same seq and prev_hash and the chain stays intact.
            self._seq = seq
            self._head = event["hash"]
            return event

    def close(self) -> None:
        """Release the lock and close the file. Closing twice is harmless."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the descriptor also releases the flock.
            os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self._path)!r}, seq={self._seq})"

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise AuditWriteError(f"audit log {self._path} is closed")
        if self._broken is not None:
            raise AuditWriteError(self._broken)
        return self._fd

    def _write_line(self, fd: int, line: bytes) -> None:
        """Write one whole line, then make it durable; the only place that writes."""
        try:
            # IMPORTANT: one write() on an O_APPEND descriptor, so the line lands whole
            # at the end of the file and is never interleaved with another write.
            written = os.write(fd, line)
        except OSError as exc:
            raise AuditWriteError(
                f"cannot append to audit log {self._path}: {exc.strerror or exc}"
            ) from exc
        if written != len(line):
            # A short write (disk full, file size limit) leaves part of a line on disk.
            # Appending after it would bury the fragment mid-file, so this instance
            # refuses every further append; a restart then refuses to open the log until
            # the operator has looked at it.
            self._broken = (
                f"audit log {self._path} holds a partial line after a short write "
                f"({written} of {len(line)} bytes); {_VERIFY_HINT}"
            )
            raise AuditWriteError(self._broken)
        self._sync(fd)

    def _sync(self, fd: int) -> None:
        """Make the written line durable. Deliberately a no-op for now.

        fsync modes belong here and only here. A failed fsync must set ``self._broken``
        and raise ``AuditWriteError``, like a short write: the line is already in the file,
        so the chain head must not be reused for a retry.
        """


def _rfc3339_utc(timestamp: float) -> str:
    """Format POSIX seconds as RFC 3339 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each mode 0700; leave existing ones."""
    missing: list[Path] = []
    current = directory
    try:
        while not current.exists():
            missing.append(current)
            current = current.parent
        for created in reversed(missing):
            # The umask can only remove bits from 0700, so the result is never wider.
            created.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise AuditWriteError(
            f"cannot create audit log directory {directory}: {exc.strerror or exc}"
        ) from exc


def _open_locked(path: Path) -> int:
    """Open (or create, mode 0600) the log for append and take its exclusive lock."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror or exc}") from exc
    try:
        # IMPORTANT: two writers would both append seq N+1 on the same head and fork the
        # chain, so a second gateway on the same log must fail to start.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise AuditWriteError(
            f"audit log {path} is locked by another gateway process; stop that process "
            "or give this one its own --home"
        ) from exc
    except OSError as exc:
        os.close(fd)
        raise AuditWriteError(f"cannot lock audit log {path}: {exc.strerror or exc}") from exc
    return fd


def _read_head(fd: int, path: Path) -> tuple[int, str]:
    """Return the ``seq`` and ``hash`` of the last event, reading only the file's tail."""
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, GENESIS_HASH
        last = _read_last_line(fd, size, path)
    except OSError as exc:
        raise AuditWriteError(f"cannot read audit log {path}: {exc.strerror or exc}") from exc
    try:
        event = json.loads(last)
    except ValueError:
        raise _damaged(path, "it is not valid JSON") from None
    if not isinstance(event, dict):
        raise _damaged(path, "it is not a JSON object")
    seq, head = event.get("seq"), event.get("hash")
    # bool is a subclass of int, and `true` is not a sequence number.
    if type(seq) is not int or seq < 1:
        raise _damaged(path, "it has no positive integer 'seq'")
    if not isinstance(head, str) or _HEX64.fullmatch(head) is None:
        raise _damaged(path, "it has no 64-hex-digit 'hash'")
    return seq, head


def _read_last_line(fd: int, size: int, path: Path) -> bytes:
    """Return the last line of a non-empty file without its newline.

    Reads backwards from the end in chunks and stops at the previous newline, so start-up
    costs the same for a log of any length.
    """
    if os.pread(fd, 1, size - 1) != b"\n":
        raise _damaged(path, "it is incomplete (no trailing newline)")
    chunks: list[bytes] = []
    collected = 0
    end = size - 1
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        if len(chunk) != end - start:
            raise OSError(0, "the file shrank while being read")
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            break
        chunks.append(chunk)
        collected += len(chunk)
        if collected >= MAX_LINE_BYTES:
            raise _damaged(path, f"it is longer than {MAX_LINE_BYTES} bytes")
        end = start
    return b"".join(reversed(chunks))


def _damaged(path: Path, why: str) -> AuditWriteError:
    return AuditWriteError(
        f"the last line of audit log {path} is not a valid event ({why}); {_VERIFY_HINT}"
    )
