"""The ``agentzt`` command line, run as a user runs it: a subprocess with real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Stack, enroll_agent
from gateway_process import child_env
from gateway_process import run_agentzt as agentzt
from typer.testing import CliRunner

from agentzt.audit import read_events
from agentzt.cli import app
from agentzt.cli import commands as _commands  # noqa: F401  (registers the commands on app)
from agentzt.config import Paths
from agentzt.policy import load_policy

ROLES_IN_TEST_POLICY = {"demo-agent", "research-agent", "ops-agent", "comms-agent", "limited-agent"}


def _env(**extra: str) -> dict[str, str]:
    return {**child_env(), **extra}


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one actionable line and no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("agentzt: error: "), lines[0]
    return lines[0]


def snapshot(*roots: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``roots``: its mode and bytes."""
    files: dict[str, tuple[int, bytes]] = {}
    for root in roots:
        if root.is_file():
            files[str(root)] = (root.stat().st_mode, root.read_bytes())
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[str(path)] = (path.stat().st_mode, path.read_bytes())
            else:
                files[str(path)] = (path.stat().st_mode, b"<dir>")
    return files


# --- enroll, agents, roles ----------------------------------------------------------------


def test_enroll_prints_key_path_and_writes_a_private_key(paths: Paths) -> None:
    result = agentzt(
        paths, "enroll", "--agent", "research-bot-1", "--role", "research-agent",
        "--description", "reads things",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = paths.identity_key("research-bot-1")
    assert str(key) in result.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    # The private key never appears on the terminal.
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    listed = agentzt(paths, "agents", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["agent_id"], r["role"], r["status"]) for r in rows] == [
        ("research-bot-1", "research-agent", "active")
    ]
    assert rows[0]["description"] == "reads things"
    assert "PRIVATE" not in listed.stdout


def test_roles_json_lists_the_policy_roles(paths: Paths) -> None:
    result = agentzt(paths, "roles", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["role"]: r for r in json.loads(result.stdout)}
    assert set(rows) == ROLES_IN_TEST_POLICY == set(load_policy(paths.policy_toml).roles)
    assert rows["demo-agent"]["models"] == ["claude-sonnet-4-6", "claude-haiku-4-5"]
    assert rows["demo-agent"]["tools"] == ["kb.search", "db.query", "web.fetch"]
    assert rows["limited-agent"]["limits"] == {"requests_per_minute": 3, "max_output_tokens": 16}
    assert rows["comms-agent"]["jit"]["elevatable_tools"] == ["email.send"]


ENROLL_REFUSALS = [
    (["--agent", "Bad_Agent", "--role", "demo-agent"], 2, "malformed"),
    (["--agent", "../escape", "--role", "demo-agent"], 2, "malformed"),
    (["--agent", "a" * 64, "--role", "demo-agent"], 2, "malformed"),
    (["--agent", "bot-2", "--role", "no-such-role"], 2, "unknown role"),
    (["--agent", "agent-1", "--role", "demo-agent"], 1, "--force"),
    (["--agent", "agent-1", "--role", "research-agent"], 1, "--force"),
]
ENROLL_REFUSAL_IDS = [
    "uppercase-id",
    "path-traversal-id",
    "id-too-long",
    "unknown-role",
    "existing-id",
    "existing-id-other-role",
]


@pytest.mark.parametrize(("args", "code", "hint"), ENROLL_REFUSALS, ids=ENROLL_REFUSAL_IDS)
def test_enroll_refuses_and_writes_nothing(
    paths: Paths, args: list[str], code: int, hint: str
) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    before = snapshot(paths.config_dir, paths.home)
    result = agentzt(paths, "enroll", *args)
    assert result.returncode == code
    line = assert_one_line_error(result)
    assert hint in line
    assert result.stdout == ""
    assert snapshot(paths.config_dir, paths.home) == before
    assert not (paths.config_dir.parent / "escape.key").exists()


