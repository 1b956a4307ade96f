"""The append-only, hash-chained audit log file.

One gateway process owns one log: it holds an exclusive ``flock`` on the active file for
as long as the log is open, learns where the chain ends from the last line alone, and
appends whole lines with a single ``write`` on an ``O_APPEND`` descriptor.

A failed write never leaves a broken chain behind: a partial line is cut off again, and
the chain head moves only once its lines are in the file (and, with ``sync_each``, on
stable storage). A line torn by a crash or a power cut is found at start-up, moved to a
side file and recorded as an ``audit.recovered`` event, so the chain goes on verifying
and the loss is on the record.

Past ``max_file_bytes`` the active file is closed and renamed after its last seq, and a
new one begins with an ``audit.rotated`` event naming the previous file and its head.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from agentzt.audit.canonical import GENESIS_HASH, MAX_LINE_BYTES, canonical_json
from agentzt.audit.segments import archive_path, archives, pending_path
from agentzt.errors import AuditWriteError
from agentzt.files import write_atomically

__all__ = ["AuditLog", "Draft", "Recovered", "Written"]

DEFAULT_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
SYSTEM_REQUEST_ID: Final = "agentzt-audit"
_DECISIONS: Final = frozenset({"allow", "deny"})
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TAIL_CHUNK: Final = 8192
_LATENCY_KEY: Final = b',"latency_ms":'
_VERIFY_HINT: Final = "run `agentzt audit --verify` to locate the damage"


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before the log gives it its ``seq``, ``ts`` and ``hash``."""

    request_id: str
    agent_id: str | None
    role: str | None
    action: str
    resource: str | None
    decision: str
    reason: str
    status: int
    latency_ms: float
    meta: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.decision not in _DECISIONS:
            raise ValueError(f"decision must be 'allow' or 'deny', not {self.decision!r}")


@dataclass(frozen=True, slots=True)
class Written:
    """An event as appended: its seq and its line."""

    seq: int
    line: bytes


@dataclass(frozen=True, slots=True)
class Recovered:
    """A torn final line found at start-up and moved aside."""

    side_file: Path
    size: int
    sha256: str
    offset: int


