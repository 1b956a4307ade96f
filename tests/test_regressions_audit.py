"""Named regression tests for the audit log, one per defect an adversarial review found.

Each test but the last failed on the code before its fix (commit 241455c); the last one
keeps the nesting-bomb fix from refusing what is only a torn line. Logs are written by the
product's own writer (``AuditLog``, or the gateway's trail from ``open_audit_trail``),
then changed on disk the way someone holding the gateway's account could change them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_files import rotated_line
from gateway_process import run_agentzt as agentzt

from agentzt.audit import AuditWriter, Draft, canonical_json, chain_hash, read_events, verify_chain
from agentzt.audit.log import AuditLog
from agentzt.audit.query import Follower
from agentzt.config import AuditSettings, Paths, load_gateway_settings
from agentzt.errors import AuditChainError, AuditWriteError
from agentzt.gateway.audit_trail import open_audit_trail, verify_trail

HASH_KEY = b',"hash":"'
# A line of nothing but open brackets: deeper than Python's recursion limit, so a JSON
# parser that is not guarded against it raises RecursionError instead of ValueError.
NESTING_BOMB = b"[" * 2000
# The side name a rotation writes the next active file under before renaming it into place.
PENDING_NAME = ".gateway-audit.jsonl.next"


def fields(i: int) -> dict[str, Any]:
    return {
        "request_id": f"req_{i}",
        "agent_id": "agent-1",
        "role": "researcher",
        "action": "tool.call",
        "resource": "tool:kb.search",
        "decision": "allow",
        "reason": "ok",
        "status": 200,
        "latency_ms": 1.0,
        "meta": {"i": i},
    }


def audit_settings(paths: Paths) -> AuditSettings:
    return load_gateway_settings(paths.gateway_toml).audit


def gateway_run(paths: Paths, events: int) -> None:
    """One gateway run: open the trail, write ``events`` events, stop (final checkpoint)."""
    writer, _ = open_audit_trail(paths, audit_settings(paths), time.time)
    for i in range(events):
        writer.append(**fields(i))
    writer.close()


def open_log(paths: Paths) -> None:
    """Open the gateway's log as its start-up does first, and close it again."""
    AuditLog(paths.audit_log).close()


def start_trail(paths: Paths) -> None:
    """Start the gateway's audit trail (log, checkpoint check, writer), and stop it again."""
    open_audit_trail(paths, audit_settings(paths), time.time)[0].close()


def write_log(path: Path, events: int) -> None:
    with AuditLog(path) as log:
        for i in range(events):
            log.append(**fields(i))


def log_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def rechain(lines: list[bytes]) -> bytes:
    """Recompute every hash, as a forger who knows PROTOCOL.md would.

    A JSON line gets ``sha256(prev + "\\n" + canonical_json(event without hash))``; a line
    that is not JSON gets the hash of its bytes without the hash member, which is what
    the formula gives for a canonical line.
    """
    prev = "0" * 64
    out = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            cut = line.index(HASH_KEY)
            body = line[:cut] + line[cut + 74 :]
            prev = hashlib.sha256(prev.encode() + b"\n" + body).hexdigest()
            out.append(line[: cut + 9] + prev.encode() + line[cut + 73 :])
            continue
        event.pop("hash")
        prev = chain_hash(prev, event)
        out.append(canonical_json({**event, "hash": prev}))
    return b"\n".join(out) + b"\n"


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    assert "RecursionError" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def checkpoint_snapshot(paths: Paths) -> dict[Path, bytes]:
    """The bytes of every checkpoint file: the one beside the log and the witness's."""
    witness = paths.witness_dir(audit_settings(paths).witness_dir)
    assert witness is not None
    files = [paths.audit_log.parent / "checkpoint", *sorted(witness.glob("*.checkpoint"))]
    return {f: f.read_bytes() for f in files if f.exists()}


# --- 1. the closing quote of the hash member ------------------------------------------------


