"""Crash consistency of the audit trail (issue 7, promise 3), against a real gateway process.

A gateway killed with SIGKILL while requests are in flight must come back with a chain
that verifies (checkpoints included), every request the agent got a 2xx for must have
its decision event and then its outcome event in the log (promise 2), and a torn final
line must be moved to a side file and recorded, never dropped in silence. The ``[audit]
fsync`` modes and an interrupted rotation get the same treatment.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from audit_files import rotated_line
from burst import all_at_once
from conftest import enroll_agent, roomy_config
from gateway_process import run_agentzt, start_gateway

from agentzt.audit import verify_chain
from agentzt.config import Paths, load_gateway_settings
from agentzt.errors import AuditChainError
from agentzt.gateway.audit_trail import trail_checkpoints, verify_trail
from agentzt.identity import CLIENT_ASSERTION_TYPE, make_assertion, read_private_key
from agentzt.wire import REQUEST_ID_HEADER

AGENT = "agent-1"
ROLE = "demo-agent"
ROUNDS = 20
IN_FLIGHT = 56
MODEL_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Summarise the VPN policy in one line."}],
}
TOOL_BODY = {"arguments": {"query": "VPN policy"}}
# What each acknowledged request must have left, in this order: the decision written
# before acting, then the outcome. Benign prompts raise no guardrail notes.
EXPECTED = {
    "model": [("model.call.authorized", "allow", 0), ("model.call", "allow", 200)],
    "tool": [("tool.call.authorized", "allow", 0), ("tool.call", "allow", 200)],
}
TORN_GLOB = "gateway-audit.jsonl.torn-*"


# --- helpers ---------------------------------------------------------------------------


def set_audit(paths: Paths, **values: Any) -> None:
    """Rewrite keys of the shipped ``[audit]`` table (TOML forbids adding them twice)."""
    text = paths.gateway_toml.read_text()
    for key, value in values.items():
        text, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
        assert found == 1, key
    paths.gateway_toml.write_text(text)


def access_token(paths: Paths, url: str) -> str:
    """A plain bearer token for agent-1 (the config has dpop = "optional")."""
    key = read_private_key(paths.identity_key(AGENT))
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": make_assertion(key, AGENT, audience=f"{url}/v1/token", now=time.time()),
    }
    response = httpx.post(f"{url}/v1/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def kind_of(request_id: str) -> str:
    return request_id.rsplit("-", 1)[1]


def request_for(token: str, request_id: str) -> dict[str, Any]:
    """httpx arguments for one call; ``request_id`` names its kind (model or tool)."""
    headers = {"authorization": f"Bearer {token}", REQUEST_ID_HEADER: request_id}
    if kind_of(request_id) == "model":
        return {"method": "POST", "url": "/v1/messages", "json": MODEL_BODY, "headers": headers}
    return {"method": "POST", "url": "/v1/tools/kb.search", "json": TOOL_BODY, "headers": headers}


def request_ids(prefix: str, count: int) -> list[str]:
    """Distinct request ids, alternating model and tool calls (see ``kind_of``)."""
    return [f"{prefix}-{n}-{('model', 'tool')[n % 2]}" for n in range(count)]


def stop(proc: subprocess.Popen[bytes], stderr: Path) -> None:
    """Stop the gateway gracefully (uvicorn re-raises SIGTERM once shut down)."""
    proc.terminate()
    assert proc.wait(timeout=15) == -signal.SIGTERM
    assert "Traceback" not in stderr.read_text(errors="replace")


def audit_settings(paths: Paths) -> Any:
    return load_gateway_settings(paths.gateway_toml).audit


def newest_checkpoint(paths: Paths) -> int:
    """The size the newest checkpoint of the gateway's log signs; 0 for none."""
    found = trail_checkpoints(paths, audit_settings(paths))
    return max((checkpoint.size for _, checkpoint in found), default=0)


