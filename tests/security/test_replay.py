"""Replay: a client assertion and a DPoP proof are each good for one request, ever.

Issue 8's replay class. Every credential the gateway accepts once is refused the second
time, whether the second presentation comes a moment later, at the same instant as 49
others, on another endpoint, or after the gateway was stopped gracefully or killed with
SIGKILL and started again on the same state directory (the jti store persists).

The gateways here run the packaged configuration (``dpop = "required"``; the in-process
one with a raised per-agent token limit), so every token request and every call carries
a DPoP proof, as the client proxy sends them.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from burst import all_at_once
from conftest import REPO, enroll_agent, outcome_event
from gateway_process import pin_issuer, start_gateway

from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import (
    CLIENT_ASSERTION_TYPE,
    Ledger,
    Prover,
    SigningKey,
    TokenRow,
    make_assertion,
    new_jti,
    read_private_key,
)
from agentzt.server import bind, running, url_of

AGENT = "agent-1"
ROLE = "demo-agent"
REQUEST_ID = "x-agentzt-request-id"
ALREADY_USED = "already used"
MESSAGE_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
}


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Agent:
    """agent-1 speaking to the gateway at ``url`` as the client proxy does: a client
    assertion and a DPoP proof for each token, a DPoP proof with every call."""

    key: SigningKey
    url: str

    def __post_init__(self) -> None:
        self.prover = Prover(self.key, new_jti)

    def assertion(self) -> str:
        return make_assertion(self.key, AGENT, audience=f"{self.url}/v1/token", now=time.time())

    def token_proof(self) -> str:
        return self.prover.proof("POST", f"{self.url}/v1/token", now=time.time())

    def proof(self, method: str, path: str, token: str) -> str:
        return self.prover.proof(method, f"{self.url}{path}", now=time.time(), access_token=token)

    def token_request(
        self, assertion: str | None = None, *, proof: str | None = None, request_id: str
    ) -> dict[str, Any]:
        """The arguments of ``httpx.Client.request`` for one token request."""
        return {
            "method": "POST",
            "url": "/v1/token",
            "data": {
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion or self.assertion(),
            },
            "headers": {"DPoP": proof or self.token_proof(), REQUEST_ID: request_id},
        }

    def call_request(
        self, route: Route, token: str, *, proof: str | None = None, request_id: str
    ) -> dict[str, Any]:
        """The arguments of ``httpx.Client.request`` for one call of ``route``."""
        return {
            "method": route.method,
            "url": route.path,
            "json": route.body,
            "headers": {
                "Authorization": f"DPoP {token}",
                "DPoP": proof or self.proof(route.method, route.path, token),
                REQUEST_ID: request_id,
            },
        }

    def ask_token(
        self,
        client: httpx.Client,
        assertion: str | None = None,
        *,
        proof: str | None = None,
        request_id: str = "req-token",
    ) -> httpx.Response:
        return client.request(**self.token_request(assertion, proof=proof, request_id=request_id))

    def token(self, client: httpx.Client, assertion: str | None = None) -> str:
        resp = self.ask_token(client, assertion)
        assert resp.status_code == 200, resp.text
        assert resp.json()["token_type"] == "DPoP"
        token: str = resp.json()["access_token"]
        return token

    def call(
        self,
        client: httpx.Client,
        route: Route,
        token: str,
        *,
        proof: str | None = None,
        request_id: str = "req-call",
    ) -> httpx.Response:
        return client.request(**self.call_request(route, token, proof=proof, request_id=request_id))


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: dict[str, Any] | None = None


MODELS = Route("GET", "/v1/models")
TOOLS = Route("GET", "/v1/tools")
KB_SEARCH = Route("POST", "/v1/tools/kb.search", {"arguments": {"query": "replay"}})
MESSAGES = Route("POST", "/v1/messages", MESSAGE_BODY)


def event(paths: Paths, request_id: str) -> dict[str, Any]:
    """The one audit event of the request ``request_id``."""
    found = read_events(paths.audit_log, request_id=request_id)
    assert len(found) == 1, found
    return found[0]


def ledger_rows(paths: Paths) -> list[TokenRow]:
    """agent-1's rows in the issuance ledger, oldest first."""
    ledger = Ledger(paths.token_ledger, create=False)
    try:
        return ledger.rows(now=time.time(), agent_id=AGENT, limit=10_000)
    finally:
        ledger.close()


def ledger_jtis(paths: Paths) -> list[str]:
    return [row.jti for row in ledger_rows(paths)]


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    jti: str = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
    return jti