class AuditLog:
    """An open, exclusively locked audit log that events are appended to.

    ``AuditLog(path)`` creates the file (mode 0600) and its missing parent directories
    (mode 0700), locks it against a second gateway process, quarantines a torn final
    line, and reads the tail to continue the chain. It raises ``AuditWriteError`` if the
    log is locked by another process, cannot be opened, or ends with a complete line
    that is not a valid event (that is damage for an operator to look at, not a crash).

    ``clock`` returns POSIX seconds and stamps ``ts``; tests pass their own. With
    ``sync_each`` every batch is on stable storage before ``append_batch`` returns.
    Calls are serialized by an internal lock, so one instance may be shared by threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        sync_each: bool = False,
    ) -> None:
        self._path = path
        self._clock = clock
        self._max_file_bytes = max_file_bytes
        self.sync_each = sync_each
        self._lock = threading.Lock()
        # Set when this instance must refuse every append until a restart.
        self._broken: str | None = None
        # A failed write may have left bytes past this offset; they go before the next.
        self._cut_to: int | None = None
        self._needs_sync = False
        # Counts the times a sync became necessary, so a sync running outside the lock
        # knows whether it covered them.
        self._epoch = 0
        self._synced_seq = 0
        _make_private_dirs(path.parent)
        # IMPORTANT: the lock comes first, so a second gateway refused by it has touched
        # nothing, not even a rotation the first one is in the middle of.
        self._lock_fd = _lock_log(path)
        fd = -1
        try:
            _finish_rotation(path)
            fd = _open_log(path)
            self.recovered = _quarantine_torn_tail(fd, path)
            self._size = os.fstat(fd).st_size
            self._seq, self._head = _read_head(fd, path, self._size)
        except BaseException as exc:
            for opened in (fd, self._lock_fd):
                if opened >= 0:
                    os.close(opened)
            if isinstance(exc, OSError):
                raise AuditWriteError(
                    f"cannot read audit log {path}: {exc.strerror or exc}"
                ) from exc
            raise
        self._fd: int | None = fd
        self._synced_seq = self._seq
        if self.recovered is not None:
            found = self.recovered
            self.append(
                request_id=SYSTEM_REQUEST_ID,
                agent_id=None,
                role=None,
                action="audit.recovered",
                resource=f"audit:{path.name}",
                decision="allow",
                reason=(
                    f"a torn final line ({found.size} bytes, left by a crash) was moved "
                    f"to {found.side_file.name}"
                ),
                status=0,
                latency_ms=0.0,
                meta={
                    "quarantined_file": found.side_file.name,
                    "quarantined_bytes": found.size,
                    "quarantined_sha256": found.sha256,
                    "offset": found.offset,
                },
            )
            self.sync()

    @property
    def path(self) -> Path:
        """The path of the active log file."""
        return self._path

    @property
    def seq(self) -> int:
        """The ``seq`` of the last event in the log; 0 for an empty log."""
        return self._seq

    @property
    def head_hash(self) -> str:
        """The ``hash`` of the last event; ``GENESIS_HASH`` for an empty log."""
        return self._head

    @property
    def synced_seq(self) -> int:
        """The last ``seq`` known to be on stable storage."""
        return self._synced_seq

    @property
    def size(self) -> int:
        """The size of the active file in bytes."""
        return self._size

    @property
    def max_file_bytes(self) -> int:
        """The size past which ``rotate_if_due`` starts a new file."""
        return self._max_file_bytes

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
        nothing is left in the file and ``seq`` and ``head_hash`` are unchanged.
        """
        draft = Draft(
            request_id, agent_id, role, action, resource, decision, reason, status, latency_ms, meta
        )
        result = self.append_batch([draft])[0]
        if isinstance(result, AuditWriteError):
            raise result
        event: dict[str, Any] = json.loads(result.line)
        return event

    def append_batch(self, drafts: list[Draft]) -> list[Written | AuditWriteError]:
        """Append ``drafts`` in order with one write; return each one's line or its error.

        An event that cannot be serialized gets its own error and takes no seq; a failed
        write (or, with ``sync_each``, a failed sync) fails the whole batch and leaves the
        file and the chain head as they were.
        """
        with self._lock:
            fd = self._writable_fd()
            results: list[Written | AuditWriteError] = []
            lines: list[bytes] = []
            seq, head = self._seq, self._head
            ts = _rfc3339_utc(self._clock())
            for draft in drafts:
                try:
                    line, digest = _build(draft, seq + 1, ts, head)
                except AuditWriteError as exc:
                    results.append(exc)
                    continue
                seq, head = seq + 1, digest
                lines.append(line)
                results.append(Written(seq, line))
            if not lines:
                return results
            data = b"".join(lines)
            start = self._size
            self._write_all(fd, data, start)
            if self.sync_each:
                try:
                    self._sync_locked(fd)
                except AuditWriteError as exc:
                    # Not on stable storage, so not acknowledged: take the lines back.
                    self._cut_back(fd, start)
                    return [exc if isinstance(r, Written) else r for r in results]
            # IMPORTANT: the chain head moves only once the lines are in the file, so a
            # failed batch is retried with the same seq and prev_hash.
            self._size = start + len(data)
            self._seq, self._head = seq, head
            if self.sync_each:
                self._synced_seq = seq
            return results

    def sync(self) -> None:
        """Put everything appended so far on stable storage; ``AuditWriteError`` if not.

        The lock is not held during the sync itself, so appends go on meanwhile; the
        caller must not close the log while it runs.
        """
        with self._lock:
            fd, seq, epoch = self._fd, self._seq, self._epoch
            if fd is None:
                raise AuditWriteError(f"audit log {self._path} is closed")
        try:
            os.fdatasync(fd)
        except OSError as exc:
            with self._lock:
                self._mark_unsynced()
            raise AuditWriteError(
                f"cannot sync audit log {self._path} to disk: {exc.strerror or exc}"
            ) from exc
        with self._lock:
            if self._epoch == epoch:
                # Nothing failed meanwhile that this sync did not cover.
                self._needs_sync = False
            self._synced_seq = max(self._synced_seq, seq)

    def rotate_if_due(self) -> bool:
        """Start a new active file once this one is past ``max_file_bytes``.

        Returns whether it rotated. A failure is left for the next call and raises
        ``AuditWriteError``; the events already written are not affected, since the
        current file stays in use.
        """
        with self._lock:
            if self._fd is None or self._broken is not None or self._size < self._max_file_bytes:
                return False
            self._rotate(self._fd)
            return True

    def close(self) -> None:
        """Release the lock and close the file. Closing twice is harmless."""
        with self._lock:
            fd, self._fd = self._fd, None
            lock_fd, self._lock_fd = self._lock_fd, -1
        if fd is not None:
            os.close(fd)
        if lock_fd >= 0:
            # Closing the descriptor releases the flock.
            os.close(lock_fd)

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

    # --- under self._lock ----------------------------------------------------------------

    def _writable_fd(self) -> int:
        """The descriptor, once whatever a failed write left behind has been repaired.

        This is where the log resumes by itself: a partial line is cut off and a pending
        sync retried before anything new is written; while that fails, appends fail.
        """
        fd = self._fd
        if fd is None:
            raise AuditWriteError(f"audit log {self._path} is closed")
        if self._broken is not None:
            raise AuditWriteError(self._broken)
        if self._cut_to is not None:
            try:
                os.ftruncate(fd, self._cut_to)
            except OSError as exc:
                raise AuditWriteError(
                    f"cannot cut a partial line off audit log {self._path}: {exc.strerror or exc}"
                ) from exc
            self._cut_to = None
        if self._needs_sync:
            self._sync_locked(fd)
        try:
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise AuditWriteError(
                f"cannot stat audit log {self._path}: {exc.strerror or exc}"
            ) from exc
        if size != self._size:
            # Someone else wrote to or cut the file; appending would chain on a head
            # that is no longer in it.
            self._broken = (
                f"audit log {self._path} changed under the gateway (size {size}, expected "
                f"{self._size}); {_VERIFY_HINT}"
            )
            raise AuditWriteError(self._broken)
        return fd

    def _write_all(self, fd: int, data: bytes, start: int) -> None:
        """Write ``data`` at the end of the file, or leave the file as it was and raise."""
        written = 0
        try:
            # IMPORTANT: one write() on an O_APPEND descriptor, so the lines land whole at
            # the end of the file. A short write (a full disk) is continued once; the
            # next write then reports the real error.
            written = os.write(fd, data)
            if written < len(data):
                written += os.write(fd, data[written:])
        except OSError as exc:
            self._cut_back(fd, start, dirty=written > 0)
            raise AuditWriteError(
                f"cannot append to audit log {self._path}: {exc.strerror or exc}"
            ) from exc
        if written != len(data):
            self._cut_back(fd, start)
            raise AuditWriteError(
                f"cannot append to audit log {self._path}: short write "
                f"({written} of {len(data)} bytes)"
            )

    def _cut_back(self, fd: int, start: int, *, dirty: bool = True) -> None:
        """Remove whatever a failed write left past ``start``; if even that fails, remember
        to do it before the next write."""
        if not dirty:
            return
        try:
            os.ftruncate(fd, start)
        except OSError:
            self._cut_to = start
        # The cut itself must reach the disk before anything is built on it.
        self._mark_unsynced()

    def _mark_unsynced(self) -> None:
        self._needs_sync = True
        self._epoch += 1

    def _sync_locked(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._mark_unsynced()
            raise AuditWriteError(
                f"cannot sync audit log {self._path} to disk: {exc.strerror or exc}"
            ) from exc
        self._needs_sync = False
        self._synced_seq = self._seq

    def _rotate(self, fd: int) -> None:
        """Seal this file under its last seq and continue the chain in a new one.

        Crash-safe order: the new file is written complete under a side name first, then
        the active file is renamed to its archive name, then the side file to the active
        name. A crash between the two renames leaves the side file, which the next
        start-up moves into place (``_finish_rotation``).
        """
        self._sync_locked(fd)
        archived = archive_path(self._path, self._seq)
        pending = pending_path(self._path)
        draft = Draft(
            SYSTEM_REQUEST_ID,
            None,
            None,
            "audit.rotated",
            f"audit:{self._path.name}",
            "allow",
            f"continues {archived.name}",
            0,
            0.0,
            {
                "previous_file": archived.name,
                "previous_seq": self._seq,
                "previous_head": self._head,
            },
        )
        line, digest = _build(draft, self._seq + 1, _rfc3339_utc(self._clock()), self._head)
        try:
            write_atomically(pending, line, 0o600)
            self._path.rename(archived)
        except OSError as exc:
            pending.unlink(missing_ok=True)
            raise AuditWriteError(
                f"cannot rotate audit log {self._path}: {exc.strerror or exc}"
            ) from exc
        try:
            pending.rename(self._path)
            _sync_directory(self._path.parent)
            new_fd = _open_log(self._path)
        except (OSError, AuditWriteError) as exc:
            # The old descriptor now names the archive; nothing may be appended to it.
            self._broken = (
                f"audit log rotation stopped halfway ({exc}); restart the gateway to finish it"
            )
            raise AuditWriteError(self._broken) from exc
        os.close(fd)
        self._fd = new_fd
        self._size = len(line)
        self._seq, self._head = self._seq + 1, digest
        self._synced_seq = self._seq


def _build(draft: Draft, seq: int, ts: str, prev_hash: str) -> tuple[bytes, str]:
    """The line ``draft`` becomes as event ``seq``, and its hash.

    The event without its hash is serialized once, canonically; its hash is taken over
    exactly those bytes and spliced in where ``"hash"`` sorts (just before
    ``"latency_ms"``; no field before it can hold an object, and a quote inside a
    string is always escaped, so that key's first occurrence is the real one). The
    line is then the canonical form of the whole event, as ``verify`` expects.
    """
    meta = dict(draft.meta) if draft.meta is not None else {}
    fields: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "request_id": draft.request_id,
        "agent_id": draft.agent_id,
        "role": draft.role,
        "action": draft.action,
        "resource": draft.resource,
        "decision": draft.decision,
        "reason": draft.reason,
        "status": draft.status,
        "latency_ms": round(float(draft.latency_ms), 3),
        "meta": meta,
    }
    try:
        if not _string_keys(meta):
            # IMPORTANT: hash the event as a verifier reads it back. Non-string keys
            # become strings in JSON, which can change their sorted order; one round
            # trip settles them.
            fields["meta"] = json.loads(canonical_json(meta))
        body = canonical_json(fields)
    except (TypeError, ValueError) as exc:
        raise AuditWriteError(f"audit event seq {seq} cannot be serialized as JSON: {exc}") from exc
    digest = hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()
    cut = body.index(_LATENCY_KEY)
    line = b"".join((body[:cut], b',"hash":"', digest.encode(), b'"', body[cut:], b"\n"))
    if len(line) > MAX_LINE_BYTES:
        raise AuditWriteError(
            f"audit event seq {seq} is {len(line)} bytes, over the "
            f"{MAX_LINE_BYTES}-byte line limit; shrink its meta"
        )
    return line, digest