def test_changed_closing_quote_of_hash_breaks_the_chain_at_that_seq(paths: Paths) -> None:
    # The fast check hashed every byte except the hash member, and read the 64 hex
    # digits by position, so the byte after them was covered by nothing: one changed
    # byte verified OK (and made the event unreadable, so it vanished from queries),
    # even under a checkpoint signed over it.
    gateway_run(paths, 10)
    settings = audit_settings(paths)
    assert [cp.size for _, cp in verify_trail(paths, settings).checkpoints] == [10, 10]
    lines = log_lines(paths.audit_log)
    line = lines[4]
    quote = line.index(HASH_KEY) + 73
    assert line[quote : quote + 1] == b'"'
    lines[4] = line[:quote] + b"X" + line[quote + 1 :]
    paths.audit_log.write_bytes(b"\n".join(lines) + b"\n")

    with pytest.raises(AuditChainError) as caught:
        verify_trail(paths, settings)
    assert caught.value.seq == 5


# --- 2. a wrong seq in the middle of a block ------------------------------------------------


@pytest.mark.parametrize(
    ("line_no", "forge"),
    [
        pytest.param(5, lambda line: line.replace(b',"seq":5,', b',"seq":3,'), id="dup-seq"),
        pytest.param(6, lambda line: b'garbage,"hash":"' + b"0" * 64 + b'"', id="not-json"),
    ],
)
def test_line_out_of_sequence_mid_block_breaks_the_chain_at_its_seq(
    tmp_path: Path, line_no: int, forge: Callable[[bytes], bytes]
) -> None:
    # Only the last line of each 1 MiB block had its seq read; a line in between could
    # carry any seq, or not be an event at all, as long as the hashes were recomputed.
    path = tmp_path / "gateway-audit.jsonl"
    write_log(path, 10)
    lines = log_lines(path)
    forged = forge(lines[line_no - 1])
    assert forged != lines[line_no - 1]
    lines[line_no - 1] = forged
    path.write_bytes(rechain(lines))

    with pytest.raises(AuditChainError) as caught:
        verify_chain(path)
    assert caught.value.seq == line_no


# --- 3. a nesting bomb as the last line ------------------------------------------------------


def _bombed_log(paths: Paths) -> Path:
    write_log(paths.audit_log, 10)
    with paths.audit_log.open("ab") as stream:
        stream.write(NESTING_BOMB + b"\n")
    return paths.audit_log


def _verify_reports_it(paths: Paths) -> None:
    with pytest.raises(AuditChainError) as caught:
        verify_chain(_bombed_log(paths))
    assert caught.value.seq == 11


def _reader_skips_it(paths: Paths) -> None:
    events = read_events(_bombed_log(paths))
    assert [e["seq"] for e in events] == list(range(1, 11))


def _cli_verify_says_broken(paths: Paths) -> None:
    _bombed_log(paths)
    done = agentzt(paths, "audit", "--verify")
    assert done.returncode == 1
    assert "seq 11" in one_line(done.stderr)


def _start_up_refuses(paths: Paths) -> None:
    _bombed_log(paths)
    for start in (open_log, start_trail):
        with pytest.raises(AuditWriteError) as caught:
            start(paths)
        assert "\n" not in str(caught.value)
    assert paths.audit_log.read_bytes().endswith(NESTING_BOMB + b"\n")


@pytest.mark.parametrize(
    "check",
    [_verify_reports_it, _reader_skips_it, _cli_verify_says_broken, _start_up_refuses],
    ids=["verify_chain", "read_events", "cli-verify", "start-up"],
)
def test_nesting_bomb_line_is_damage_not_a_recursion_error(
    paths: Paths, check: Callable[[Paths], None]
) -> None:
    # json.loads raises RecursionError, not ValueError, on a line nested deeper than the
    # interpreter's recursion limit; every reader caught ValueError only.
    check(paths)


# --- 4. checkpoint laundering ----------------------------------------------------------------