# --- an in-process gateway with the packaged configuration ----------------------------


def packaged_paths(tmp_path: Path, *, token_requests_per_minute: int | None = None) -> Paths:
    """The repository's config/gateway.toml (dpop = "required"), unchanged but for the
    per-agent token request limit when given, and its policy; agent-1 enrolled as
    demo-agent."""
    config = tmp_path / "config"
    config.mkdir()
    gateway_toml = (REPO / "config" / "gateway.toml").read_text()
    assert 'dpop = "required"' in gateway_toml
    if token_requests_per_minute is not None:
        gateway_toml, found = re.subn(
            r"^token_requests_per_minute = \d+",
            f"token_requests_per_minute = {token_requests_per_minute}",
            gateway_toml,
            flags=re.MULTILINE,
        )
        assert found == 1
    (config / "gateway.toml").write_text(gateway_toml)
    (config / "policy.toml").write_text((REPO / "config" / "policy.toml").read_text())
    paths = Paths(config_dir=config, home=tmp_path / "home")
    enroll_agent(paths, AGENT, ROLE)
    return paths


@dataclass
class Live:
    """One in-process gateway, shared by this module's tests: each presents credentials
    of its own, and sees only the audit events made since it began."""

    paths: Paths
    gateway: Gateway
    url: str
    agent: Agent
    seq0: int = 0

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def fresh(self) -> Live:
        last = read_events(self.paths.audit_log, limit=1)
        self.seq0 = last[0]["seq"] if last else 0
        return self

    def event(self, request_id: str) -> dict[str, Any]:
        """The outcome event of this test's request ``request_id`` (after its decision
        event, if the gateway acted on it)."""
        found = read_events(self.paths.audit_log, request_id=request_id)
        return outcome_event([e for e in found if e["seq"] > self.seq0])


@pytest.fixture(scope="module")
def shared_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # Every test here asks for tokens: the per-agent limit (60 a minute) is raised so the
    # module's total cannot reach it; tests/security/test_rate_limits.py covers it.
    paths = packaged_paths(tmp_path_factory.mktemp("replay"), token_requests_per_minute=10_000)
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock))
    with running(create_app(gateway), sock) as server:
        agent = Agent(read_private_key(paths.identity_key(AGENT)), server.url)
        yield Live(paths=paths, gateway=gateway, url=server.url, agent=agent)


@pytest.fixture
def live(shared_live: Live) -> Live:
    return shared_live.fresh()


# --- client assertions ---------------------------------------------------------------------


def replay_identical(live: Live, client: httpx.Client, assertion: str) -> httpx.Response:
    """The very same request again, DPoP proof included."""
    proof = live.agent.token_proof()
    first = live.agent.ask_token(client, assertion, proof=proof, request_id="req-first")
    assert first.status_code == 200, first.text
    return live.agent.ask_token(client, assertion, proof=proof, request_id="req-replay")


def replay_fresh_proof(live: Live, client: httpx.Client, assertion: str) -> httpx.Response:
    """The assertion again, with a new, valid DPoP proof."""
    live.agent.token(client, assertion)
    return live.agent.ask_token(client, assertion, request_id="req-replay")


def replay_narrower_scope(live: Live, client: httpx.Client, assertion: str) -> httpx.Response:
    """The assertion again, in a request that differs (a narrower scope)."""
    live.agent.token(client, assertion)
    return client.post(
        "/v1/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "scope": "tool:kb.search",
        },
        headers={"DPoP": live.agent.token_proof(), REQUEST_ID: "req-replay"},
    )


def replay_after_token_used(live: Live, client: httpx.Client, assertion: str) -> httpx.Response:
    """The assertion again, after its token served a call."""
    token = live.agent.token(client, assertion)
    assert live.agent.call(client, MODELS, token).status_code == 200
    return live.agent.ask_token(client, assertion, request_id="req-replay")


def replay_at_revoke(live: Live, client: httpx.Client, assertion: str) -> httpx.Response:
    """An assertion spent at /v1/token presented to /v1/revoke (which also authenticates
    clients with assertions): the jti store is one for both."""
    token = live.agent.token(client, assertion)
    return client.post(
        "/v1/revoke",
        data={
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "token": token,
        },
        headers={REQUEST_ID: "req-replay"},
    )


