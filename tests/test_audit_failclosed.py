"""Issue 7, promises 1 and 2: fail-closed audit and audit before acting.

A gateway that cannot write its audit log refuses with 503 and acts on nothing (no
upstream call, no tool run, no token issued), and serves again by itself once the log is
writable; the decision event is in the log before the upstream call or the tool run.

The failures are real: a full tmpfs and read-only bind mounts, each made inside a private
mount namespace the gateway subprocess runs in (the host's mounts are never touched), and
RLIMIT_FSIZE on an in-process gateway. The test reaches the namespace's tmpfs through
``/proc/<gateway pid>/root``; a directory descriptor opened there keeps the tmpfs readable
after the gateway (and with it the namespace) is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import enroll_agent
from fake_anthropic import ENTERPRISE_KEY, FakeAnthropic, fake_anthropic, passthrough_stack
from gateway_process import READY, agentzt_argv, child_env
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentzt.audit import AuditLog, verify_chain
from agentzt.config import Paths, load_gateway_settings
from agentzt.gateway.audit_trail import verify_trail
from agentzt.identity import make_assertion, read_private_key
from agentzt.identity.tokens import CLIENT_ASSERTION_TYPE
from agentzt.server import BackgroundServer, bind
from agentzt.wire import REQUEST_ID_HEADER

AGENT = "agent-1"
REFUSED = "audit log unavailable; request refused"
MODEL = "claude-sonnet-4-6"
# The request id travels to the upstream inside the prompt: the gateway forwards no
# header of the agent's, so this is how the upstream side knows which call it got.
MARK = re.compile(r"audit check ([A-Za-z0-9._:-]+)")
# Runs as `sh -c SCRIPT sh TARGET gateway-command...` inside the private namespace.
TMPFS = 'mount -t tmpfs -o size=512k,mode=0700 tmpfs "$1" || exit 97; shift; exec "$@"'
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 97; shift; exec "$@"'
PLAIN = 'shift; exec "$@"'
# What each acting route writes for a 2xx: the decision first, then the outcome.
WRITTEN = {
    "token": ["token.issue.authorized", "token.issue"],
    "model": ["model.call.authorized", "model.call"],
    "stream": ["model.call.authorized", "model.call", "model.response"],
    "tool": ["tool.call.authorized", "tool.call"],
    "health": ["health.check"],
}


# -- the private mount namespace ----------------------------------------------------------


def _probe_namespace(probe_dir: Path) -> tuple[list[str] | None, str]:
    """The command prefix that runs a child in a private mount namespace where it may
    mount a tmpfs and a read-only bind, or None and why not."""
    if shutil.which("unshare") is None:
        return None, "unshare(1) is not installed"
    candidates = [["unshare", "-r", "-m", "--propagation", "private"]]
    if os.geteuid() == 0:
        # As root no user namespace is needed (and some kernels forbid nesting one).
        candidates.insert(0, ["unshare", "-m", "--propagation", "private"])
    probe = (
        'mount -t tmpfs -o size=64k tmpfs "$1" && mount --bind "$1" "$1" '
        '&& mount -o remount,bind,ro "$1"'
    )
    why: list[str] = []
    for prefix in candidates:
        result = subprocess.run(
            [*prefix, "sh", "-c", probe, "sh", str(probe_dir)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return prefix, ""
        why.append(f"`{' '.join(prefix)}`: {result.stderr.strip() or result.returncode}")
    return None, "; ".join(why)


@pytest.fixture(scope="module")
def mounts(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str] | None, str]:
    """Probed once per module: (namespace prefix or None, why not)."""
    return _probe_namespace(tmp_path_factory.mktemp("mount-probe"))


@pytest.fixture
def namespace(mounts: tuple[list[str] | None, str]) -> list[str] | None:
    return mounts[0]


# -- configuration, the gateway subprocess, its requests ------------------------------------


def configure(paths: Paths, *, upstream: str | None = None, **audit: str) -> None:
    """Point the gateway at ``upstream`` (passthrough) and set ``[audit]`` keys."""
    text = paths.gateway_toml.read_text()
    changes = {f"{key} = ": value for key, value in audit.items()}
    if upstream is not None:
        changes['mode = "mock"'] = 'mode = "passthrough"'
        changes['base_url = "https://api.anthropic.com"'] = f'base_url = "{upstream}"'
    for old, new in changes.items():
        if old.endswith(" = "):
            text, count = re.subn(rf"^{re.escape(old)}.*$", f"{old}{new}", text, flags=re.M)
        else:
            count = text.count(old)
            text = text.replace(old, new)
        assert count == 1, old
    paths.gateway_toml.write_text(text)


def launch(
    paths: Paths,
    procs: list[subprocess.Popen[bytes]],
    log: Path,
    prefix: list[str],
    script: str,
    target: Path,
) -> subprocess.Popen[bytes]:
    """``agentzt gateway --port 0`` behind ``prefix`` (a namespace), once ``script`` has
    prepared ``target``; sh and unshare exec, so the pid is the gateway's own."""
    env = {**child_env(), "ANTHROPIC_API_KEY": ENTERPRISE_KEY}
    command = [
        *prefix, "sh", "-c", script, "sh", str(target),
        *agentzt_argv(paths, "gateway", "--port", "0"),
    ]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, cwd=paths.config_dir.parent, env=env
        )
    procs.append(proc)
    return proc