def _string_keys(value: object) -> bool:
    """Whether every object key in ``value`` is a string (what JSON keeps as it is)."""
    # A loop, not recursion: it runs on every event, and on any depth of meta.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if type(key) is not str:
                    return False
                if isinstance(inner, dict | list | tuple):
                    stack.append(inner)
        elif isinstance(item, list | tuple):
            stack.extend(v for v in item if isinstance(v, dict | list | tuple))
    return True


def _rfc3339_utc(timestamp: float) -> str:
    """Format POSIX seconds as RFC 3339 UTC with milliseconds, e.g. 2025-01-31T12:00:00.123Z."""
    # Rounded to the microsecond first, as datetime.fromtimestamp does.
    seconds, micros = divmod(round(timestamp * 1_000_000), 1_000_000)
    return f"{_second(seconds)}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    # Every event in the same second shares this part: formatted once, not per event.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


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


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish_rotation(path: Path) -> None:
    """Complete a rotation a crash interrupted between its two renames."""
    pending = pending_path(path)
    try:
        if not pending.exists():
            return
        if path.exists():
            # The crash came before the first rename: the active file is still whole and
            # the side file's event was never part of the chain.
            pending.unlink()
        else:
            pending.rename(path)
        _sync_directory(path.parent)
    except OSError as exc:
        raise AuditWriteError(
            f"cannot finish the interrupted rotation of audit log {path}: {exc.strerror or exc}"
        ) from exc