def verify(paths: Paths) -> None:
    """What ``agentzt audit --verify`` checks. The gateway must have written at least one
    checkpoint, so the log is checked against signed sizes and heads too, not only
    against itself."""
    assert newest_checkpoint(paths) > 0, "no checkpoint to verify against"
    verify_trail(paths, audit_settings(paths))


def events_of(log: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines()]


def assert_acknowledged_audited(log: bytes, acknowledged: list[str]) -> None:
    """Every acknowledged request has exactly its decision event, then its outcome."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for event in events_of(log):
        found.setdefault(event["request_id"], []).append(
            (event["action"], event["decision"], event["status"])
        )
    missing = {r: found.get(r) for r in acknowledged if found.get(r) != EXPECTED[kind_of(r)]}
    assert not missing, f"acknowledged requests without their events: {missing}"


def side_files(paths: Paths) -> set[Path]:
    return set(paths.audit_log.parent.glob(TORN_GLOB))


def assert_restart_kept(paths: Paths, before: bytes, sides_before: set[Path]) -> bool:
    """After a restart: the log still holds every byte it had, but for a torn final line,
    which is in a new side file byte for byte and on the record as ``audit.recovered``.
    Returns whether a torn line was quarantined."""
    after = paths.audit_log.read_bytes()
    new_sides = side_files(paths) - sides_before
    if not before or before.endswith(b"\n"):
        assert not new_sides, "a whole log was quarantined"
        assert after.startswith(before), "the restart changed events already written"
        return False
    cut = before.rfind(b"\n") + 1
    fragment = before[cut:]
    assert len(new_sides) == 1, f"the torn line was not quarantined: {new_sides}"
    (side,) = new_sides
    assert side.read_bytes() == fragment
    assert after.startswith(before[:cut])
    recovered = json.loads(after[cut:].split(b"\n", 1)[0])
    assert recovered["action"] == "audit.recovered"
    assert recovered["meta"] == {
        "quarantined_file": side.name,
        "quarantined_bytes": len(fragment),
        "quarantined_sha256": hashlib.sha256(fragment).hexdigest(),
        "offset": cut,
    }
    return True


def fire_and_kill(
    proc: subprocess.Popen[bytes], url: str, token: str, ids: list[str]
) -> tuple[list[str], int]:
    """Send ``ids`` concurrently and SIGKILL the gateway once half have been answered.

    Returns the ids answered 2xx and how many requests the kill cut off.
    """
    lock = threading.Lock()
    acknowledged: list[str] = []
    answered: list[int] = []
    half = threading.Event()

    def one(client: httpx.Client, request_id: str) -> None:
        try:
            response = client.request(**request_for(token, request_id))
        except httpx.TransportError:
            return  # cut off by the kill: never acknowledged
        with lock:
            answered.append(response.status_code)
            if 200 <= response.status_code < 300:
                acknowledged.append(request_id)
            if len(answered) >= len(ids) // 2:
                half.set()

    limits = httpx.Limits(max_connections=len(ids), max_keepalive_connections=len(ids))
    with (
        httpx.Client(base_url=url, timeout=30, limits=limits) as client,
        ThreadPoolExecutor(max_workers=len(ids)) as pool,
    ):
        futures = [pool.submit(one, client, request_id) for request_id in ids]
        assert half.wait(timeout=30), "the gateway never answered half the requests"
        proc.kill()
        assert proc.wait(timeout=10) == -signal.SIGKILL
        for future in futures:
            future.result()
    # Anything answered before the kill was served normally (generous rate limits).
    assert set(answered) == {200}, answered
    return acknowledged, len(ids) - len(answered)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture
def roomy(tmp_path: Path) -> Paths:
    paths = roomy_config(tmp_path)
    enroll_agent(paths, AGENT, ROLE)
    return paths


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root (config + home) whose log a real gateway wrote and closed: four calls,
    then a graceful stop, so a shutdown checkpoint covers the whole log. Tests copy it."""
    root = tmp_path_factory.mktemp("written")
    paths = roomy_config(root)
    enroll_agent(paths, AGENT, ROLE)
    started: list[subprocess.Popen[bytes]] = []
    try:
        proc, url = start_gateway(paths, started, root / "gw.stderr")
        token = access_token(paths, url)
        with httpx.Client(base_url=url, timeout=10) as client:
            for request_id in request_ids("base", 4):
                assert client.request(**request_for(token, request_id)).status_code == 200
        stop(proc, root / "gw.stderr")
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    yield root


