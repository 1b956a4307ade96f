"""Verification of an audit log: the hash chain across every file, and its checkpoints.

Each line is checked on its raw bytes: the recorded ``hash`` must equal
``sha256(prev_hash + "\\n" + the line without its hash member)``, and its ``seq`` must be
the next one. For a line the writer produced, the line without its hash member *is*
``canonical_json(event without hash)`` (the writer writes canonical JSON only, and
``"hash"`` sorts before every field that could hold an object), so this is the
PROTOCOL.md formula, computed without parsing JSON; any line it rejects is parsed in full
to say exactly what is wrong with it. That keeps verification near the speed of SHA-256,
and large logs are split into byte ranges checked by several processes.

A valid chain can still be a rewritten one (cut short, emptied, rolled back, or edited
with every later hash recomputed). Signed checkpoints catch that: the event at each
checkpoint's size must have the checkpoint's head hash, and the log must reach it.
"""

from __future__ import annotations

import binascii
import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from agentzt.audit.canonical import (
    EVENT_FIELDS,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    canonical_json,
    chain_hash,
)
from agentzt.audit.checkpoint import Checkpoint
from agentzt.audit.segments import segments
from agentzt.errors import AuditChainError

__all__ = ["ChainReport", "verify_chain"]

_BLOCK: Final = 1 << 20
_HASH_KEY: Final = b',"hash":"'
_SEQ_KEY: Final = b',"seq":'
_START: Final = b'{"action":'
# Below this many bytes a log is verified in this process: starting workers costs more.
PARALLEL_FROM_BYTES: Final = 32 << 20
_RANGE_BYTES: Final = 16 << 20


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
    files: int = 1
    """How many files the log is made of (archives and the active file)."""
    checkpoints: tuple[tuple[str, Checkpoint], ...] = ()
    """The checkpoints the log was found to extend, with where each came from."""


@dataclass(frozen=True, slots=True)
class _Range:
    path: str
    start: int
    end: int
    prev_seq: int
    prev_hash: str
    first: bool  # the first range of the whole log: its first line's ts is reported


@dataclass(frozen=True, slots=True)
class _RangeResult:
    last_seq: int
    last_hash: str
    first_ts: str | None
    last_ts: str | None
    hits: dict[int, str]
    error: tuple[int, str] | None


def verify_chain(
    path: Path,
    *,
    checkpoints: Sequence[tuple[str, Checkpoint]] = (),
    workers: int | None = None,
) -> ChainReport:
    """Check every event of the log whose active file is ``path``, and ``checkpoints``.

    Streams the files in constant memory. Raises ``AuditChainError`` at the first bad
    event, with ``seq`` set to the seq that line should have had: a line whose ``hash``
    does not match its content and its predecessor, out of sequence, not a canonical
    event, or a final line cut short. A checkpoint whose event is missing or has another
    hash raises too: the log was truncated, emptied, rolled back or rewritten. A log with
    no file raises with ``seq`` 0; an empty log verifies with no events, unless a
    checkpoint covers events.

    ``workers`` caps the processes used for a large log (default: one per CPU).
    """
    files = segments(path)
    if not files:
        if any(cp.size > 0 for _, cp in checkpoints):
            source, cp = max(checkpoints, key=lambda item: item[1].size)
            raise AuditChainError(
                f"seq 1: audit log {path} does not exist, but checkpoint {source} covers "
                f"{cp.size} events: it was deleted",
                seq=1,
            )
        raise AuditChainError(f"audit log {path} does not exist", seq=0)
    targets = frozenset(cp.size for _, cp in checkpoints if cp.size > 0)
    ranges, total = _plan(files)
    results = _run(ranges, targets, total, workers)
    last_seq, last_hash = 0, GENESIS_HASH
    first_ts: str | None = None
    last_ts: str | None = None
    hits: dict[int, str] = {}
    for planned, result in zip(ranges, results, strict=True):
        if (planned.prev_seq, planned.prev_hash) != (last_seq, last_hash):
            # The previous range ended in error, or the file changed while being read.
            raise AuditChainError(
                f"seq {last_seq + 1}: the log changed while it was being verified",
                seq=last_seq + 1,
            )
        if result.error is not None:
            seq, why = result.error
            raise AuditChainError(f"seq {seq}: {why}", seq=seq)
        if planned.first:
            first_ts = result.first_ts
        if result.last_seq > last_seq:
            last_ts = result.last_ts
        last_seq, last_hash = result.last_seq, result.last_hash
        hits.update(result.hits)
    _check_checkpoints(path, checkpoints, last_seq, hits)
    return ChainReport(
        events=last_seq,
        head_hash=last_hash,
        first_ts=first_ts,
        last_ts=last_ts,
        files=len(files),
        checkpoints=tuple(checkpoints),
    )


