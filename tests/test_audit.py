"""The hash-chained audit log: writing, start-up, failure, verification and reading back."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import agentzt.audit
from agentzt.audit import (
    GENESIS_HASH,
    AuditLog,
    ChainReport,
    canonical_json,
    chain_hash,
    read_events,
    verify_chain,
)
from agentzt.errors import AuditChainError, AuditWriteError

# The field list of PROTOCOL.md, "Audit log", written out here rather than imported so
# that a change to the module cannot silently change what the test expects.
PROTOCOL_FIELDS = {
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
T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class TickingClock:
    """A clock that advances by a fixed step on every reading."""

    def __init__(self, start: float = T0, step: float = 1.5) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


def append(log: AuditLog, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "agent_id": "agent-a",
        "role": "analyst",
        "action": "model.call",
        "resource": "model:claude-sonnet-4-6",
        "decision": "allow",
        "reason": "in scope",
        "status": 200,
        "latency_ms": 12.5,
    }
    fields.update(overrides)
    return log.append(**fields)


def protocol_hash(prev_hash: str, event: dict[str, Any]) -> str:
    """The PROTOCOL formula, computed with nothing from agentzt."""
    body = {key: value for key, value in event.items() if key != "hash"}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(prev_hash.encode() + b"\n" + data.encode("utf-8")).hexdigest()


def write_log(path: Path, count: int) -> list[dict[str, Any]]:
    with AuditLog(path, clock=TickingClock()) as log:
        return [
            append(
                log,
                request_id=f"req-{n}",
                agent_id="agent-a" if n % 2 else "agent-b",
                meta={"n": n, "note": f"event {n}"},
            )
            for n in range(1, count + 1)
        ]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit" / "gateway-audit.jsonl"


# -- public API and format ------------------------------------------------------------------


def test_public_api() -> None:
    assert sorted(agentzt.audit.__all__) == sorted(
        [
            "GENESIS_HASH",
            "AuditLog",
            "AuditWriter",
            "ChainReport",
            "Checkpoint",
            "Correlator",
            "Draft",
            "Seal",
            "canonical_json",
            "chain_hash",
            "checkpoint_files",
            "read_checkpoint",
            "read_events",
            "verify_chain",
        ]
    )
    for name in agentzt.audit.__all__:
        assert getattr(agentzt.audit, name) is not None


def test_canonical_json_is_sorted_compact_utf8() -> None:
    data = canonical_json({"b": [1, 2.5, None], "a": {"z": True, "y": "café ✓"}})
    assert data == '{"a":{"y":"café ✓","z":true},"b":[1,2.5,null]}'.encode()
    assert "é".encode() in data  # raw UTF-8, not a \\u escape


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_canonical_json_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"latency_ms": value})


def test_chain_hash_refuses_an_event_that_still_has_its_hash() -> None:
    with pytest.raises(ValueError):
        chain_hash(GENESIS_HASH, {"seq": 1, "hash": "0" * 64})


# -- writing --------------------------------------------------------------------------------


def test_first_event_chains_on_genesis_with_the_protocol_formula(log_path: Path) -> None:
    with AuditLog(log_path, clock=lambda: T0 + 0.25) as log:
        event = append(log, meta={"tool": "kb.search"}, latency_ms=3.14159)

    assert GENESIS_HASH == "0" * 64
    assert set(event) == PROTOCOL_FIELDS
    assert event["seq"] == 1
    assert event["ts"] == "2023-11-14T22:13:20.250Z"
    assert event["latency_ms"] == 3.142
    assert event["meta"] == {"tool": "kb.search"}
    assert event["hash"] == protocol_hash("0" * 64, event)
    # The file holds exactly that event as one canonical line.
    expected_line = json.dumps(
        event, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert log_path.read_bytes() == expected_line + b"\n"


def test_events_chain_on_each_other(log_path: Path) -> None:
    events = write_log(log_path, 3)
    assert [event["seq"] for event in events] == [1, 2, 3]
    prev = "0" * 64
    for event in events:
        assert event["hash"] == protocol_hash(prev, event)
        prev = event["hash"]


def test_optional_fields_and_default_meta(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        event = append(log, agent_id=None, role=None, resource=None, decision="deny")
    assert event["agent_id"] is None
    assert event["role"] is None
    assert event["resource"] is None
    assert event["decision"] == "deny"
    assert event["meta"] == {}


def test_ts_is_rfc3339_utc_with_milliseconds(log_path: Path) -> None:
    with AuditLog(log_path, clock=lambda: T0 + 0.1239) as log:
        event = append(log)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["ts"])
    assert event["ts"] == "2023-11-14T22:13:20.123Z"


@pytest.mark.parametrize("decision", ["permit", "ALLOW", "", "denied"])
def test_decision_other_than_allow_or_deny_is_refused(log_path: Path, decision: str) -> None:
    with AuditLog(log_path) as log:
        with pytest.raises(ValueError):
            append(log, decision=decision)
        assert log.seq == 0
    assert log_path.read_bytes() == b""


def test_meta_is_stored_as_verify_reads_it(log_path: Path) -> None:
    # Integer keys become strings and change sort order ("10" < "9"); tuples become lists.
    with AuditLog(log_path) as log:
        event = append(log, meta={10: "ten", 9: ("nine", 9)})
    assert event["meta"] == {"10": "ten", "9": ["nine", 9]}
    assert verify_chain(log_path).events == 1


@pytest.mark.parametrize(
    "meta",
    [{"obj": object()}, {"x": math.nan}, {"s": "\ud800"}],
    ids=["not-json", "nan", "lone-surrogate"],
)
def test_unserializable_event_raises_audit_write_error(log_path: Path, meta: Any) -> None:
    with AuditLog(log_path) as log:
        with pytest.raises(AuditWriteError) as raised:
            append(log, meta=meta)
        assert isinstance(raised.value.__cause__, TypeError | ValueError)
        assert (log.seq, log.head_hash) == (0, GENESIS_HASH)
        assert append(log)["seq"] == 1
    assert verify_chain(log_path).events == 1


def test_oversized_event_is_refused(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        with pytest.raises(AuditWriteError, match="line limit"):
            append(log, meta={"blob": "x" * (2 << 20)})
        assert log.seq == 0
    assert log_path.read_bytes() == b""


def test_creates_private_directories_and_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / "audit" / "gateway-audit.jsonl"
    old_umask = os.umask(0o022)
    try:
        AuditLog(path).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700


def test_concurrent_appends_keep_the_chain(log_path: Path) -> None:
    with AuditLog(log_path) as log:

        def worker(name: str) -> None:
            for n in range(50):
                append(log, request_id=f"{name}-{n}")

        threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.seq == 200
    assert verify_chain(log_path).events == 200


# -- start-up -------------------------------------------------------------------------------


def test_reopen_continues_the_sequence_and_the_chain(log_path: Path) -> None:
    events = write_log(log_path, 3)
    with AuditLog(log_path) as log:
        assert log.seq == 3
        assert log.head_hash == events[-1]["hash"]
        assert log.path == log_path
        event = append(log)
    assert event["seq"] == 4
    assert event["hash"] == protocol_hash(events[-1]["hash"], event)
    assert verify_chain(log_path).events == 4


def test_empty_file_starts_at_genesis(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(b"")
    with AuditLog(log_path) as log:
        assert (log.seq, log.head_hash) == (0, GENESIS_HASH)


def _bytes_read_by_this_process() -> int:
    """The kernel's count of bytes this process has read through read-like system calls."""
    io_stats = Path("/proc/self/io")
    if not io_stats.exists():
        pytest.skip("needs Linux /proc/self/io to count bytes read")
    for row in io_stats.read_text().splitlines():
        name, _, value = row.partition(":")
        if name == "rchar":
            return int(value)
    raise AssertionError("/proc/self/io has no rchar")