@pytest.mark.parametrize(
    ("replay", "action"),
    [
        pytest.param(replay_identical, "token.reject", id="identical-request"),
        pytest.param(replay_fresh_proof, "token.reject", id="fresh-dpop-proof"),
        pytest.param(replay_narrower_scope, "token.reject", id="narrower-scope"),
        pytest.param(replay_after_token_used, "token.reject", id="after-token-used"),
        pytest.param(replay_at_revoke, "token.revoke", id="at-revoke-endpoint"),
    ],
)
def test_an_assertion_presented_twice_is_refused_the_second_time(
    live: Live,
    replay: Callable[[Live, httpx.Client, str], httpx.Response],
    action: str,
) -> None:
    assertion = live.agent.assertion()
    with live.client() as client:
        before = ledger_jtis(live.paths)
        second = replay(live, client, assertion)
        assert second.status_code == 401, second.text
        assert second.json()["error"] == "invalid_client"
        assert "access_token" not in second.json()
        seen = live.event("req-replay")
        assert (seen["action"], seen["decision"], seen["status"]) == (action, "deny", 401)
        assert ALREADY_USED in seen["reason"]
        # The first presentation issued one token; the replay issued none (nor revoked it).
        after = ledger_rows(live.paths)
        assert len(after) == len(before) + 1
        assert after[-1].state(time.time()) == "live"