def _check_checkpoints(
    path: Path, checkpoints: Sequence[tuple[str, Checkpoint]], events: int, hits: dict[int, str]
) -> None:
    for source, cp in sorted(checkpoints, key=lambda item: item[1].size):
        if cp.size > events:
            raise AuditChainError(
                f"seq {events + 1}: the log ends at seq {events} but checkpoint {source} "
                f"(signed {cp.time}) covers {cp.size} events: the log was truncated, emptied "
                "or rolled back",
                seq=events + 1,
            )
        found = hits.get(cp.size, GENESIS_HASH if cp.size == 0 else None)
        if found != cp.head_hash:
            raise AuditChainError(
                f"seq {cp.size}: the chain's hash here differs from checkpoint {source} "
                f"(signed {cp.time}): events up to seq {cp.size} were rewritten after it "
                "was signed",
                seq=cp.size,
            )


def _plan(files: list[Path]) -> tuple[list[_Range], int]:
    """Split the files into line-aligned byte ranges, each knowing the line before it."""
    ranges: list[_Range] = []
    prev_seq, prev_hash = 0, GENESIS_HASH
    total = 0
    for index, file in enumerate(files):
        try:
            with file.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                bounds = [0]
                for cut in range(_RANGE_BYTES, size, _RANGE_BYTES):
                    if cut <= bounds[-1]:
                        continue
                    stream.seek(cut)
                    stream.readline(MAX_LINE_BYTES)
                    if stream.tell() < size:
                        bounds.append(stream.tell())
                bounds.append(size)
                total += size
                for start, end in itertools.pairwise(bounds):
                    if start > 0:
                        prev_seq, prev_hash = _line_before(stream, start)
                    first = index == 0 and start == 0
                    ranges.append(_Range(str(file), start, end, prev_seq, prev_hash, first))
                if size > 0 and stream.seek(size - 1) >= 0 and stream.read(1) == b"\n":
                    prev_seq, prev_hash = _line_before(stream, size)
        except OSError as exc:
            raise AuditChainError(
                f"seq {prev_seq + 1}: cannot read audit log {file}: {exc.strerror or exc}",
                seq=prev_seq + 1,
            ) from exc
    return ranges, total


