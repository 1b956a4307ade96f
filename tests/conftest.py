"""Shared fixtures: real config files, real keys, real servers on ephemeral loopback ports."""

from __future__ import annotations

import base64
import calendar
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import SigningKey, enroll, read_private_key
from agentzt.policy import load_policy
from agentzt.proxy import create_proxy_app
from agentzt.server import BackgroundServer, bind, url_of

REPO = Path(__file__).resolve().parent.parent

# A role with a tiny rate limit and output cap, so tests can reach both quickly.
TEST_ROLES = """
[roles.limited-agent]
description = "test role with tight limits"
models = ["claude-haiku-4-5"]
tools = ["kb.search"]

[roles.limited-agent.limits]
requests_per_minute = 3
max_output_tokens = 16
"""


def at(hour: int, minute: int = 0, second: int = 0) -> float:
    """A fixed UTC instant on an ordinary day, for tests that set the gateway's clock."""
    return float(calendar.timegm((2026, 11, 23, hour, minute, second, 0, 0, 0)))


class Clock:
    """A settable clock: tests put the hour where they need it and age tokens without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _offline_guardrails(monkeypatch: pytest.MonkeyPatch) -> None:
    # provider = "auto" would call the hosted OpenGuardrails API if a key were exported.
    monkeypatch.delenv("OPENGUARDRAILS_API_KEY", raising=False)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    config = tmp_path / "config"
    config.mkdir()
    # Most tests call the gateway directly with plain bearer tokens to exercise what lies
    # behind authentication, so they run with dpop = "optional": a token asked for
    # without a proof is a bearer token. The proxy always sends proofs, so every call
    # through it is DPoP-bound and proof-checked; tests/test_dpop.py covers "required".
    (config / "gateway.toml").write_text(
        allow_bearer((REPO / "config" / "gateway.toml").read_text())
    )
    policy = (REPO / "config" / "policy.toml").read_text() + TEST_ROLES
    (config / "policy.toml").write_text(policy)
    return Paths(config_dir=config, home=tmp_path / "home")


def allow_bearer(gateway_toml: str) -> str:
    """``gateway_toml`` with ``dpop = "optional"`` (see the ``paths`` fixture)."""
    if 'dpop = "required"' in gateway_toml:
        return gateway_toml.replace('dpop = "required"', 'dpop = "optional"')
    assert "dpop =" not in gateway_toml
    if "[tokens]\n" in gateway_toml:
        return gateway_toml.replace("[tokens]\n", '[tokens]\ndpop = "optional"\n')
    return gateway_toml + '\n[tokens]\ndpop = "optional"\n'


def roomy_config(root: Path, policy_extra: str = "") -> Paths:
    """Config under ``root`` for a gateway a whole module shares: the shipped files, with
    bearer tokens allowed and the shipped roles' rate limit raised, so the module's many
    calls never trip it (the limits have their own tests)."""
    config = root / "config"
    config.mkdir()
    (config / "gateway.toml").write_text(
        allow_bearer((REPO / "config" / "gateway.toml").read_text())
    )
    policy = (REPO / "config" / "policy.toml").read_text()
    raised = policy.replace("requests_per_minute = 120", "requests_per_minute = 100000")
    assert raised != policy
    (config / "policy.toml").write_text(raised + policy_extra)
    return Paths(config_dir=config, home=root / "home")


def in_ledger(gateway: Gateway, token: str) -> str:
    """Record a token a test minted itself in the gateway's issuance ledger, as the token
    endpoint records what it issues (the gateway refuses any token the ledger lacks)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    cnf = claims.get("cnf", {})
    binding = "+".join(k for k, c in (("dpop", "jkt"), ("mtls", "x5t#S256")) if c in cnf)
    gateway.ledger.record(
        jti=claims["jti"],
        agent_id=claims["sub"],
        role=claims["role"],
        task_id=claims.get("task"),
        scope=claims["scope"],
        binding=binding or "bearer",
        issued_at=claims["iat"],
        expires_at=claims["exp"],
    )
    return token


# Routes that act (call the upstream, run a tool, issue, grant, revoke, end a task): the
# gateway audits each allowed one before acting, as the action + ".authorized".
ACTING_ACTIONS = frozenset(
    {
        "model.call",
        "model.count_tokens",
        "tool.call",
        "token.issue",
        "token.revoke",
        "elevation.grant",
        "task.end",
    }
)


def outcome_event(
    events: list[dict[str, Any]], *, refused_after_deciding: bool = False
) -> dict[str, Any]:
    """The outcome event among one request's audit events (in log order), after checking
    what comes before it. An allowed action that acts is preceded by exactly its decision
    event (allow, status 0). A refusal stands alone, unless the caller says the action
    was refused only after its decision was written (the ledger then refused the token,
    say): then exactly one decision event precedes it."""
    assert events, "the request left no audit event"
    *before, outcome = events
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events), events
    shape = [(e["action"], e["decision"], e["status"]) for e in before]
    if outcome["decision"] == "allow" and outcome["action"] in ACTING_ACTIONS:
        assert shape == [(f"{outcome['action']}.authorized", "allow", 0)], events
    elif refused_after_deciding:
        assert outcome["decision"] == "deny", events
        [(action, decision, status)] = shape
        assert action.endswith(".authorized") and (decision, status) == ("allow", 0), events
    else:
        assert shape == [], events
    return outcome


def enroll_agent(paths: Paths, agent_id: str, role: str) -> SigningKey:
    enroll(
        registry_path=paths.agents_toml,
        key_path=paths.identity_key(agent_id),
        agent_id=agent_id,
        role=role,
        known_roles=load_policy(paths.policy_toml).roles,
    )
    return read_private_key(paths.identity_key(agent_id))


@dataclass
class Stack:
    paths: Paths
    gateway: Gateway
    gateway_url: str
    proxy_url: str | None = None

    def gw_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway_url, timeout=10)

    def proxy_client(self) -> httpx.Client:
        assert self.proxy_url is not None
        return httpx.Client(base_url=self.proxy_url, timeout=10)


@pytest.fixture
def gateway_stack(paths: Paths) -> Iterator[Stack]:
    """A real gateway on an ephemeral loopback port, with agent-1 (demo-agent) enrolled."""
    enroll_agent(paths, "agent-1", "demo-agent")
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock))
    server = BackgroundServer(create_app(gateway), sock).start()
    try:
        yield Stack(paths=paths, gateway=gateway, gateway_url=server.url)
    finally:
        server.stop()


@pytest.fixture
def stack(gateway_stack: Stack) -> Iterator[Stack]:
    """Gateway plus a client proxy for agent-1."""
    key = read_private_key(gateway_stack.paths.identity_key("agent-1"))
    sock = bind("127.0.0.1", 0)
    app = create_proxy_app(agent_id="agent-1", key=key, gateway_url=gateway_stack.gateway_url)
    server = BackgroundServer(app, sock).start()
    gateway_stack.proxy_url = server.url
    try:
        yield gateway_stack
    finally:
        server.stop()


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The agentzt processes a test starts (see tests/gateway_process.py); whatever
    still runs at the end is killed, by pid."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