def test_startup_reads_only_the_tail(log_path: Path) -> None:
    """Several MB of garbage before a valid last line: start-up never looks at it."""
    events = write_log(log_path, 3)
    lines = log_path.read_bytes().splitlines(keepends=True)
    garbage = b"this is not JSON \xff\xfe {{{\n" * 200_000  # about 4.8 MB
    log_path.write_bytes(b"".join(lines[:2]) + garbage + lines[2])
    assert log_path.stat().st_size > 4_000_000

    read_before = _bytes_read_by_this_process()
    with AuditLog(log_path) as log:
        read_during_open = _bytes_read_by_this_process() - read_before
        # The whole process counts (other threads of a test worker read too), so the
        # bound is far above a tail read and far below the 4.8 MB a full scan reads.
        assert read_during_open < 1024 * 1024
        assert log.seq == 3
        assert log.head_hash == events[2]["hash"]
        assert append(log)["seq"] == 4
    # The chain itself is broken right where the garbage starts, and verify says so.
    with pytest.raises(AuditChainError) as raised:
        verify_chain(log_path)
    assert raised.value.seq == 3


def test_startup_finds_a_last_line_longer_than_one_read_chunk(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        append(log)
        last = append(log, meta={"blob": "y" * 50_000})
    with AuditLog(log_path) as log:
        assert (log.seq, log.head_hash) == (2, last["hash"])


@pytest.mark.parametrize(
    ("last_line", "why"),
    [
        (b"not json\n", "not valid JSON"),
        (b"[1,2,3]\n", "not a JSON object"),
        (b'{"hash":"' + b"a" * 64 + b'"}\n', "'seq'"),
        (b'{"seq":true,"hash":"' + b"a" * 64 + b'"}\n', "'seq'"),
        (b'{"seq":0,"hash":"' + b"a" * 64 + b'"}\n', "'seq'"),
        (b'{"seq":3,"hash":"' + b"A" * 64 + b'"}\n', "'hash'"),
        (b'{"seq":3,"hash":"abc"}\n', "'hash'"),
        (b"\n", "not valid JSON"),
    ],
    ids=[
        "not-json",
        "array",
        "no-seq",
        "bool-seq",
        "zero-seq",
        "uppercase-hash",
        "short-hash",
        "empty-line",
    ],
)
def test_damaged_last_line_refuses_to_open(log_path: Path, last_line: bytes, why: str) -> None:
    write_log(log_path, 2)
    with log_path.open("ab") as stream:
        stream.write(last_line)
    with pytest.raises(AuditWriteError, match="agentzt audit --verify") as raised:
        AuditLog(log_path)
    assert why in raised.value.detail
    # The failed start-up released its lock: once repaired, the log opens.
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(b"".join(lines[:2]))
    AuditLog(log_path).close()


def test_torn_last_line_is_quarantined_and_recorded(log_path: Path) -> None:
    # A final line with no newline is what a crash mid-write leaves: it is moved to a
    # side file (kept for an investigator), and the log goes on with a record of the move.
    written = write_log(log_path, 2)
    good = log_path.read_bytes()
    fragment = b'{"seq":3,"hash":"' + b"a" * 64 + b'"}'
    with log_path.open("ab") as stream:
        stream.write(fragment)
    with AuditLog(log_path, clock=TickingClock(T0 + 100)) as log:
        assert log.seq == 3
        after = append(log, request_id="req-after")
    [side] = log_path.parent.glob(f"{log_path.name}.torn-*")
    assert side.read_bytes() == fragment
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    events = read_events(log_path)
    assert events[:2] == written
    assert [(e["seq"], e["action"]) for e in events[2:]] == [
        (3, "audit.recovered"),
        (4, "model.call"),
    ]
    recovered = events[2]
    assert recovered["meta"] == {
        "quarantined_file": side.name,
        "quarantined_bytes": len(fragment),
        "quarantined_sha256": hashlib.sha256(fragment).hexdigest(),
        "offset": len(good),
    }
    assert events[3] == after
    # The fragment is gone from the log itself, which holds only whole, chained lines.
    assert fragment not in log_path.read_bytes()
    assert log_path.read_bytes().startswith(good)
    assert verify_chain(log_path).events == 4
    # The next start-up finds nothing torn: no second side file, no second record.
    with AuditLog(log_path) as log:
        assert log.seq == 4
    assert len(list(log_path.parent.glob(f"{log_path.name}.torn-*"))) == 1


def test_second_writer_on_the_same_log_is_refused(log_path: Path) -> None:
    first = AuditLog(log_path)
    try:
        with pytest.raises(AuditWriteError, match="locked by another gateway process"):
            AuditLog(log_path)
        append(first)
    finally:
        first.close()
    # Closing released the lock.
    with AuditLog(log_path) as second:
        assert second.seq == 1


def test_second_writer_in_another_process_is_refused(log_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from agentzt.audit import AuditLog\n"
        "from agentzt.errors import AuditWriteError\n"
        "try:\n    AuditLog(Path(sys.argv[1]))\n"
        "except AuditWriteError as e:\n    print(e.detail); sys.exit(3)\n"
    )
    with AuditLog(log_path):
        result = subprocess.run(
            [sys.executable, "-c", script, str(log_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stderr
    assert "locked by another gateway process" in result.stdout


# -- write failures -------------------------------------------------------------------------


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int | None], None]]:
    """Set RLIMIT_FSIZE for this process: a real write failure that works even as root."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Without this, exceeding the limit kills the process with SIGXFSZ instead of EFBIG.
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def set_limit(limit: int | None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if limit is None else limit, hard))

    try:
        yield set_limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_failed_write_leaves_state_unchanged(
    log_path: Path, file_size_limit: Callable[[int | None], None]
) -> None:
    write_log(log_path, 3)
    before = log_path.read_bytes()
    with AuditLog(log_path) as log:
        head = log.head_hash
        file_size_limit(len(before))
        try:
            with pytest.raises(AuditWriteError) as raised:
                append(log)
        finally:
            file_size_limit(None)
        assert isinstance(raised.value.__cause__, OSError)
        assert raised.value.__cause__.errno == errno.EFBIG
        assert (log.seq, log.head_hash) == (3, head)
        assert log_path.read_bytes() == before
        # Once the disk recovers, the retry takes the seq the failed append would have had.
        assert append(log)["seq"] == 4
    assert verify_chain(log_path).events == 4


def test_short_write_is_cut_back_and_the_log_resumes(
    log_path: Path, file_size_limit: Callable[[int | None], None]
) -> None:
    write_log(log_path, 3)
    before = log_path.read_bytes()
    with AuditLog(log_path) as log:
        head = log.head_hash
        # Room for 20 bytes: the kernel takes the start of the line, then refuses the rest.
        file_size_limit(len(before) + 20)
        try:
            for _ in range(2):
                with pytest.raises(AuditWriteError) as raised:
                    append(log)
                assert isinstance(raised.value.__cause__, OSError)
                # The partial line was cut back: not one of its bytes is left behind.
                assert log_path.read_bytes() == before
                assert (log.seq, log.head_hash) == (3, head)
        finally:
            file_size_limit(None)
        # Once the disk takes writes again, the same log goes on with the next seq.
        assert append(log)["seq"] == 4
        assert append(log)["seq"] == 5
    assert log_path.read_bytes().startswith(before)
    assert verify_chain(log_path).events == 5
    with AuditLog(log_path) as log:
        assert log.seq == 5


def test_write_to_a_full_device_raises(tmp_path: Path) -> None:
    path = tmp_path / "gateway-audit.jsonl"
    path.symlink_to("/dev/full")
    with AuditLog(path) as log:
        with pytest.raises(AuditWriteError) as raised:
            append(log)
        assert isinstance(raised.value.__cause__, OSError)
        assert raised.value.__cause__.errno == errno.ENOSPC
        assert (log.seq, log.head_hash) == (0, GENESIS_HASH)


def test_append_after_close_raises(log_path: Path) -> None:
    log = AuditLog(log_path)
    append(log)
    log.close()
    log.close()
    with pytest.raises(AuditWriteError, match="closed"):
        append(log)
    assert log.seq == 1


def test_unwritable_location_raises_audit_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be")
    with pytest.raises(AuditWriteError):
        AuditLog(blocker / "gateway-audit.jsonl")
    with pytest.raises(AuditWriteError):
        AuditLog(tmp_path)  # a directory is not a log file


# -- verification ---------------------------------------------------------------------------


def test_verify_good_log(log_path: Path) -> None:
    events = write_log(log_path, 5)
    report = verify_chain(log_path)
    assert report == ChainReport(
        events=5,
        head_hash=events[-1]["hash"],
        first_ts="2023-11-14T22:13:20.000Z",
        last_ts=events[-1]["ts"],
    )


def test_verify_empty_log(log_path: Path) -> None:
    AuditLog(log_path).close()
    assert verify_chain(log_path) == ChainReport(
        events=0, head_hash=GENESIS_HASH, first_ts=None, last_ts=None
    )


def test_verify_missing_log(tmp_path: Path) -> None:
    with pytest.raises(AuditChainError, match="does not exist") as raised:
        verify_chain(tmp_path / "nope.jsonl")
    assert raised.value.seq == 0


Lines = list[bytes]


def _edit(index: int, change: Callable[[dict[str, Any]], None]) -> Callable[[Lines], None]:
    """Rewrite line ``index`` canonically after ``change``, keeping its recorded hash."""

    def tamper(lines: Lines) -> None:
        event = json.loads(lines[index])
        change(event)
        lines[index] = canonical_json(event) + b"\n"

    return tamper


def _edit_and_rehash(index: int) -> Callable[[Lines], None]:
    """Edit a line and recompute its own hash, as a forger without the rest would."""

    def tamper(lines: Lines) -> None:
        prev = json.loads(lines[index - 1])["hash"]
        event = json.loads(lines[index])
        event["reason"] = "nothing to see here"
        del event["hash"]
        event["hash"] = protocol_hash(prev, event)
        lines[index] = canonical_json(event) + b"\n"

    return tamper


def _swap(lines: Lines) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def _reformat(lines: Lines) -> None:
    lines[2] = json.dumps(json.loads(lines[2]), sort_keys=True).encode() + b"\n"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda event: event.__setitem__(key, value)


TAMPERS: list[tuple[Callable[[Lines], None], int, str]] = [
    (_edit(2, _set("decision", "deny")), 3, "seq 3: hash does not match its content"),
    (_edit(0, _set("agent_id", "agent-root")), 1, "seq 1: hash does not match its content"),
    (
        _edit(1, lambda event: event["meta"].update(n=99)),
        2,
        "seq 2: hash does not match its content",
    ),
    (_edit(3, _set("extra", 1)), 4, "seq 4: fields do not match"),
    (_edit(3, lambda event: event.pop("meta")), 4, "seq 4: fields do not match"),
    (_edit_and_rehash(2), 4, "seq 4: hash does not match its content"),
    (lambda lines: lines.__delitem__(2), 3, "seq 3: found seq 4"),
    (_swap, 2, "seq 2: found seq 3"),
    (lambda lines: lines.insert(2, lines[1]), 3, "seq 3: found seq 2"),
    (lambda lines: lines.__setitem__(3, b"{not json\n"), 4, "seq 4: line is not valid JSON"),
    (lambda lines: lines.__setitem__(3, b"[4]\n"), 4, "seq 4: line is not a JSON object"),
    (
        lambda lines: lines.__setitem__(
            0, lines[0].replace(b'"latency_ms":12.5', b'"latency_ms":NaN')
        ),
        1,
        "seq 1: line is not valid JSON",
    ),
    (_reformat, 3, "seq 3: line is not in canonical JSON form"),
    (lambda lines: lines.__setitem__(4, lines[4][:-10]), 5, "seq 5: final line is incomplete"),
    (lambda lines: lines.append(lines[4]), 6, "seq 6: found seq 5"),
]


@pytest.mark.parametrize(
    ("tamper", "seq", "detail"),
    TAMPERS,
    ids=[
        "edited-field",
        "edited-agent-id",
        "edited-meta",
        "extra-field",
        "missing-field",
        "edited-and-rehashed",
        "deleted-middle-line",
        "swapped-lines",
        "duplicated-line",
        "bad-json-line",
        "json-array-line",
        "nan-value",
        "non-canonical-whitespace",
        "truncated-final-line",
        "replayed-last-line",
    ],
)
def test_verify_detects_tampering(
    log_path: Path, tamper: Callable[[Lines], None], seq: int, detail: str
) -> None:
    write_log(log_path, 5)
    lines = log_path.read_bytes().splitlines(keepends=True)
    tamper(lines)
    log_path.write_bytes(b"".join(lines))
    with pytest.raises(AuditChainError) as raised:
        verify_chain(log_path)
    assert raised.value.seq == seq
    assert raised.value.detail.startswith(detail)


def test_verify_reports_an_overlong_line(log_path: Path) -> None:
    write_log(log_path, 2)
    with log_path.open("ab") as stream:
        stream.write(b'{"x":"' + b"z" * (2 << 20) + b'"}\n')
    with pytest.raises(AuditChainError, match="seq 3: line is longer") as raised:
        verify_chain(log_path)
    assert raised.value.seq == 3


# -- reading back ---------------------------------------------------------------------------


def test_read_events_filters_and_limits(log_path: Path) -> None:
    with AuditLog(log_path) as log:
        for n in range(1, 9):
            append(
                log,
                request_id="req-x" if n in (2, 3) else f"req-{n}",
                agent_id="agent-a" if n % 2 else "agent-b",
            )

    assert [e["seq"] for e in read_events(log_path)] == list(range(1, 9))
    assert [e["seq"] for e in read_events(log_path, request_id="req-x")] == [2, 3]
    assert [e["seq"] for e in read_events(log_path, agent_id="agent-b")] == [2, 4, 6, 8]
    assert [e["seq"] for e in read_events(log_path, agent_id="agent-b", limit=2)] == [6, 8]
    assert [e["seq"] for e in read_events(log_path, limit=3)] == [6, 7, 8]
    assert [e["seq"] for e in read_events(log_path, request_id="req-x", agent_id="agent-a")] == [3]
    assert read_events(log_path, limit=0) == []
    assert read_events(log_path, request_id="nope") == []
    assert read_events(log_path, limit=100)[0]["hash"] == protocol_hash(
        GENESIS_HASH, read_events(log_path, limit=100)[0]
    )


def test_read_events_skips_unparsable_lines(log_path: Path) -> None:
    write_log(log_path, 3)
    lines = log_path.read_bytes().splitlines(keepends=True)
    log_path.write_bytes(lines[0] + b"garbage\n" + b"[1]\n" + lines[1] + lines[2][:-5])
    assert [e["seq"] for e in read_events(log_path)] == [1, 2]
    # A last line that lost only its newline parses, but it is still an unfinished write.
    log_path.write_bytes(lines[0] + lines[1] + lines[2][:-1])
    assert [e["seq"] for e in read_events(log_path)] == [1, 2]


def test_read_events_missing_file_and_bad_limit(tmp_path: Path) -> None:
    assert read_events(tmp_path / "none.jsonl") == []
    with pytest.raises(ValueError):
        read_events(tmp_path / "none.jsonl", limit=-1)
