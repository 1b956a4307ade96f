"""``agentzt audit`` as an operator runs it: a real gateway writes the log (rotated into
several files), and the command line reads it back as a subprocess."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import pytest
from conftest import enroll_agent
from gateway_process import agentzt_argv, child_env
from gateway_process import run_agentzt as cli

from agentzt.audit import Correlator
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import make_assertion, read_private_key
from agentzt.identity.signed_note import load_or_create_note_signer
from agentzt.server import BackgroundServer, bind, url_of
from agentzt.tools import INJECTION_PAYLOAD

AGENT = "agent-1"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REQUEST_ID = "x-agentzt-request-id"
SMALLEST_FILE = 4096
# Long enough for any event to come through a poll of the follower and a pipe.
WAIT = 30.0


class ShiftedClock:
    """Real time plus an offset the test moves, so events can be dated in the past."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def at(self, moment: datetime) -> None:
        self.offset = moment.timestamp() - time.time()


@dataclass
class Running:
    """One gateway serving in this process, writing the log the CLI reads."""

    paths: Paths
    gateway: Gateway
    server: BackgroundServer
    clock: ShiftedClock
    client: httpx.Client

    @property
    def log(self) -> Path:
        return self.paths.audit_log

    def stop(self) -> None:
        """Shut the gateway down, which writes its final signed checkpoint."""
        self.client.close()
        self.server.stop()

    def token(self, request_id: str = "token") -> str:
        """A fresh bearer access token for agent-1, got at the token endpoint."""
        key = read_private_key(self.paths.identity_key(AGENT))
        assertion = make_assertion(
            key, AGENT, audience=self.gateway.token_endpoint, now=self.clock()
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        resp = self.client.post(
            "/v1/token",
            content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded", REQUEST_ID: request_id},
        )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["access_token"]
        return token

    def ask(self, token: str, request_id: str, prompt: str = "hello") -> httpx.Response:
        resp = self.client.post(
            "/v1/messages",
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": prompt}],
            },
            headers={"authorization": f"Bearer {token}", REQUEST_ID: request_id},
        )
        assert resp.status_code == 200, resp.text
        return resp

    def search(self, token: str, request_id: str) -> httpx.Response:
        resp = self.client.post(
            "/v1/tools/kb.search",
            json={"arguments": {"query": "vpn"}},
            headers={"authorization": f"Bearer {token}", REQUEST_ID: request_id},
        )
        assert resp.status_code == 200, resp.text
        return resp


def small_files(paths: Paths) -> None:
    """Rotate past 4 KiB (a handful of events a file), and let the input guardrail flag
    rather than block, so a flagged call has a note before its decision event."""
    text = paths.gateway_toml.read_text()
    edited = text.replace("max_file_bytes = 67108864", f"max_file_bytes = {SMALLEST_FILE}")
    edited = edited.replace('mode = "block"', 'mode = "flag"')
    assert edited.count(str(SMALLEST_FILE)) == 1 and 'mode = "flag"' in edited
    paths.gateway_toml.write_text(edited)


def place_checkpoint_key(paths: Paths, *, plus: bool) -> None:
    """Give the gateway a checkpoint key whose published vkey has (or has not) a "+" in
    its base64 key: about half of all keys have one, and a verifier that parses the
    vkey must take both."""
    scratch = paths.home / "scratch"
    for attempt in range(200):
        candidate = scratch / f"{attempt}.key"
        vkey = load_or_create_note_signer(candidate).verifier.vkey()
        _name, _hash, key = vkey.split("+", 2)
        if ("+" in key) == plus:
            paths.checkpoint_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            paths.checkpoint_key.write_bytes(candidate.read_bytes())
            paths.checkpoint_key.chmod(0o600)
            shutil.rmtree(scratch)
            return
    raise AssertionError("no such key in 200 tries")


@pytest.fixture
def running(paths: Paths, request: pytest.FixtureRequest) -> Iterator[Running]:
    """A gateway whose log rotates every few events; parametrized indirectly with
    "plus" or "plain", it signs checkpoints with such a key (see place_checkpoint_key)."""
    small_files(paths)
    enroll_agent(paths, AGENT, "demo-agent")
    if hasattr(request, "param"):
        place_checkpoint_key(paths, plus=request.param == "plus")
    clock = ShiftedClock()
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock), clock=clock)
    server = BackgroundServer(create_app(gateway), sock).start()
    client = httpx.Client(base_url=server.url, timeout=10)
    run = Running(paths=paths, gateway=gateway, server=server, clock=clock, client=client)
    try:
        yield run
    finally:
        run.stop()