def test_enroll_force_replaces_the_key(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    old_key = paths.identity_key("agent-1").read_bytes()
    result = agentzt(paths, "enroll", "--agent", "agent-1", "--role", "ops-agent", "--force")
    assert result.returncode == 0, result.stderr
    assert paths.identity_key("agent-1").read_bytes() != old_key
    rows = json.loads(agentzt(paths, "agents", "--json").stdout)
    assert [(r["agent_id"], r["role"]) for r in rows] == [("agent-1", "ops-agent")]


BAD_POLICIES = [
    ('[roles.demo-agent]\nmodles = ["claude-sonnet-4-6"]\n', "roles.demo-agent.modles"),
    ('[roles.demo-agent]\nmodels = "claude-sonnet-4-6"\n', "roles.demo-agent.models"),
    (
        "[roles.demo-agent]\n[roles.demo-agent.limits]\nrequests_per_minute = -1\n",
        "roles.demo-agent.limits.requests_per_minute",
    ),
    ('[roles.demo-agent\nmodels = ["claude-sonnet-4-6"]\n', None),
]
BAD_POLICY_IDS = ["typo-key", "wrong-type", "out-of-range", "invalid-toml"]


@pytest.mark.parametrize(
    "command",
    [["roles"], ["enroll", "--agent", "bot-9", "--role", "demo-agent"]],
    ids=["roles", "enroll"],
)
@pytest.mark.parametrize(("text", "key"), BAD_POLICIES, ids=BAD_POLICY_IDS)
def test_bad_policy_stops_with_one_line(
    paths: Paths, command: list[str], text: str, key: str | None
) -> None:
    paths.policy_toml.write_text(text)
    before = snapshot(paths.config_dir) | {"home-exists": (0, str(paths.home.exists()).encode())}
    result = agentzt(paths, *command)
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert str(paths.policy_toml) in line
    if key is not None:
        assert f"'{key}'" in line
    after = snapshot(paths.config_dir) | {"home-exists": (0, str(paths.home.exists()).encode())}
    assert after == before


BAD_GATEWAY_SETTINGS = [
    ("[tokens]\naccess_token_ttl = 300\n", "tokens.access_token_ttl"),
    ('[limits]\nmax_body_bytes = "big"\n', "limits.max_body_bytes"),
    ('[gateway]\nissuer = "gateway.example"\n', "gateway.issuer"),
    ("[tokens\n", None),
]


@pytest.mark.parametrize(
    ("text", "key"),
    BAD_GATEWAY_SETTINGS,
    ids=["typo-key", "wrong-type", "bad-issuer", "invalid-toml"],
)
def test_bad_gateway_settings_stop_the_gateway(paths: Paths, text: str, key: str | None) -> None:
    paths.gateway_toml.write_text(text)
    result = agentzt(paths, "gateway", "--port", "0", timeout=20)
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert str(paths.gateway_toml) in line
    if key is not None:
        assert f"'{key}'" in line


# --- audit ----------------------------------------------------------------------------------


def _make_some_calls(stack: Stack) -> None:
    with stack.proxy_client() as client:
        for number, model in enumerate(
            ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5"]
        ):
            resp = client.post(
                "/v1/messages",
                json={
                    "model": model,
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": "hello"}],
                },
                headers={"x-agentzt-request-id": f"cli-audit-{number}"},
            )
            assert resp.status_code in (200, 403)
        client.post("/v1/tools/kb.search", json={"arguments": {"query": "vpn"}})


def test_audit_json_and_request_id_filter(stack: Stack) -> None:
    _make_some_calls(stack)
    result = agentzt(stack.paths, "audit", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in events)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events == read_events(stack.paths.audit_log)

    filtered = agentzt(stack.paths, "audit", "--json", "--request-id", "cli-audit-1")
    assert filtered.returncode == 0, filtered.stderr
    only = [json.loads(line) for line in filtered.stdout.splitlines()]
    assert [(e["request_id"], e["decision"], e["status"]) for e in only] == [
        ("cli-audit-1", "deny", 403)
    ]

    limited = agentzt(stack.paths, "audit", "--json", "--limit", "2")
    assert [json.loads(line)["seq"] for line in limited.stdout.splitlines()] == [
        len(events) - 1,
        len(events),
    ]


def test_audit_verify_detects_one_edited_byte(stack: Stack) -> None:
    _make_some_calls(stack)
    ok = agentzt(stack.paths, "audit", "--verify")
    assert ok.returncode == 0, ok.stderr
    lines = stack.paths.audit_log.read_bytes().splitlines(keepends=True)
    summary = ok.stdout.strip().splitlines()
    assert len(summary) == 1
    assert str(len(lines)) in summary[0]

    middle = len(lines) // 2
    line = lines[middle]
    at = line.index(b'"reason":"') + len(b'"reason":"')
    assert line[at : at + 1] not in (b'"', b"\\")
    lines[middle] = line[:at] + (b"X" if line[at : at + 1] != b"X" else b"Y") + line[at + 1 :]
    stack.paths.audit_log.write_bytes(b"".join(lines))

    broken = agentzt(stack.paths, "audit", "--verify")
    assert broken.returncode == 1
    assert "Traceback" not in broken.stderr
    assert f"seq {middle + 1}" in broken.stdout + broken.stderr
    assert len((broken.stdout + broken.stderr).strip().splitlines()) == 1


# --- demo ---------------------------------------------------------------------------------


def test_demo_runs_every_step_and_touches_no_operator_state(tmp_path: Path) -> None:
    paths = Paths(config_dir=tmp_path / "operator-config", home=tmp_path / "operator-home")
    result = agentzt(paths, "demo", timeout=120, env=_env(COLUMNS="200"))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "claude-sonnet-4-6",
        "claude-opus-4-8",
        "kb.search",
        "email.send",
        "db.query",
        "403 permission_error",
        "400 invalid_request_error",
        "403 guardrail_blocked",
        "[REDACTED:anthropic-key]",
        "elevation.grant",
        "via jit",
        "audit chain verified",
        "all steps as expected",
    ):
        assert expected in out, expected
    assert "NOT as expected" not in out
    assert not paths.config_dir.exists()
    assert not paths.home.exists()