def _line_before(stream: Any, offset: int) -> tuple[int, str]:
    """The ``seq`` and ``hash`` recorded on the line that ends at ``offset``.

    They are only a starting point for the next range: the range that holds this line
    verifies it, and a range that does not continue it is reported.
    """
    start = max(0, offset - MAX_LINE_BYTES)
    stream.seek(start)
    data = stream.read(offset - start)
    line = data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1]
    try:
        event = json.loads(line)
        seq, head = event["seq"], event["hash"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return -1, "?"
    if type(seq) is not int or not isinstance(head, str):
        return -1, "?"
    return seq, head


def _run(
    ranges: list[_Range], targets: frozenset[int], total: int, workers: int | None
) -> list[_RangeResult]:
    count = workers if workers is not None else (os.cpu_count() or 1)
    # Forking a process that runs other threads can copy a lock in a held state.
    if total < PARALLEL_FROM_BYTES or count < 2 or threading.active_count() > 1:
        return [_verify_range(r, targets) for r in ranges]
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        return list(pool.map(_verify_range, ranges, [targets] * len(ranges)))


def _verify_range(planned: _Range, targets: frozenset[int]) -> _RangeResult:
    """Verify the lines of one byte range, chained on the line before it.

    The loop is the hot path of verification, so it does the least per line: find the
    hash member, hash the rest, compare; then the few bytes the hash does not cover (the
    member's closing quote), the framing and the seq. A line that fails is re-checked in
    full (``_check_line``) to say what is wrong with it.
    """
    seq, prev = planned.prev_seq, planned.prev_hash.encode()
    hits: dict[int, str] = {}
    first_line: bytes | None = None
    last_line: bytes | None = None
    sha256, hexlify = hashlib.sha256, binascii.hexlify
    with Path(planned.path).open("rb") as stream:
        stream.seek(planned.start)
        remaining = planned.end - planned.start
        carry = b""
        while remaining > 0:
            block = stream.read(min(_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            if len(carry) >= MAX_LINE_BYTES:
                return _failed(seq, prev, carry, planned, hits)
            if not lines:
                continue
            block_seq = seq
            for line in lines:
                cut = line.find(_HASH_KEY)
                recorded = line[cut + 9 : cut + 73]
                digest = sha256(prev)
                digest.update(b"\n")
                digest.update(line[:cut])
                digest.update(line[cut + 74 :])
                seq += 1
                seq_at = line.rfind(_SEQ_KEY) + 7
                expected = b"%d," % seq
                # The hash covers every byte but the hash member itself, whose closing
                # quote is therefore checked here, as are the framing and the seq.
                if (
                    cut < 0
                    or hexlify(digest.digest()) != recorded
                    or line[cut + 73 : cut + 74] != b'"'
                    or line[seq_at : seq_at + len(expected)] != expected
                    or not line.startswith(_START)
                    or not line.endswith(b"}")
                ):
                    return _failed(seq - 1, prev, line + b"\n", planned, hits)
                prev = recorded
            last = lines[-1]
            for target in targets:
                if block_seq < target <= seq:
                    hits[target] = _hash_of(lines[target - block_seq - 1])
            if first_line is None:
                first_line = lines[0]
            last_line = last
        if carry or remaining > 0:
            return _failed(seq, prev, carry, planned, hits)
    return _RangeResult(seq, prev.decode(), _ts(first_line), _ts(last_line), hits, None)


def _hash_of(line: bytes) -> str:
    cut = line.find(_HASH_KEY)
    return line[cut + 9 : cut + 73].decode()


def _failed(
    seq: int, prev: bytes, line: bytes, planned: _Range, hits: dict[int, str]
) -> _RangeResult:
    """The result for a range whose line after ``seq`` failed the fast check: say why."""
    why = "hash does not match its content"
    if planned.prev_seq < 0:
        why = "the line before it is not a valid event"
    else:
        try:
            _check_line(line, seq + 1, prev.decode("ascii", "replace"))
        except AuditChainError as exc:
            why = exc.detail.partition(": ")[2] or why
    return _RangeResult(seq, prev.decode("ascii", "replace"), None, None, hits, (seq + 1, why))


def _ts(line: bytes | None) -> str | None:
    if line is None:
        return None
    try:
        ts = json.loads(line).get("ts")
    except (ValueError, AttributeError, RecursionError):
        return None
    return ts if isinstance(ts, str) else None


def _check_line(line: bytes, expected: int, prev_hash: str) -> dict[str, Any]:
    """Return the event on ``line`` if it is event ``expected`` chained on ``prev_hash``.

    The slow, thorough check: it names what is wrong with a line the fast check refused.
    """

    def bad(why: str) -> AuditChainError:
        return AuditChainError(f"seq {expected}: {why}", seq=expected)

    if not line.endswith(b"\n"):
        if len(line) >= MAX_LINE_BYTES:
            raise bad(f"line is longer than {MAX_LINE_BYTES} bytes")
        raise bad("final line is incomplete (no trailing newline); the log was cut short")
    try:
        event = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
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