def _open_log(path: Path) -> int:
    """Open (or create, mode 0600) the active file for append."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror or exc}") from exc


def _lock_log(path: Path) -> int:
    """Take the log's exclusive lock: a lock file beside it, held while the log is open.

    A file of its own, because the active file is renamed away at each rotation.
    """
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def _quarantine_torn_tail(fd: int, path: Path) -> Recovered | None:
    """Move an incomplete final line (a crash mid-write) to a side file and cut it off.

    The side file is durable before the log is cut, so nothing is ever lost: the bytes
    are kept for an investigator and the start-up that follows records the move.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return None
    start = max(0, size - MAX_LINE_BYTES)
    tail = os.pread(fd, size - start, start)
    if len(tail) != size - start:
        raise OSError(0, "the file shrank while being read")
    newline = tail.rfind(b"\n")
    if newline < 0 and start > 0:
        raise _damaged(path, f"it is incomplete and longer than {MAX_LINE_BYTES} bytes")
    cut = start + newline + 1
    fragment = tail[newline + 1 :]
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    side = path.with_name(f"{path.name}.torn-{stamp}")
    write_atomically(side, fragment, 0o600)
    os.ftruncate(fd, cut)
    os.fsync(fd)
    return Recovered(side, len(fragment), hashlib.sha256(fragment).hexdigest(), cut)


def _read_head(fd: int, path: Path, size: int) -> tuple[int, str]:
    """The ``seq`` and ``hash`` the chain continues from, reading only a file's tail.

    An empty active file continues the newest archive, or starts at genesis.
    """
    if size > 0:
        return _head_of(_read_last_line(fd, size, path), path)
    sealed = archives(path)
    if not sealed:
        return 0, GENESIS_HASH
    last = sealed[-1]
    archive_fd = os.open(last, os.O_RDONLY | os.O_CLOEXEC)
    try:
        archive_size = os.fstat(archive_fd).st_size
        if archive_size == 0:
            raise _damaged(last, "the file is empty")
        return _head_of(_read_last_line(archive_fd, archive_size, last), last)
    finally:
        os.close(archive_fd)


def _head_of(last: bytes, path: Path) -> tuple[int, str]:
    try:
        event = json.loads(last)
    except (ValueError, RecursionError):
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
    """Return the last line of a non-empty file that ends in a newline, without it.

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