def one_line_error(stderr: str) -> str:
    """The single ``agentzt: error:`` line a failure prints, with no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("agentzt: error: "), lines[0]
    return lines[0]


def log_files(log: Path) -> list[Path]:
    """The archives in seq order (their names carry the last seq), then the active file."""
    pattern = re.compile(re.escape(log.stem) + r"-\d{12}" + re.escape(log.suffix))
    archived = sorted(p for p in log.parent.iterdir() if pattern.fullmatch(p.name))
    return [*archived, log]


def log_lines(log: Path) -> list[bytes]:
    """Every line of every file of the log, newline included, as the files hold them.

    The gateway rotates on its disk thread, after the response that filled the file, so
    a read can overlap a rotation: the active file may be missing (between the two
    renames) or already the new one while the list of archives predates it. Such a read
    is taken again; a read is whole when the files were the same before and after it.
    """
    deadline = time.monotonic() + WAIT
    while True:
        files = log_files(log)
        try:
            lines = [line for path in files for line in path.read_bytes().splitlines(keepends=True)]
        except FileNotFoundError:
            lines = None
        if lines is not None and log_files(log) == files:
            return lines
        assert time.monotonic() < deadline, f"no settled read of {log} within {WAIT} s"
        time.sleep(0.01)


def log_events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_lines(log)]


# --- audit --request-id ---------------------------------------------------------------------


def test_request_id_shows_all_its_events_in_order_across_files(running: Running) -> None:
    token = running.token()
    # One request id reused by 30 calls, among calls of other ids: more events than the
    # default --limit of 50, spread over many rotated files.
    wanted = "story-1"
    for number in range(30):
        prompt = INJECTION_PAYLOAD if number % 10 == 0 else "hello"
        running.ask(token, wanted, prompt)
        running.search(token, f"other-{number}")
    running.stop()

    assert len(log_files(running.log)) > 3
    lines = {json.loads(line)["seq"]: line for line in log_lines(running.log)}
    expected = [e for e in log_events(running.log) if e["request_id"] == wanted]
    assert len(expected) > 60
    # Guardrail notes come first, then the decision event, then the outcome.
    story = [e["action"] for e in expected]
    call = ["model.call.authorized", "model.call"]
    assert story == (["guardrail.flag", *call] + call * 9) * 3
    assert [e["status"] for e in expected[:3]] == [0, 0, 200]

    shown = cli(running.paths, "audit", "--request-id", wanted, "--json")
    assert shown.returncode == 0, shown.stderr
    printed = shown.stdout.splitlines()
    assert [json.loads(line) for line in printed] == expected
    # Canonical JSON: each printed line is the very line the log holds, bar its newline.
    assert [line.encode() + b"\n" for line in printed] == [lines[e["seq"]] for e in expected]

    table = cli(
        running.paths, "audit", "--request-id", wanted, env={**child_env(), "COLUMNS": "250"}
    )
    assert table.returncode == 0, table.stderr
    rows = [m[1] for m in re.finditer(r"^│ +(\d+) +│", table.stdout, re.MULTILINE)]
    assert rows == [str(e["seq"]) for e in expected]


def test_request_id_of_nothing_prints_nothing(running: Running) -> None:
    running.ask(running.token(), "seen")
    shown = cli(running.paths, "audit", "--request-id", "never-seen", "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == ""


# --- audit --follow -----------------------------------------------------------------------


class Reader:
    """The lines a child prints, collected by a thread, so the test waits with a timeout
    instead of blocking on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next_event(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no event printed within {WAIT} s") from None
        assert line is not None, "the follower stopped printing"
        event = json.loads(line)
        assert isinstance(event, dict)
        return cast(dict[str, Any], event)

    def until_seq(self, seq: int) -> list[dict[str, Any]]:
        events = [self.next_event()]
        while events[-1]["seq"] < seq:
            events.append(self.next_event())
        return events

    def rest(self) -> list[str]:
        """What is left once the child has exited."""
        left: list[str] = []
        while (line := self._lines.get(timeout=WAIT)) is not None:
            left.append(line)
        return left


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def follow(paths: Paths, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        agentzt_argv(paths, "audit", "--follow", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=paths.config_dir.parent,
        env=child_env(),
    )
    started.append(proc)
    return proc


def wait_for_history(running: Running, reader: Reader) -> list[dict[str, Any]]:
    """The events the follower prints first. The history is read after following begins,
    so once the last event written before the start is printed, everything written from
    then on is the follower's to catch."""
    return reader.until_seq(log_events(running.log)[-1]["seq"])


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_follow_prints_new_events_across_rotations_and_stops_on_a_signal(
    running: Running, children: list[subprocess.Popen[str]], stop: signal.Signals
) -> None:
    token = running.token()
    running.ask(token, "before")
    proc = follow(running.paths, children)
    reader = Reader(proc)
    history = wait_for_history(running, reader)
    assert [e["request_id"] for e in history][-2:] == ["before", "before"]

    # One call at a time, each seen printed before the next: the log rotates at most
    # once between two reads of the follower.
    files_before = len(log_files(running.log))
    live: list[dict[str, Any]] = []
    for number in range(12):
        running.ask(token, f"live-{number}")
        live += reader.until_seq(log_events(running.log)[-1]["seq"])
    assert len(log_files(running.log)) > files_before + 1
    # The file the last call filled may rotate after its response: the follower had no
    # reason to wait for that audit.rotated, so compare up to the last event it printed.
    written = log_events(running.log)[len(history) :]
    assert live == [e for e in written if e["seq"] <= live[-1]["seq"]]
    assert "audit.rotated" in [e["action"] for e in live]

    proc.send_signal(stop)
    assert proc.wait(timeout=WAIT) == 0
    assert reader.rest() == []
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_follow_misses_nothing_when_the_log_rotates_twice_between_its_reads(
    running: Running, children: list[subprocess.Popen[str]]
) -> None:
    token = running.token()
    proc = follow(running.paths, children)
    reader = Reader(proc)
    history = wait_for_history(running, reader)
    # The follower is stopped (as a busy machine may keep it from running) while the
    # log rotates several times; once it runs again, every event still has to be
    # printed, in order, once.
    proc.send_signal(signal.SIGSTOP)
    try:
        # Enough calls for at least three rotations at 4096 bytes a file (a file may
        # run a little past the size before its rotation comes round).
        for number in range(24):
            running.ask(token, f"burst-{number}")
    finally:
        proc.send_signal(signal.SIGCONT)
    written = log_events(running.log)
    assert [e["action"] for e in written[len(history) :]].count("audit.rotated") > 2
    printed = reader.until_seq(written[-1]["seq"])
    assert [e["seq"] for e in printed] == [e["seq"] for e in written[len(history) :]]
    assert printed == written[len(history) :]


# --- audit export ---------------------------------------------------------------------------


def since_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def export(paths: Paths, *args: str) -> subprocess.CompletedProcess[bytes]:
    # Bytes, not text: export must print the lines exactly as stored.
    return subprocess.run(
        agentzt_argv(paths, "audit", "export", *args),
        capture_output=True,
        timeout=60,
        cwd=paths.config_dir.parent,
        env=child_env(),
        check=False,
    )


def test_export_since_prints_the_log_lines_from_that_time_on(running: Running) -> None:
    # Calls dated the evening before 2026-11-22, its first millisecond, two hours ago and
    # now, each batch spread over rotated files.
    day = datetime(2026, 11, 22, tzinfo=UTC)
    phases = {
        "eve": datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC),
        "midnight": day,
        "earlier": datetime.fromtimestamp(time.time() - 7200, UTC),
    }
    for name, moment in phases.items():
        running.clock.at(moment)
        token = running.token(f"{name}-token")
        for number in range(4):
            running.search(token, f"{name}-{number}")
    running.clock.offset = 0.0
    token = running.token("now-token")
    for number in range(4):
        running.search(token, f"now-{number}")
    running.stop()
    assert len(log_files(running.log)) > 3
    lines = log_lines(running.log)

    def from_on(start: str) -> list[bytes]:
        return [line for line in lines if json.loads(line)["ts"] >= start]

    def ids(chosen: list[bytes]) -> set[str]:
        """The phases of the calls among ``chosen`` (rotations belong to none)."""
        events = [json.loads(line) for line in chosen]
        return {e["request_id"].split("-")[0] for e in events if e["action"] != "audit.rotated"}

    everything = export(running.paths)
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout == b"".join(lines)

    # An event's own time: that event and the ones not older, byte for byte.
    middle = json.loads(lines[len(lines) // 2])["ts"]
    exact = export(running.paths, "--since", middle, "--format", "jsonl")
    assert exact.returncode == 0, exact.stderr
    assert exact.stdout == b"".join(from_on(middle))
    assert 0 < len(from_on(middle)) < len(lines)

    # A date is its midnight, UTC: the evening before is left out, midnight is in.
    dated = export(running.paths, "--since", "2026-11-22")
    assert dated.returncode == 0, dated.stderr
    assert dated.stdout == b"".join(from_on("2026-11-22T00:00:00.000Z"))
    assert "midnight" in ids(from_on("2026-11-22T00:00:00.000Z"))
    assert "eve" not in ids(from_on("2026-11-22T00:00:00.000Z"))

    # An age: the last hour's calls only.
    before = time.time()
    recent = export(running.paths, "--since", "1h")
    after = time.time()
    assert recent.returncode == 0, recent.stderr
    earliest = since_text(datetime.fromtimestamp(before - 3600, UTC))
    latest = since_text(datetime.fromtimestamp(after - 3600, UTC))
    assert not [line for line in lines if earliest <= json.loads(line)["ts"] < latest]
    assert recent.stdout == b"".join(from_on(earliest))
    assert ids(from_on(earliest)) == {"now"}


@pytest.mark.parametrize(
    "args",
    [["--since", "nonsense"], ["--since", "2026-13-45"], ["--format", "xml"]],
    ids=["since-nonsense", "since-bad-date", "format-xml"],
)
def test_export_refuses_bad_arguments_with_exit_2(running: Running, args: list[str]) -> None:
    running.search(running.token(), "some")
    result = export(running.paths, *args)
    assert result.returncode == 2
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr
    if args[0] == "--since":
        line = one_line_error(stderr)
        assert args[1] in line


# --- audit hash -----------------------------------------------------------------------------


def test_hash_finds_the_calls_made_with_a_token(running: Running) -> None:
    leaked, other = running.token(), running.token()
    running.ask(leaked, "with-leaked")
    running.search(leaked, "with-leaked")
    running.ask(other, "with-other")

    result = cli(running.paths, "audit", "hash", leaked)
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert result.stdout == digest + "\n"

    key = bytes.fromhex(running.paths.audit_hmac_key.read_text().strip())
    assert digest == Correlator(key)(leaked)
    events = log_events(running.log)
    found = [e for e in events if e["meta"].get("token_hmac") == digest]
    # Its issuance, then every event of both calls made with it: no more, no less.
    assert found[0]["action"] == "token.issue.authorized"
    assert {e["request_id"] for e in found[2:]} == {"with-leaked"}
    assert [e for e in events if e["request_id"] == "with-leaked"] == found[2:]
    assert leaked.encode() not in b"".join(log_lines(running.log))


def test_hash_before_the_gateway_ever_started_is_one_line(paths: Paths) -> None:
    result = cli(paths, "audit", "hash", "some-token")
    assert result.returncode != 0
    assert result.stdout == ""
    line = one_line_error(result.stderr)
    assert "key" in line
    assert not paths.audit_hmac_key.exists()


# --- audit --verify ---------------------------------------------------------------------------


@pytest.mark.parametrize("running", ["plain", "plus"], indirect=True)
def test_verify_names_the_checkpoint_it_extends(running: Running, tmp_path: Path) -> None:
    token = running.token()
    for number in range(10):
        running.search(token, f"call-{number}")
    running.stop()
    last = log_events(running.log)[-1]["seq"]
    assert len(log_files(running.log)) > 1

    ok = cli(running.paths, "audit", "--verify")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1
    assert "OK" in ok.stdout
    assert "checkpoint" in ok.stdout
    assert f"seq {last}" in ok.stdout

    kept = tmp_path / "kept.checkpoint"
    kept.write_bytes((running.log.parent / "checkpoint").read_bytes())
    extra = cli(running.paths, "audit", "--verify", "--checkpoint", str(kept))
    assert extra.returncode == 0, extra.stderr
    assert "checkpoint" in extra.stdout and f"seq {last}" in extra.stdout


def test_checkpoint_without_verify_is_a_usage_error(running: Running, tmp_path: Path) -> None:
    running.search(running.token(), "one")
    running.stop()
    kept = tmp_path / "kept.checkpoint"
    kept.write_bytes((running.log.parent / "checkpoint").read_bytes())
    result = cli(running.paths, "audit", "--checkpoint", str(kept))
    assert result.returncode == 2
    assert result.stdout == ""
    line = one_line_error(result.stderr)
    assert "--checkpoint" in line and "--verify" in line