def test_rewritten_log_grown_past_its_checkpoint_is_refused_at_start_up(paths: Paths) -> None:
    # Start-up compared the checkpoint with the log's head only when the log had exactly
    # the checkpoint's size: one forged event more and the rewritten log started, and its
    # next seal replaced the checkpoints that proved the rewrite, locally and at the witness.
    gateway_run(paths, 20)
    settings = audit_settings(paths)
    assert [cp.size for _, cp in verify_trail(paths, settings).checkpoints] == [20, 20]
    before = checkpoint_snapshot(paths)
    assert len(before) == 2

    events = [json.loads(line) for line in log_lines(paths.audit_log)]
    events[2].update(action="tool.reject", decision="deny")
    paths.audit_log.write_bytes(rechain([canonical_json(e) for e in events]))
    with AuditLog(paths.audit_log) as log:
        log.append(**fields(20))
        assert log.seq == 21
    verify_chain(paths.audit_log)  # the rewritten chain is valid in itself

    try:
        writer, _ = open_audit_trail(paths, settings, time.time)
    except AuditWriteError as exc:
        refusal: str | None = str(exc)
    else:
        writer.close()
        refusal = None
    assert checkpoint_snapshot(paths) == before, "the checkpoints proving the rewrite were replaced"
    assert refusal is not None, "the gateway started on a log rewritten under its checkpoint"
    assert "\n" not in refusal
    assert "seq 20" in refusal


# --- 5. --follow across rotations ------------------------------------------------------------


def rotation_cut_short(active: Path) -> None:
    """Leave ``active`` as a gateway killed between a rotation's two renames leaves it: the
    next file written under its side name, the active file renamed to its archive name."""
    archive, line = rotated_line(active)
    active.with_name(PENDING_NAME).write_bytes(line)
    active.rename(archive)


def test_follower_delivers_every_line_once_in_order_across_rotations(tmp_path: Path) -> None:
    # At the end of the file it was reading, the follower took any change at the path for
    # a finished rotation: it dropped what the old file got after its last read, and when
    # the path was missing (between a rotation's two renames) it forgot which file it had
    # read, so every file sealed before it looked again was skipped.
    path = tmp_path / "audit" / "gateway-audit.jsonl"
    log = AuditLog(path, max_file_bytes=4096)
    log.append(**fields(0))
    first = log.seq + 1
    follower = Follower(path, poll_seconds=0)
    changed = threading.Condition()
    rotations = 0
    cut_at = 0  # the last seq before the rotation cut short
    final = 0
    cut, looked, resumed, done = (threading.Event() for _ in range(4))
    failure: list[BaseException] = []

    def rotated(rotated_now: bool) -> None:
        nonlocal rotations
        if rotated_now:
            with changed:
                rotations += 1
                changed.notify_all()

    def write() -> None:
        nonlocal log, cut_at, final
        try:
            # Live: many rotations while the follower reads.
            for i in range(1, 2001):
                log.append(**fields(i))
                rotated(log.rotate_if_due())
            # The gateway dies between the two renames of a rotation; once the follower
            # has found no active file, the next start finishes the rotation and seals
            # several more files before the follower reads again.
            cut_at = log.seq
            log.close()
            rotation_cut_short(path)
            with changed:
                cut.set()
                changed.notify_all()
            # If the last file before the cut was sealed while the follower was still on
            # an earlier one, it cannot reach the cut until the path is back (it waits
            # out a missing path): then the restart simply comes first.
            looked.wait(timeout=5)
            log = AuditLog(path, max_file_bytes=4096)
            for i in range(100):
                log.append(**fields(i))
                rotated(log.rotate_if_due())
            resumed.set()
            for i in range(100):
                log.append(**fields(i))
                rotated(log.rotate_if_due())
            final = log.seq
        except BaseException as exc:
            failure.append(exc)
        finally:
            for event in (cut, resumed, done):
                event.set()
            with changed:
                changed.notify_all()

    # A bound on the test, not an assertion: a follower that loses the last line would
    # otherwise wait for it forever.
    deadline = time.monotonic() + 60
    seen: list[int] = []
    polls_without_file = 0

    def finished() -> bool:
        # Called by the follower before each read, so blocking here is not reading.
        nonlocal polls_without_file
        if time.monotonic() > deadline:
            return True
        if cut.is_set() and not resumed.is_set() and seen and seen[-1] == cut_at:
            # Everything before the cut is read; the next read finds the end of the file
            # and no file at the path, and the poll after that is where this stops it.
            polls_without_file += 1
            if polls_without_file >= 2:
                looked.set()
                resumed.wait(timeout=30)
        return done.is_set() and bool(seen) and seen[-1] >= final

    def three_more_sealed(since: int) -> Callable[[], bool]:
        return lambda: rotations >= since + 3 or cut.is_set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for line in follower.lines(stop=finished):
            seen.append(json.loads(line)["seq"])
            if len(seen) % 400 == 0 and not cut.is_set():
                # Stop reading while the writer seals several whole files.
                with changed:
                    changed.wait_for(three_more_sealed(rotations), timeout=10)
    finally:
        writer.join(timeout=30)
        log.close()
    assert not failure, failure
    assert rotations > 100
    assert verify_chain(path).events == final
    expected = list(range(first, final + 1))
    missing = sorted(set(expected) - set(seen))
    assert seen == expected, (
        f"{len(missing)} lines missing (first {missing[:10]}), "
        f"{len(seen) - len(set(seen))} delivered twice"
    )