# --- up --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def up_process(paths: Paths, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Holds the ``agentzt up`` processes a test starts; kills what is left, by pid."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            # The tree runs in its own session, so its group id is the pid we started.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_up(
    paths: Paths, tmp_path: Path, started: list[subprocess.Popen[bytes]], gw: int, client: int
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "up.stderr"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "agentzt",
                "--config", str(paths.config_dir), "--home", str(paths.home),
                "up", "--agent", "agent-1",
                "--gateway-port", str(gw), "--client-port", str(client),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
            env=_env(),
            start_new_session=True,
        )  # fmt: skip
    started.append(proc)
    return proc, log


def assert_stops_cleanly(
    proc: subprocess.Popen[bytes], log: Path, gw_port: int, client_port: int
) -> None:
    """SIGTERM stops the ``up`` tree: exit 0, both children gone, both ports closed."""
    children = children_of(proc.pid)
    assert len(children) == 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, log.read_text()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in children)
    assert not listening(gw_port)
    assert not listening(client_port)
    assert "Traceback" not in log.read_text()


def test_up_serves_and_stops_cleanly_on_sigterm(
    paths: Paths, tmp_path: Path, up_process: list[subprocess.Popen[bytes]]
) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    gw_port, client_port = free_port(), free_port()
    proc, log = start_up(paths, tmp_path, up_process, gw_port, client_port)

    deadline = time.monotonic() + 30
    ready = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = (
                httpx.get(f"http://127.0.0.1:{client_port}/healthz", timeout=1).status_code == 200
            )
        except httpx.TransportError:
            ready = False
        if ready:
            break
        time.sleep(0.1)
    assert ready, log.read_text()

    with httpx.Client(base_url=f"http://127.0.0.1:{client_port}", timeout=10) as client:
        health = client.get("/healthz")
        resp = client.post(
            "/v1/messages",
            json={
                "model": "claude-sonnet-4-6",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": "hello"}],
            },
        )
    assert health.json() == {"status": "ok", "agent_id": "agent-1"}
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "message"
    assert httpx.get(f"http://127.0.0.1:{gw_port}/healthz", timeout=5).json() == {"status": "ok"}

    assert_stops_cleanly(proc, log, gw_port, client_port)


def test_up_exits_1_naming_the_gateway_when_it_cannot_start(
    paths: Paths, tmp_path: Path, up_process: list[subprocess.Popen[bytes]]
) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    paths.gateway_toml.write_text("[gateway]\nissuer = 5\n")
    gw_port, client_port = free_port(), free_port()
    proc, log = start_up(paths, tmp_path, up_process, gw_port, client_port)
    assert proc.wait(timeout=30) == 1
    stderr = log.read_text()
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "gateway" in last
    assert "client proxy" not in last
    assert not listening(client_port)
    assert not listening(gw_port)


# --- bad arguments ------------------------------------------------------------------------

BAD_ARGS = [
    ["--no-such-option"],
    ["gateway", "--port", "abc"],
    ["gateway", "--port", "70000"],
    ["client", "--agent", "agent-1", "--port", "abc"],
    ["up", "--agent", "agent-1", "--gateway-port", "abc"],
    ["enroll", "--role", "demo-agent"],
    ["audit", "--limit", "0"],
    ["no-such-command"],
]
BAD_ARG_IDS = [
    "unknown-option",
    "port-not-a-number",
    "port-out-of-range",
    "client-port-not-a-number",
    "up-port-not-a-number",
    "missing-required-option",
    "limit-zero",
    "unknown-command",
]


@pytest.mark.parametrize("args", BAD_ARGS, ids=BAD_ARG_IDS)
def test_bad_arguments_exit_2(paths: Paths, args: list[str]) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["--config", str(paths.config_dir), "--home", str(paths.home), *args]
    )
    assert result.exit_code == 2, result.output
    assert not paths.home.exists()


def test_bad_argument_exit_2_from_the_real_entry_point(paths: Paths) -> None:
    result = agentzt(paths, "gateway", "--port", "abc")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--port" in result.stderr