def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        found = READY.search(log.read_text(errors="replace"))
        if found is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{found.group(1)}/healthz", timeout=2).status_code == 200:
                    return found.group(1)
        time.sleep(0.02)
    raise AssertionError(f"the gateway never became ready:\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


def get_token(http: httpx.Client, paths: Paths, url: str, rid: str) -> httpx.Response:
    key = read_private_key(paths.identity_key(AGENT))
    assertion = make_assertion(key, AGENT, audience=f"{url}/v1/token", now=time.time())
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    return http.post("/v1/token", data=form, headers={REQUEST_ID_HEADER: rid})


def bearer(http: httpx.Client, paths: Paths, url: str) -> str:
    resp = get_token(http, paths, url, f"setup-{time.monotonic_ns()}")
    assert resp.status_code == 200, resp.text
    token: str = resp.json()["access_token"]
    return token


def ask_model(http: httpx.Client, token: str, rid: str, *, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": f"audit check {rid}"}],
    }
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {token}", REQUEST_ID_HEADER: rid}
    return http.post("/v1/messages", json=body, headers=headers)


def run_tool(http: httpx.Client, token: str, rid: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", REQUEST_ID_HEADER: rid}
    return http.post(
        "/v1/tools/kb.search", json={"arguments": {"query": "refund policy"}}, headers=headers
    )


def assert_refused(resp: httpx.Response, *, oauth: bool = False) -> None:
    assert resp.status_code == 503, resp.text
    body = resp.json()
    message = body["error_description"] if oauth else body["error"]["message"]
    assert message == REFUSED
    assert "output" not in body and "access_token" not in body


def upstream_saw(fake: FakeAnthropic, rid: str) -> bool:
    return any(
        (m := MARK.search(json.dumps(seen.body))) is not None and m.group(1) == rid
        for seen in fake.seen
    )


def ledger_rows(paths: Paths) -> int:
    with contextlib.closing(sqlite3.connect(paths.token_ledger)) as db:
        (count,) = db.execute("SELECT count(*) FROM tokens").fetchone()
    return int(count)


def events_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def actions(events: list[dict[str, Any]], rid: str) -> list[str]:
    return [e["action"] for e in events if e["request_id"] == rid]


def assert_never_acted(events: list[dict[str, Any]], rid: str) -> None:
    """A refused request left at most its refusal in the log, never an allow."""
    mine = [e for e in events if e["request_id"] == rid]
    assert all(e["decision"] == "deny" for e in mine), mine


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with fake_anthropic() as upstream:
        yield upstream


# -- promise 1: a real full filesystem ------------------------------------------------------


def test_full_disk_refuses_every_acting_route_and_resumes_without_restart(
    paths: Paths,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    mounts: tuple[list[str] | None, str],
    fake: FakeAnthropic,
) -> None:
    prefix, why = mounts
    if prefix is None:
        pytest.skip(f"mounting a tmpfs in a private mount namespace is not permitted here: {why}")
    enroll_agent(paths, AGENT, "demo-agent")
    # No periodic checkpoint: its rewrite would free a page of the full tmpfs mid-test.
    configure(
        paths,
        upstream=fake.url,
        checkpoint_every_seconds="86400",
        checkpoint_every_events="1000000",
    )
    audit_dir = paths.audit_log.parent
    audit_dir.mkdir(parents=True, mode=0o700)
    proc = launch(paths, procs, tmp_path / "gateway.log", prefix, TMPFS, audit_dir)
    url = wait_ready(proc, tmp_path / "gateway.log")
    tmpfs = os.open(f"/proc/{proc.pid}/root{audit_dir}", os.O_RDONLY | os.O_DIRECTORY)
    try:
        log = Path(f"/proc/self/fd/{tmpfs}") / paths.audit_log.name
        # The log is on the namespace's tmpfs; the host directory under it stays empty.
        assert log.stat().st_size > 0
        assert not paths.audit_log.exists()
        ok: list[tuple[str, str]] = []
        refused: list[str] = []
        with httpx.Client(base_url=url, timeout=30) as http:

            def expect_ok(kind: str, rid: str, resp: httpx.Response) -> None:
                assert resp.status_code == 200, resp.text
                ok.append((kind, rid))

            token_resp = get_token(http, paths, url, "full-token-0")
            expect_ok("token", "full-token-0", token_resp)
            token = token_resp.json()["access_token"]
            expect_ok("model", "full-model-0", ask_model(http, token, "full-model-0"))
            expect_ok("tool", "full-tool-0", run_tool(http, token, "full-tool-0"))
            assert upstream_saw(fake, "full-model-0")

            # Fill the tmpfs, then let health checks use up the room left in the log's
            # last page: once even their small event does not fit, no decision does.
            filler = os.open("filler", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=tmpfs)
            try:
                with pytest.raises(OSError) as full:
                    while True:
                        os.write(filler, b"\0" * 65536)
                assert full.value.errno == errno.ENOSPC
            finally:
                os.close(filler)
            for n in range(64):
                health = http.get("/healthz", headers={REQUEST_ID_HEADER: f"full-health-{n}"})
                if health.status_code == 503:
                    assert_refused(health)
                    refused.append(f"full-health-{n}")
                    break
                expect_ok("health", f"full-health-{n}", health)
            else:
                pytest.fail("the audit log still took events on a full tmpfs")

            seen_before, rows_before = len(fake.seen), ledger_rows(paths)
            assert_refused(ask_model(http, token, "full-model-1"))
            assert_refused(ask_model(http, token, "full-stream-1", stream=True))
            assert_refused(run_tool(http, token, "full-tool-1"))
            assert_refused(get_token(http, paths, url, "full-token-1"), oauth=True)
            refused += ["full-model-1", "full-stream-1", "full-tool-1", "full-token-1"]
            # Nothing was acted on: no upstream request, no token row.
            assert len(fake.seen) == seen_before
            assert not upstream_saw(fake, "full-model-1")
            assert not upstream_saw(fake, "full-stream-1")
            assert ledger_rows(paths) == rows_before
            # No partial line was left behind, and the chain so far is whole.
            assert log.read_bytes().endswith(b"\n")
            assert verify_chain(log).events == len(events_in(log))
            during = events_in(log)
            for rid in refused:
                assert_never_acted(during, rid)

            # The disk frees up: the same process serves again, no restart.
            os.unlink("filler", dir_fd=tmpfs)
            token_resp = get_token(http, paths, url, "full-token-2")
            expect_ok("token", "full-token-2", token_resp)
            assert ledger_rows(paths) == rows_before + 1
            expect_ok("model", "full-model-2", ask_model(http, token, "full-model-2"))
            stream = ask_model(http, token, "full-stream-2", stream=True)
            expect_ok("stream", "full-stream-2", stream)
            assert "message_stop" in stream.text
            expect_ok("tool", "full-tool-2", run_tool(http, token, "full-tool-2"))
            assert upstream_saw(fake, "full-model-2")
            assert upstream_saw(fake, "full-stream-2")
        assert stop(proc) in (0, -signal.SIGTERM)

        # The namespace is gone with the gateway; the descriptor still reads its tmpfs.
        # Copied onto the host directory, the trail verifies like any gateway's.
        for kept in log.parent.iterdir():
            shutil.copyfile(kept, audit_dir / kept.name)
    finally:
        os.close(tmpfs)
    assert paths.audit_log.read_bytes().endswith(b"\n")
    settings = load_gateway_settings(paths.gateway_toml)
    report = verify_trail(paths, settings.audit)
    events = events_in(paths.audit_log)
    assert report.events == events[-1]["seq"] == len(events)
    # The final checkpoint at shutdown covers everything.
    assert report.checkpoints and max(c.size for _, c in report.checkpoints) == report.events
    # No gap: every 2xx has its decision and its outcome, in that order.
    for kind, rid in ok:
        assert actions(events, rid) == WRITTEN[kind], rid
    for rid in refused:
        assert_never_acted(events, rid)


# -- promise 1: read-only directories -------------------------------------------------------


def _read_only_launch(
    paths: Paths,
    procs: list[subprocess.Popen[bytes]],
    log: Path,
    namespace: list[str] | None,
    directory: Path,
) -> subprocess.Popen[bytes]:
    """The gateway with ``directory`` read-only: a read-only bind mount in a private
    namespace, or, for a non-root user without one, permissions alone."""
    if namespace is not None:
        return launch(paths, procs, log, namespace, READ_ONLY, directory)
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions and no private mount namespace is permitted")
    for path in directory.iterdir():
        path.chmod(0o400)
    directory.chmod(0o500)
    return launch(paths, procs, log, [], PLAIN, directory)


@pytest.mark.parametrize("existing", [False, True], ids=["new-log", "existing-log"])
def test_read_only_audit_directory_refuses_to_start(
    paths: Paths,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    namespace: list[str] | None,
    existing: bool,
) -> None:
    audit_dir = paths.audit_log.parent
    audit_dir.mkdir(parents=True, mode=0o700)
    if existing:
        with AuditLog(paths.audit_log) as audit:
            audit.append(
                request_id="before",
                agent_id=None,
                role=None,
                action="health.check",
                resource=None,
                decision="allow",
                reason="an earlier run",
                status=200,
                latency_ms=1.0,
            )
    before = paths.audit_log.read_bytes() if existing else None
    err = tmp_path / "gateway.log"
    proc = _read_only_launch(paths, procs, err, namespace, audit_dir)
    code = proc.wait(timeout=60)
    output = err.read_text(errors="replace")
    assert code not in (0, 97), output
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("agentzt: error: ")
    assert str(paths.audit_log) in lines[0]
    assert READY.search(output) is None
    if existing:
        assert paths.audit_log.read_bytes() == before
    else:
        assert not paths.audit_log.exists()


def test_read_only_witness_directory_serves_and_logs_an_error(
    paths: Paths,
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    namespace: list[str] | None,
) -> None:
    """Checkpoints are not events: a witness that cannot be written does not stop
    service, but the operator is told, and the log-directory checkpoint still holds."""
    enroll_agent(paths, AGENT, "demo-agent")
    # A checkpoint after every event, so one is due at once.
    configure(paths, checkpoint_every_events="1")
    witness = paths.home / "witness"
    witness.mkdir(parents=True, mode=0o700)
    err = tmp_path / "gateway.log"
    proc = _read_only_launch(paths, procs, err, namespace, witness)
    url = wait_ready(proc, err)
    with httpx.Client(base_url=url, timeout=30) as http:
        token = bearer(http, paths, url)
        assert ask_model(http, token, "witness-model").status_code == 200
        assert run_tool(http, token, "witness-tool").status_code == 200
    deadline = time.monotonic() + 20
    while "audit checkpoint not written" not in err.read_text(errors="replace"):
        assert time.monotonic() < deadline, err.read_text(errors="replace")
        time.sleep(0.05)
    assert stop(proc) in (0, -signal.SIGTERM)
    output = err.read_text(errors="replace")
    problems = [line for line in output.splitlines() if "audit checkpoint not written" in line]
    assert all("ERROR" in line and str(witness) in line for line in problems), problems
    assert "Traceback" not in output
    assert list(witness.iterdir()) == []
    events = events_in(paths.audit_log)
    assert actions(events, "witness-model") == WRITTEN["model"]
    assert actions(events, "witness-tool") == WRITTEN["tool"]
    # The checkpoint next to the log was written (first) and covers the whole log.
    report = verify_trail(paths, load_gateway_settings(paths.gateway_toml).audit)
    assert report.events == len(events)
    assert [c.size for _, c in report.checkpoints] == [len(events)]


# -- promise 2: audit before acting ---------------------------------------------------------


@dataclass
class Peek:
    """An upstream in front of the fake that reads the gateway's audit log the moment a
    call arrives, then forwards the call to the fake."""

    log: Path
    fake_url: str
    # request id -> the events of that request already in the log when the call arrived
    found: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _peek_app(peek: Peek) -> Starlette:
    async def messages(request: Request) -> Response:
        raw = await request.body()
        mark = MARK.search(raw.decode())
        assert mark is not None
        rid = mark.group(1)
        peek.found[rid] = [e for e in events_in(peek.log) if e["request_id"] == rid]
        client = httpx.AsyncClient(base_url=peek.fake_url, timeout=30)
        sent = client.build_request(
            "POST", request.url.path, content=raw, headers={"content-type": "application/json"}
        )
        answer = await client.send(sent, stream=True)

        async def relay() -> Any:
            try:
                async for chunk in answer.aiter_raw():
                    yield chunk
            finally:
                await answer.aclose()
                await client.aclose()

        return StreamingResponse(
            relay(),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
        )

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


@pytest.fixture
def peeked(paths: Paths, fake: FakeAnthropic) -> Iterator[tuple[Any, Peek]]:
    peek = Peek(paths.audit_log, fake.url)
    server = BackgroundServer(_peek_app(peek), bind("127.0.0.1", 0)).start()
    try:
        with passthrough_stack(paths, server.url) as stack:
            yield stack, peek
    finally:
        server.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_decision_event_is_in_the_log_when_the_upstream_call_arrives(
    peeked: tuple[Any, Peek], fake: FakeAnthropic, stream: bool
) -> None:
    stack, peek = peeked
    rid = f"before-upstream-{'stream' if stream else 'plain'}"
    with stack.gw_client() as http:
        token = bearer(http, stack.paths, stack.gateway_url)
        resp = ask_model(http, token, rid, stream=stream)
    assert resp.status_code == 200, resp.text
    assert upstream_saw(fake, rid)
    # At the moment the upstream got the call, its decision was already written.
    already = peek.found[rid]
    assert [e["action"] for e in already] == ["model.call.authorized"]
    assert already[0]["decision"] == "allow"
    assert already[0]["status"] == 0
    assert already[0]["resource"] == f"model:{MODEL}"
    # The outcome follows under the same request id.
    expected = WRITTEN["stream" if stream else "model"]
    deadline = time.monotonic() + 10
    while actions(events_in(stack.paths.audit_log), rid) != expected:
        assert time.monotonic() < deadline, actions(events_in(stack.paths.audit_log), rid)
        time.sleep(0.02)
    outcome = next(
        e for e in events_in(stack.paths.audit_log) if e["request_id"] == rid and e["status"]
    )
    assert (outcome["action"], outcome["status"]) == ("model.call", 200)
    assert outcome["seq"] > already[0]["seq"]


def test_tool_decision_precedes_the_run_and_a_refused_tool_never_runs(
    peeked: tuple[Any, Peek],
) -> None:
    stack, _ = peeked
    with stack.gw_client() as http:
        token = bearer(http, stack.paths, stack.gateway_url)
        ran = run_tool(http, token, "tool-allowed")
        assert ran.status_code == 200, ran.text
        assert ran.json()["ok"] is True
        events = events_in(stack.paths.audit_log)
        mine = [e for e in events if e["request_id"] == "tool-allowed"]
        assert [e["action"] for e in mine] == WRITTEN["tool"]
        authorized, outcome = mine
        assert authorized["seq"] < outcome["seq"]
        assert (authorized["decision"], authorized["status"]) == ("allow", 0)
        assert authorized["resource"] == outcome["resource"] == "tool:kb.search"
        assert (outcome["decision"], outcome["status"]) == ("allow", 200)

        # The writer is gone: the decision cannot be written, so the tool must not run.
        stack.gateway.audit.close()
        size = stack.paths.audit_log.stat().st_size
        refused = run_tool(http, token, "tool-refused")
        assert_refused(refused)
    assert stack.paths.audit_log.stat().st_size == size
    assert actions(events_in(stack.paths.audit_log), "tool-refused") == []


# -- promise 1: a transient write failure, in process --------------------------------------


@pytest.fixture
def file_size_cap() -> Iterator[Callable[[int | None], None]]:
    """RLIMIT_FSIZE for this whole process (its gateway's writer thread included): a real
    EFBIG from write(2), root or not. SIGXFSZ is ignored, or the kernel would kill us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def cap(limit: int | None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if limit is None else limit, hard))

    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_gateway_resumes_by_itself_after_a_transient_write_failure(
    paths: Paths, fake: FakeAnthropic, file_size_cap: Callable[[int | None], None]
) -> None:
    with passthrough_stack(paths, fake.url) as stack, stack.gw_client() as http:
        token = bearer(http, paths, stack.gateway_url)
        assert ask_model(http, token, "efbig-model-0").status_code == 200
        before = paths.audit_log.read_bytes()
        seen = len(fake.seen)
        # Room for 20 more bytes: each batch is written short, then fails with EFBIG,
        # so the log has to cut a partial line back off.
        file_size_cap(len(before) + 20)
        try:
            responses = [
                ask_model(http, token, "efbig-model-1"),
                ask_model(http, token, "efbig-stream-1", stream=True),
                run_tool(http, token, "efbig-tool-1"),
            ]
            after_failure = paths.audit_log.read_bytes()
        finally:
            file_size_cap(None)
        for resp in responses:
            assert_refused(resp)
        assert len(fake.seen) == seen
        assert after_failure == before

        # The limit is lifted: the very same gateway serves again.
        assert ask_model(http, token, "efbig-model-2").status_code == 200
        streamed = ask_model(http, token, "efbig-stream-2", stream=True)
        assert streamed.status_code == 200
        assert run_tool(http, token, "efbig-tool-2").status_code == 200
        assert upstream_saw(fake, "efbig-model-2")
        assert upstream_saw(fake, "efbig-stream-2")
    events = events_in(paths.audit_log)
    assert verify_chain(paths.audit_log).events == len(events)
    for rid in ("efbig-model-1", "efbig-stream-1", "efbig-tool-1"):
        assert actions(events, rid) == []
    assert actions(events, "efbig-model-2") == WRITTEN["model"]
    assert actions(events, "efbig-stream-2") == WRITTEN["stream"]
    assert actions(events, "efbig-tool-2") == WRITTEN["tool"]