def copy_of(written: Path, tmp_path: Path) -> Paths:
    root = tmp_path / "copy"
    shutil.copytree(written, root)
    return Paths(config_dir=root / "config", home=root / "home")


# --- promise 3: kill -9 with requests in flight, twenty times ---------------------------


def test_kill_9_with_requests_in_flight_keeps_every_acknowledged_event(
    roomy: Paths, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    paths = roomy
    # Default fsync ("batch"); checkpoints often, so kills land between checkpoints and
    # every restart is checked against signed sizes and heads that can be behind the log
    # but must never be ahead of it.
    set_audit(paths, checkpoint_every_events=50, checkpoint_every_seconds=0.5)
    assert audit_settings(paths).fsync == "batch"
    began = time.monotonic()
    proc, url = start_gateway(paths, procs, tmp_path / "gw-0.stderr")
    # A first checkpoint (of the token event, once its 0.5 s are up), so that even the
    # first kill is checked against a signed size and head.
    access_token(paths, url)
    deadline = time.monotonic() + 30
    while newest_checkpoint(paths) == 0:
        assert time.monotonic() < deadline, "the gateway wrote no checkpoint"
        time.sleep(0.05)
    first_checkpoint = newest_checkpoint(paths)
    all_acknowledged: list[str] = []
    torn_rounds = 0
    cut_off = 0
    for round_no in range(1, ROUNDS + 1):
        ids = request_ids(f"r{round_no}", IN_FLIGHT)
        acknowledged, lost = fire_and_kill(proc, url, access_token(paths, url), ids)
        assert acknowledged
        cut_off += lost
        all_acknowledged += acknowledged
        before = paths.audit_log.read_bytes()
        sides_before = side_files(paths)

        proc, url = start_gateway(paths, procs, tmp_path / f"gw-{round_no}.stderr")
        torn_rounds += assert_restart_kept(paths, before, sides_before)
        verify(paths)
        assert_acknowledged_audited(paths.audit_log.read_bytes(), acknowledged)

    elapsed = time.monotonic() - began
    # No later recovery took back what an earlier round acknowledged.
    assert_acknowledged_audited(paths.audit_log.read_bytes(), all_acknowledged)
    assert len(side_files(paths)) == torn_rounds
    # Checkpoints kept being written between the kills, and every restart verified
    # against them.
    assert newest_checkpoint(paths) > first_checkpoint
    # The test's own premise: the kills really did cut requests off mid-flight.
    assert cut_off > 0
    print(
        f"\n{ROUNDS} kill -9 rounds of {IN_FLIGHT} requests: {elapsed:.1f} s "
        f"({elapsed / ROUNDS:.2f} s a round), {len(all_acknowledged)} acknowledged, "
        f"{cut_off} cut off, {torn_rounds} rounds left a torn line"
    )


# --- a torn final line ------------------------------------------------------------------


def test_torn_final_line_is_quarantined_once_and_recorded(
    written: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    paths = copy_of(written, tmp_path)
    log = paths.audit_log
    last_line = log.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    # What a crash mid-write leaves (half an event) and what a power cut leaves (a run of
    # zeros the file was extended by before its data reached the disk).
    fragments = [last_line[: len(last_line) // 2], b"\0" * 4096]
    for n, fragment in enumerate(fragments):
        before = log.read_bytes()
        last_seq = events_of(before)[-1]["seq"]
        sides_before = side_files(paths)
        with log.open("ab") as file:
            file.write(fragment)
        # Unrecovered, the log does not verify: the tear is real.
        with pytest.raises(AuditChainError):
            verify_chain(log)

        stderr = tmp_path / f"gw-{n}.stderr"
        proc, url = start_gateway(paths, procs, stderr)
        assert assert_restart_kept(paths, before + fragment, sides_before)
        (side,) = side_files(paths) - sides_before
        assert side.read_bytes() == fragment
        assert side.stat().st_mode & 0o077 == 0
        recovered = events_of(log.read_bytes())[len(events_of(before))]
        assert recovered["seq"] == last_seq + 1
        # The gateway serves on, chaining after the recovery event.
        token = access_token(paths, url)
        (request_id,) = request_ids(f"after-torn-{n}", 1)
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.request(**request_for(token, request_id)).status_code == 200
        stop(proc, stderr)
        verify(paths)
        assert_acknowledged_audited(log.read_bytes(), [request_id])

    # A further restart finds nothing to quarantine and records no recovery.
    before = log.read_bytes()
    sides_before = side_files(paths)
    stderr = tmp_path / "gw-again.stderr"
    proc, _ = start_gateway(paths, procs, stderr)
    stop(proc, stderr)
    after = log.read_bytes()
    assert side_files(paths) == sides_before
    assert after.startswith(before)
    assert all(e["action"] != "audit.recovered" for e in events_of(after[len(before) :]))
    assert [e["action"] for e in events_of(after)].count("audit.recovered") == 2
    verify(paths)


# --- fsync modes ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_each_fsync_mode_serves_and_a_killed_gateway_loses_nothing(
    written: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]], mode: str
) -> None:
    paths = copy_of(written, tmp_path)
    set_audit(paths, fsync=mode)
    proc, url = start_gateway(paths, procs, tmp_path / "gw.stderr")
    ids = request_ids(mode, 16)
    token = access_token(paths, url)
    responses = all_at_once(url, [request_for(token, r) for r in ids])
    assert [r.status_code for r in responses] == [200] * len(ids)
    # In every mode an acknowledged event is at least in the kernel, so kill -9 (unlike
    # a power cut) loses none of them, and no restart is needed to verify.
    proc.kill()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    verify(paths)
    assert_acknowledged_audited(paths.audit_log.read_bytes(), ids)


@pytest.mark.parametrize(
    ("key", "value"), [("fsync", "sometimes"), ("fsync_interval_ms", 0)], ids=["fsync", "interval"]
)
def test_invalid_fsync_setting_stops_the_gateway_with_one_line(
    roomy: Paths, key: str, value: Any
) -> None:
    set_audit(roomy, **{key: value})
    result = run_agentzt(roomy, "gateway", "--port", "0", timeout=20)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"'audit.{key}'" in lines[0]
    assert not roomy.audit_log.exists()


# --- a rotation interrupted between its two renames -------------------------------------


@pytest.mark.parametrize("renamed", [True, False], ids=["after-first-rename", "before-it"])
def test_start_up_completes_or_discards_an_interrupted_rotation(
    written: Path, tmp_path: Path, procs: list[subprocess.Popen[bytes]], renamed: bool
) -> None:
    paths = copy_of(written, tmp_path)
    active = paths.audit_log
    pending = active.with_name(f".{active.name}.next")
    sealed = active.read_bytes()
    archive, line = rotated_line(active)
    # The rotation writes the new file under its side name first, then renames the active
    # file to its archive name, then the side file to the active name.
    pending.write_bytes(line)
    if renamed:
        active.rename(archive)

    proc, url = start_gateway(paths, procs, tmp_path / "gw.stderr")
    token = access_token(paths, url)
    (request_id,) = request_ids("after-rotation", 1)
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.request(**request_for(token, request_id)).status_code == 200
    stop(proc, tmp_path / "gw.stderr")

    assert not pending.exists()
    if renamed:
        # Finished: the archive is untouched and the active file begins with the rotation.
        assert archive.read_bytes() == sealed
        assert active.read_bytes().startswith(line)
    else:
        # Discarded: the side file's event never joined the chain.
        assert not archive.exists()
        assert active.read_bytes().startswith(sealed)
        assert b"audit.rotated" not in active.read_bytes()
    verify(paths)
    assert_acknowledged_audited(active.read_bytes(), [request_id])