# --- 6. a second start during a rotation -----------------------------------------------------


def test_second_start_during_a_rotation_is_refused_and_touches_nothing(paths: Paths) -> None:
    # The interrupted-rotation repair ran before the lock was taken, so a second gateway
    # start deleted the running gateway's half-done next file, then failed on the lock.
    settings = audit_settings(paths)
    running, _ = open_audit_trail(paths, settings, time.time)
    try:
        running.append(**fields(0))
        pending = paths.audit_log.with_name(PENDING_NAME)
        # What the running gateway's rotation has written between its two renames.
        pending.write_bytes(b'{"action":"audit.rotated"}\n')
        for start in (open_log, start_trail):
            with pytest.raises(AuditWriteError) as caught:
                start(paths)
            assert "locked" in str(caught.value)
            assert pending.is_file(), "the refused start removed the running rotation's file"
            assert pending.read_bytes() == b'{"action":"audit.rotated"}\n'
    finally:
        running.close()


# --- 7. --since out of range -----------------------------------------------------------------


@pytest.mark.parametrize("since", ["999999999d", "9999-12-31T23:59:59-01:00"])
def test_export_since_out_of_range_is_a_usage_error(paths: Paths, since: str) -> None:
    # Both parse, then overflow the datetime range (one going back, one going to UTC),
    # outside the error handling that turned a bad --since into a usage error.
    write_log(paths.audit_log, 1)
    done = agentzt(paths, "audit", "export", "--since", since)
    assert done.returncode == 2, done.stderr
    assert "--since" in one_line(done.stderr)
    assert done.stdout == ""


# --- 8. a torn final line that is a nesting bomb ---------------------------------------------


def test_torn_nesting_bomb_is_quarantined_like_any_torn_line(paths: Paths) -> None:
    # The start-up parse that now turns a nesting bomb into a refusal must only judge
    # complete lines: a torn one, whatever its bytes, is moved aside and recorded.
    write_log(paths.audit_log, 3)
    with paths.audit_log.open("ab") as stream:
        stream.write(NESTING_BOMB)
    writer, _ = open_audit_trail(paths, audit_settings(paths), time.time)
    writer.close()

    (side,) = paths.audit_log.parent.glob("gateway-audit.jsonl.torn-*")
    assert side.read_bytes() == NESTING_BOMB
    events = read_events(paths.audit_log)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[-1]["action"] == "audit.recovered"
    assert events[-1]["meta"]["quarantined_file"] == side.name
    assert events[-1]["meta"]["quarantined_bytes"] == len(NESTING_BOMB)
    assert events[-1]["meta"]["quarantined_sha256"] == hashlib.sha256(NESTING_BOMB).hexdigest()
    assert verify_trail(paths, audit_settings(paths)).events == 4