def test_fifty_concurrent_presentations_of_one_assertion_issue_exactly_one_token(
    live: Live,
) -> None:
    presenters = 50
    assertion = live.agent.assertion()
    # Each presenter brings its own valid DPoP proof: only the assertion is shared.
    proofs = [live.agent.token_proof() for _ in range(presenters)]
    before = ledger_jtis(live.paths)

    responses = all_at_once(
        live.url,
        [
            live.agent.token_request(assertion, proof=proofs[i], request_id=f"req-burst-{i}")
            for i in range(presenters)
        ],
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * (presenters - 1)
    winners = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert all(r.json()["error"] == "invalid_client" for r in refused)
    assert all("access_token" not in r.json() for r in refused)

    # Exactly one ledger row from this burst, and it is the token handed out.
    new_rows = ledger_jtis(live.paths)[len(before) :]
    assert new_rows == [jti_of(winners[0].json()["access_token"])]

    events = [live.event(f"req-burst-{i}") for i in range(presenters)]
    issued = [e for e in events if e["action"] == "token.issue"]
    rejected = [e for e in events if e["action"] == "token.reject"]
    assert len(issued) == 1
    assert len(rejected) == presenters - 1
    assert all(e["status"] == 401 and ALREADY_USED in e["reason"] for e in rejected)


# --- DPoP proofs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        pytest.param(MODELS, id="GET-models"),
        pytest.param(TOOLS, id="GET-tools"),
        pytest.param(KB_SEARCH, id="POST-tool-kb.search"),
        pytest.param(MESSAGES, id="POST-messages"),
    ],
)
def test_one_dpop_proof_sent_twenty_times_at_once_serves_exactly_one_call(
    live: Live, route: Route
) -> None:
    senders = 20
    with live.client() as client:
        token = live.agent.token(client)
    proof = live.agent.proof(route.method, route.path, token)

    responses = all_at_once(
        live.url,
        [
            live.agent.call_request(route, token, proof=proof, request_id=f"req-proof-{i}")
            for i in range(senders)
        ],
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * (senders - 1), [r.text for r in responses]
    refused = [r for r in responses if r.status_code == 401]
    assert all(r.json()["error"]["type"] == "authentication_error" for r in refused)
    assert all("DPoP" in r.headers["www-authenticate"] for r in refused)
    reasons = [live.event(f"req-proof-{i}")["reason"] for i in range(senders)]
    assert sum(ALREADY_USED in reason for reason in reasons) == senders - 1


# A proof is made for one method and URL (and, on a call, one access token). Each row
# spends a proof on the request it was made for, then presents it again elsewhere; the
# second presentation is refused. Where it names another URL, the htu check refuses it
# before the jti store is consulted: either way it must not pass.
TOKEN_ENDPOINT = "token"
ROUTES = {"models": MODELS, "tools": TOOLS, "kb.search": KB_SEARCH}
CROSS_USES = [
    # proof made for, presented again at, with another token?, status, error, audit reason
    pytest.param(
        "token", "token", False, 400, "invalid_dpop_proof", ALREADY_USED,
        id="token-proof-again-at-token-endpoint",
    ),
    pytest.param(
        "token", "kb.search", False, 401, "authentication_error", "htu",
        id="token-proof-on-resource-POST",
    ),
    pytest.param(
        "token", "models", False, 401, "authentication_error", "htm",
        id="token-proof-on-resource-GET",
    ),
    pytest.param(
        "kb.search", "token", False, 400, "invalid_dpop_proof", "htu",
        id="resource-POST-proof-at-token-endpoint",
    ),
    pytest.param(
        "models", "token", False, 400, "invalid_dpop_proof", "htm",
        id="resource-GET-proof-at-token-endpoint",
    ),
    pytest.param(
        "models", "tools", False, 401, "authentication_error", "htu",
        id="resource-proof-on-another-route",
    ),
    pytest.param(
        "models", "models", False, 401, "authentication_error", ALREADY_USED,
        id="resource-proof-again-on-same-route",
    ),
    pytest.param(
        "models", "models", True, 401, "authentication_error", "ath",
        id="resource-proof-with-another-token",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("made_for", "again_at", "another_token", "status", "error", "reason"), CROSS_USES
)
def test_a_spent_dpop_proof_is_refused_at_the_token_endpoint_and_on_calls(
    live: Live,
    made_for: str,
    again_at: str,
    another_token: bool,
    status: int,
    error: str,
    reason: str,
) -> None:
    with live.client() as client:
        # The first use: the proof serves exactly the request it was made for.
        if made_for == TOKEN_ENDPOINT:
            proof = live.agent.token_proof()
            first = live.agent.ask_token(client, proof=proof, request_id="req-first")
            token = first.json()["access_token"]
        else:
            token = live.agent.token(client)
            route = ROUTES[made_for]
            proof = live.agent.proof(route.method, route.path, token)
            first = live.agent.call(client, route, token, proof=proof, request_id="req-first")
        assert first.status_code == 200, first.text

        if again_at == TOKEN_ENDPOINT:
            again = live.agent.ask_token(client, proof=proof, request_id="req-again")
            assert again.json()["error"] == error
            assert "access_token" not in again.json()
        else:
            if another_token:
                token = live.agent.token(client)
            again = live.agent.call(
                client, ROUTES[again_at], token, proof=proof, request_id="req-again"
            )
            assert again.json()["error"]["type"] == error
        assert again.status_code == status, again.text
        seen = live.event("req-again")
        assert (seen["decision"], seen["status"]) == ("deny", status)
        assert reason in seen["reason"]


# --- replay across a restart of a real `agentzt gateway` process -------------------------


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_credentials_used_before_a_restart_stay_used_after_it(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], stop: signal.Signals
) -> None:
    paths = packaged_paths(tmp_path)
    proc, url = start_gateway(paths, procs, tmp_path / "gw1.stderr")
    agent = Agent(read_private_key(paths.identity_key(AGENT)), url)

    with httpx.Client(base_url=url, timeout=10) as client:
        assertion = agent.assertion()
        token_proof = agent.token_proof()
        issued = agent.ask_token(client, assertion, proof=token_proof)
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        call_proof = agent.proof("GET", "/v1/models", token)
        assert agent.call(client, MODELS, token, proof=call_proof).status_code == 200

    proc.send_signal(stop)
    assert proc.wait(timeout=15) == -stop
    if stop == signal.SIGTERM:
        assert "Traceback" not in (tmp_path / "gw1.stderr").read_text()

    # Same home and the first run's URL as issuer: its tokens are this gateway's.
    pin_issuer(paths, url)
    _, url_again = start_gateway(paths, procs, tmp_path / "gw2.stderr")
    with httpx.Client(base_url=url_again, timeout=10) as client:
        replayed = agent.ask_token(client, assertion, request_id="req-replay-assertion")
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["error"] == "invalid_client"
        assert "access_token" not in replayed.json()
        seen = event(paths, "req-replay-assertion")
        assert (seen["action"], seen["decision"], seen["status"]) == ("token.reject", "deny", 401)
        assert ALREADY_USED in seen["reason"]

        again = agent.call(client, MODELS, token, proof=call_proof, request_id="req-replay-call")
        assert again.status_code == 401, again.text
        assert again.json()["error"]["type"] == "authentication_error"
        assert ALREADY_USED in event(paths, "req-replay-call")["reason"]

        spent = agent.ask_token(client, proof=token_proof, request_id="req-replay-token-proof")
        assert spent.status_code == 400, spent.text
        assert spent.json()["error"] == "invalid_dpop_proof"
        assert ALREADY_USED in event(paths, "req-replay-token-proof")["reason"]

        # Not a gateway that refuses everything: the same token with a fresh proof works.
        assert agent.call(client, MODELS, token, request_id="req-fresh").status_code == 200