def test_follower_started_before_the_log_exists_misses_no_sealed_file(tmp_path: Path) -> None:
    """`agentzt audit --follow` started before the gateway's first start: files sealed
    before the follower's first read are still delivered, from seq 1."""
    path = tmp_path / "gateway-audit.jsonl"
    follower = Follower(path, poll_seconds=0)
    with AuditLog(path, max_file_bytes=4096) as log:
        for i in range(60):
            log.append(
                request_id=f"r{i}",
                agent_id=None,
                role=None,
                action="x",
                resource=None,
                decision="allow",
                reason="",
                status=0,
                latency_ms=0,
            )
            log.rotate_if_due()
        last = log.seq
    seen: list[int] = []
    for line in follower.lines(stop=lambda: bool(seen) and seen[-1] >= last):
        seen.append(json.loads(line)["seq"])
    assert seen == list(range(1, last + 1))


def _draft(i: int) -> Draft:
    return Draft(f"r{i}", "agent", "role", "x", None, "allow", "ok", 200, 1.0)


def test_batch_mode_syncs_within_its_interval_after_an_idle_spell(tmp_path: Path) -> None:
    """An inline write made while the writer task slept without a timer woke nobody, so
    in batch mode the event was never synced (or only at the next checkpoint)."""

    async def scenario() -> tuple[int, int]:
        writer = AuditWriter(AuditLog(tmp_path / "a.jsonl"), fsync="batch", fsync_interval=0.1)
        await writer.record(_draft(1))
        # Long enough for the first sync to happen and the writer to go idle again.
        deadline = time.monotonic() + 10
        while writer._log.synced_seq < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.02)  # less than the interval since that sync
        await writer.record(_draft(2))
        deadline = time.monotonic() + 10
        while writer._log.synced_seq < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        synced = writer._log.synced_seq
        await writer.aclose()
        return writer.seq, synced

    seq, synced = asyncio.run(scenario())
    assert (seq, synced) == (2, 2)


def test_follower_never_glues_a_quarantined_torn_line_to_the_next_one(tmp_path: Path) -> None:
    """A crash left half a line; the restart cut it off and wrote audit.recovered. The
    follower held the half line and glued the next bytes to it: a line nobody wrote."""
    path = tmp_path / "gateway-audit.jsonl"
    path.write_bytes(b'{"seq":1}\n')
    follower = Follower(path, poll_seconds=0.005)
    got: list[bytes] = []
    half_read = threading.Event()
    stop = threading.Event()

    def until() -> bool:
        if len(path.read_bytes()) > len(b'{"seq":1}\n'):
            half_read.set()
        return stop.is_set()

    reader = threading.Thread(target=lambda: got.extend(follower.lines(until)), daemon=True)
    reader.start()
    with path.open("ab") as stream:
        stream.write(b'{"seq":2,"reason":"torn by kill -9')
    assert half_read.wait(10)
    time.sleep(0.05)  # the follower polls the half line at least once more
    os.truncate(path, len(b'{"seq":1}\n'))
    with path.open("ab") as stream:
        stream.write(b'{"seq":2,"action":"audit.recovered"}\n{"seq":3}\n')
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    reader.join(10)
    assert got == [b'{"seq":2,"action":"audit.recovered"}\n', b'{"seq":3}\n']


def test_close_after_the_loop_is_gone_writes_what_was_queued(tmp_path: Path) -> None:
    """Events handed over just before the loop ended (a stream's last outcome, say) were
    dropped by close(), or cancelled on their way to the disk thread."""
    writer = AuditWriter(AuditLog(tmp_path / "a.jsonl"), fsync="always")

    async def scenario() -> None:
        first = writer.submit(_draft(1))
        await asyncio.sleep(0)
        writer.submit(_draft(2))
        await first
        await asyncio.sleep(0)
        writer.submit(_draft(3))  # nobody waits: the loop ends now

    asyncio.run(scenario())
    writer.close()
    assert writer.seq == 3
    assert verify_chain(tmp_path / "a.jsonl").events == 3
