"""Regressions from the adversarial review of DPoP, task-bound tokens and the issuance
ledger: each test here failed before its fix and passes with it.

1. a task ended by another process between the token endpoint's check and the ledger
   insert left a live token;
2. a token accepted in the expiry leeway could not be revoked there;
3. a JIT grant asked for under a task outlived the task;
4. introspection called tokens active that every call refuses;
5. ``agentzt revoke --task T`` spared agents yet to ask for a T token;
6. non-canonical base64url gave one signature sixteen spellings;
7. the proxy kept a task token the gateway had refused to refresh.

Real gateways (and a proxy) on ephemeral loopback ports, with ``dpop = "optional"`` (see
conftest's ``paths``): tokens asked for without a proof are bearer tokens.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import tomli_w
from conftest import Clock, enroll_agent, outcome_event
from forge import b64u_decode

from agentzt.audit import read_events
from agentzt.cli import main as cli_main
from agentzt.config import Paths
from agentzt.errors import TaskEndedError
from agentzt.gateway import Gateway, create_app
from agentzt.identity import Ledger, SigningKey, make_assertion, new_jti, read_private_key
from agentzt.identity.dpop import Prover
from agentzt.identity.ledger import TokenRow
from agentzt.proxy import create_proxy_app
from agentzt.server import BackgroundServer, bind, url_of

AGENT = "agent-1"
OTHER = "agent-2"
ROLE = "demo-agent"
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TASK_HEADER = "x-agentzt-task-id"
GRANT_HEADER = "x-agentzt-elevation"
REQUEST_ID = "x-agentzt-request-id"
ENDED_MESSAGE = "this task has ended; start a new task id"
TTL = 300  # access_token_ttl_seconds in the packaged gateway.toml
LEEWAY = 30  # a token is accepted this long after its exp (clock skew)
EMAIL_ARGS = {"to": "cfo@example.com", "subject": "Q3", "body": "Numbers attached."}
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# --- helpers ---------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64u_decode(token.split(".")[1]))
    return claims


def ledger_rows(paths: Paths, **filters: Any) -> list[TokenRow]:
    """The ledger as an independent reader (a second SQLite connection) sees it."""
    ledger = Ledger(paths.token_ledger, create=False)
    try:
        return ledger.rows(now=time.time(), limit=10_000, **filters)
    finally:
        ledger.close()


def events(paths: Paths, **filters: Any) -> list[dict[str, Any]]:
    return read_events(paths.audit_log, **filters)


def event_of(paths: Paths, response: httpx.Response, **expect: bool) -> dict[str, Any]:
    """The outcome event of the request that got ``response`` (after its decision event,
    if the gateway acted on it; see ``outcome_event`` for ``expect``)."""
    return outcome_event(events(paths, request_id=response.headers[REQUEST_ID]), **expect)


def operator(paths: Paths) -> dict[str, str]:
    return {"authorization": f"Bearer {paths.operator_token.read_text('utf-8').strip()}"}


def set_registry(paths: Paths, agent_id: str, **changes: str) -> None:
    """Edit one agent's entry in agents.toml, as an operator would, and make sure the
    gateway's (mtime, size) stamp sees the change even within one timestamp tick."""
    path = paths.agents_toml
    before = path.stat().st_mtime_ns
    document = tomllib.loads(path.read_text())
    document["agents"][agent_id].update(changes)
    path.write_text(tomli_w.dumps(document))
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def variants(segment: str) -> list[str]:
    """Every other spelling of ``segment`` that differs only in the unused low bits of
    its last character. An Ed25519 signature (64 bytes) ends in a 2-character group:
    12 bits carrying 8, so the last character's low 4 bits are unused; 15 variants."""
    assert len(segment) % 4 == 2, "expected a 64-byte signature segment"
    index = B64URL.index(segment[-1])
    assert index & 0b1111 == 0, "the gateway's own encoding is canonical"
    return [segment[:-1] + B64URL[index | low] for low in range(1, 16)]


def with_signature(jws: str, signature: str) -> str:
    header, payload, _ = jws.split(".")
    return f"{header}.{payload}.{signature}"


@dataclass
class Agent:
    """One agent talking to the gateway directly, on the gateway's clock."""

    env: Env
    agent_id: str
    key: SigningKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = read_private_key(self.env.paths.identity_key(self.agent_id))

    @property
    def prover(self) -> Prover:
        return Prover(self.key, new_jti)

    def request_token(self, task: str | None = None, *, dpop: bool = False) -> httpx.Response:
        gateway, now = self.env.gateway, self.env.clock()
        fields = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": make_assertion(
                self.key, self.agent_id, audience=gateway.token_endpoint, now=now
            ),
        }
        if task is not None:
            fields["task_id"] = task
        headers = {"content-type": FORM}
        if dpop:
            headers["dpop"] = self.prover.proof("POST", gateway.token_endpoint, now=now)
        return self.env.client.post("/v1/token", content=urlencode(fields), headers=headers)

    def issue(self, task: str | None = None, *, dpop: bool = False) -> str:
        response = self.request_token(task, dpop=dpop)
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == ("DPoP" if dpop else "Bearer")
        token: str = response.json()["access_token"]
        return token

    def proof(self, token: str, method: str = "GET", path: str = "/v1/models") -> str:
        url = f"{self.env.gateway.issuer}{path}"
        return self.prover.proof(method, url, now=self.env.clock(), access_token=token)

    def call(
        self,
        token: str,
        method: str = "GET",
        path: str = "/v1/models",
        *,
        task: str | None = None,
        proof: str | None = None,
        dpop: bool = False,
        json: Any = None,
        **extra: str,
    ) -> httpx.Response:
        """A call with ``token``: as a bearer token, or with ``dpop`` (or an explicit
        ``proof``) under the DPoP scheme with a proof over this method and URL."""
        if proof is None and dpop:
            proof = self.proof(token, method, path)
        if proof is None:
            headers = {"authorization": f"Bearer {token}"}
        else:
            headers = {"authorization": f"DPoP {token}", "dpop": proof}
        if task is not None:
            headers[TASK_HEADER] = task
        headers.update(extra)
        return self.env.client.request(method, path, headers=headers, json=json)

    def end(self, task: str, token: str) -> httpx.Response:
        return self.call(token, "POST", f"/v1/tasks/{task}/end")


@dataclass
class Env:
    paths: Paths
    gateway: Gateway
    url: str
    clock: Clock
    client: httpx.Client

    def agent(self, agent_id: str = AGENT) -> Agent:
        return Agent(self, agent_id)

    def post_form(
        self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.client.post(
            path, content=urlencode(fields), headers={"content-type": FORM, **(headers or {})}
        )

    def revoke(self, token: str) -> httpx.Response:
        return self.post_form("/v1/revoke", {"token": token}, operator(self.paths))

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.post_form("/v1/introspect", {"token": token}, operator(self.paths))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture
def env(paths: Paths) -> Iterator[Env]:
    """A gateway on a settable clock (starting now), with agent-1 and agent-2 enrolled."""
    enroll_agent(paths, AGENT, ROLE)
    enroll_agent(paths, OTHER, ROLE)
    clock = Clock(time.time())
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock), clock=clock)
    server = BackgroundServer(create_app(gateway), sock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield Env(paths, gateway, server.url, clock, client)
    finally:
        server.stop()


def run_cli(paths: Paths, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``agentzt --config ... --home ... ARGS`` through the real entry point, in this
    process but with its own ledger connection, as a separate CLI process would have."""
    argv = ["agentzt", "--config", str(paths.config_dir), "--home", str(paths.home), *args]
    saved = sys.argv
    capsys.readouterr()
    sys.argv = argv
    try:
        cli_main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


# --- 1. a task ended between the token endpoint's check and the ledger insert ------------


def _record(ledger: Ledger, agent_id: str, task: str | None) -> str:
    jti, now = new_jti(), int(time.time())
    ledger.record(
        jti=jti,
        agent_id=agent_id,
        role=ROLE,
        task_id=task,
        scope="model:claude-haiku-4-5",
        binding="bearer",
        issued_at=now,
        expires_at=now + TTL,
    )
    return jti


def test_ledger_record_refuses_a_task_another_process_ended(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    gateway_side = Ledger(path)
    cli_side = Ledger(path, create=False)  # the CLI's own connection to the same file
    try:
        cli_side.end_task(AGENT, "T", now=time.time(), reason="operator")
        with pytest.raises(TaskEndedError):
            _record(gateway_side, AGENT, "T")
        assert gateway_side.rows(now=time.time(), task_id="T") == []
        # Only that agent's task: another agent's T, another task and no task still record.
        _record(gateway_side, OTHER, "T")
        _record(gateway_side, AGENT, "T-2")
        _record(gateway_side, AGENT, None)

        # The operator's `revoke --task U` (every agent, "*") blocks any agent's U.
        cli_side.end_task_for_all("U", now=time.time(), reason="operator")
        for agent_id in (AGENT, OTHER, "never-seen"):
            with pytest.raises(TaskEndedError):
                _record(gateway_side, agent_id, "U")
        assert gateway_side.rows(now=time.time(), task_id="U") == []
        rows = gateway_side.rows(now=time.time())
        assert sorted((r.agent_id, r.task_id or "") for r in rows) == [
            (AGENT, ""),
            (AGENT, "T-2"),
            (OTHER, "T"),
        ]
    finally:
        cli_side.close()
        gateway_side.close()


def test_token_endpoint_refuses_a_task_ended_after_its_early_check(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = env.agent()
    # The race window, made deterministic: the endpoint's early check has already said
    # "not ended" when the CLI, a separate ledger connection, ends the task.
    monkeypatch.setattr(env.gateway.ledger, "task_ended", lambda agent_id, task_id: False)
    cli_side = Ledger(env.paths.token_ledger, create=False)
    try:
        cli_side.end_task(AGENT, "race", now=time.time(), reason="operator")
    finally:
        cli_side.close()

    refused = agent.request_token("race")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == "invalid_request"
    assert refused.json()["error_description"] == ENDED_MESSAGE
    assert "access_token" not in refused.json()
    assert ledger_rows(env.paths, task_id="race") == []
    # The early check passed, so the issuance was authorized (and audited) before the
    # ledger, in one transaction with the insert, saw the task ended.
    event = event_of(env.paths, refused, refused_after_deciding=True)
    assert (event["action"], event["decision"], event["status"]) == ("token.reject", "deny", 400)
    # The same agent's other tasks are unaffected.
    assert agent.call(agent.issue("other"), task="other").status_code == 200


# --- 2. revocation inside the expiry leeway ---------------------------------------------


def test_token_in_its_expiry_leeway_can_be_revoked(env: Env) -> None:
    agent = env.agent()
    token, task_token = agent.issue(), agent.issue("job-7")
    # Past both tokens' exp, inside the leeway: both are still accepted.
    env.clock.now = max(claims_of(t)["exp"] for t in (token, task_token)) + 10
    assert agent.call(token).status_code == 200
    assert agent.call(task_token, task="job-7").status_code == 200

    # /v1/revoke by the operator takes effect in the leeway.
    revoked = env.revoke(token)
    assert revoked.status_code == 200, revoked.text
    refused = agent.call(token)
    assert refused.status_code == 401, refused.text
    assert event_of(env.paths, revoked)["reason"] == f"token {claims_of(token)['jti']} revoked"
    # A second revoke matches nothing, and the audit says so.
    again = env.revoke(token)
    assert again.status_code == 200
    assert "nothing to revoke" in event_of(env.paths, again)["reason"]

    # Ending the task revokes its token in the leeway too.
    ended = agent.end("job-7", agent.issue())
    assert ended.status_code == 200, ended.text
    assert ended.json()["revoked"] >= 1
    refused = agent.call(task_token, task="job-7")
    assert refused.status_code == 401, refused.text
    assert "task ended" in event_of(env.paths, refused)["reason"]
    (row,) = ledger_rows(env.paths, task_id="job-7")
    assert row.revoked_at is not None


# --- 3. a JIT grant dies with the task it was asked for under ----------------------------


def test_grant_asked_for_under_a_task_serves_only_that_task(env: Env) -> None:
    agent = env.agent()
    task_token, session = agent.issue("T"), agent.issue()
    elevated = agent.call(
        task_token,
        "POST",
        "/v1/elevate",
        task="T",
        json={"kind": "tool", "name": "email.send", "reason": "task T"},
    )
    assert elevated.status_code == 200, elevated.text
    grant = elevated.json()["elevation_grant"]

    def send(token: str, task: str | None = None, with_grant: str = grant) -> httpx.Response:
        grant_header: dict[str, Any] = {GRANT_HEADER: with_grant}
        return agent.call(
            token,
            "POST",
            "/v1/tools/email.send",
            task=task,
            json={"arguments": EMAIL_ARGS},
            **grant_header,
        )

    # The session token (which outlives T) may not present T's grant.
    refused = send(session)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["type"] == "permission_error"
    assert "invalid elevation grant" in refused.json()["error"]["message"]
    assert "another task" in event_of(env.paths, refused)["reason"]
    # T's own token may (the refusal above did not use up its single use).
    used = send(task_token, "T")
    assert used.status_code == 200, used.text
    assert event_of(env.paths, used)["meta"]["via"] == "jit"

    # Nor does a grant asked for without a task serve a task's calls.
    plain = agent.call(
        session, "POST", "/v1/elevate", json={"kind": "tool", "name": "email.send", "reason": "r"}
    )
    assert plain.status_code == 200, plain.text
    other_task = agent.issue("T-2")
    crossed = send(other_task, "T-2", plain.json()["elevation_grant"])
    assert crossed.status_code == 403, crossed.text

    # Once T ends, nothing can present its grant: T's token is revoked.
    ended = agent.end("T", session)
    assert ended.status_code == 200, ended.text
    assert ended.json()["revoked"] == 1
    assert send(task_token, "T").status_code == 401


# --- 4. introspection agrees with what a call gets ----------------------------------------


def _disable(env: Env, agent: Agent) -> None:
    set_registry(env.paths, agent.agent_id, status="disabled")


def _change_role(env: Env, agent: Agent) -> None:
    set_registry(env.paths, agent.agent_id, role="research-agent")


def _reenroll_key(env: Env, agent: Agent) -> None:
    set_registry(env.paths, agent.agent_id, public_key=SigningKey.generate().public.b64url)


@pytest.mark.parametrize(
    "change",
    [_disable, _change_role, _reenroll_key],
    ids=["disabled-agent", "changed-role", "re-enrolled-key"],
)
def test_introspection_is_inactive_for_tokens_every_call_refuses(env: Env, change: Any) -> None:
    agent, other = env.agent(), env.agent(OTHER)
    # DPoP-bound, so the re-enrolled key case has a key binding to break.
    token, control = agent.issue(dpop=True), other.issue(dpop=True)
    assert agent.call(token, dpop=True).status_code == 200
    assert env.introspect(token)["active"] is True

    change(env, agent)
    assert agent.call(token, dpop=True).status_code == 401
    assert env.introspect(token) == {"active": False}
    # The agent left alone: its token still works and introspects active.
    assert other.call(control, dpop=True).status_code == 200
    answer = env.introspect(control)
    assert answer["active"] is True
    assert answer["sub"] == OTHER


# --- 5. `agentzt revoke --task T` ends T for agents yet to ask for it ---------------------


def test_cli_revoke_task_refuses_agents_that_never_had_a_token_for_it(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    agent, other = env.agent(), env.agent(OTHER)
    # agent-1 holds a T token; agent-2 never asked for one.
    held = agent.issue("incident-42")
    _, out = run_cli(env.paths, capsys, "revoke", "--task", "incident-42")
    assert out.strip() == "revoked 1 live token; task incident-42 ended"
    assert agent.call(held, task="incident-42").status_code == 401

    for who in (agent, other):
        refused = who.request_token("incident-42")
        assert refused.status_code == 400, (who.agent_id, refused.text)
        assert refused.json()["error_description"] == ENDED_MESSAGE
    assert [r.agent_id for r in ledger_rows(env.paths, task_id="incident-42")] == [AGENT]
    # Other tasks are untouched.
    assert other.call(other.issue("incident-43"), task="incident-43").status_code == 200


def test_cli_revoke_task_nobody_holds_yet_refuses_everyone(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out = run_cli(env.paths, capsys, "revoke", "--task", "future")
    assert out.strip() == "revoked 0 live tokens; task future ended"
    for who in (env.agent(), env.agent(OTHER)):
        refused = who.request_token("future")
        assert refused.status_code == 400, (who.agent_id, refused.text)
        assert refused.json()["error_description"] == ENDED_MESSAGE
    assert ledger_rows(env.paths, task_id="future") == []


# --- 6. one string form per signature -----------------------------------------------------


def test_non_canonical_signature_spellings_are_refused(env: Env) -> None:
    agent = env.agent()

    # A bearer access token.
    bearer = agent.issue()
    spellings = variants(bearer.split(".")[2])
    assert len(spellings) == 15
    for signature in spellings:
        refused = agent.call(with_signature(bearer, signature))
        assert refused.status_code == 401, (signature, refused.text)
    assert "canonical" in event_of(env.paths, refused)["reason"]
    assert agent.call(bearer).status_code == 200

    # A DPoP-bound access token, each spelling with a valid proof over that very string.
    bound = agent.issue(dpop=True)
    for signature in variants(bound.split(".")[2]):
        malleated = with_signature(bound, signature)
        refused = agent.call(malleated, proof=agent.proof(malleated))
        assert refused.status_code == 401, (signature, refused.text)
    assert agent.call(bound, dpop=True).status_code == 200

    # A DPoP proof: a fresh one (new jti) each time, its signature respelled.
    for index in range(15):
        proof = agent.proof(bound)
        malleated = with_signature(proof, variants(proof.split(".")[2])[index])
        refused = agent.call(bound, proof=malleated)
        assert refused.status_code == 401, (malleated, refused.text)
    assert "canonical" in event_of(env.paths, refused)["reason"]
    # The refused spelling did not use up the proof: its canonical form still works.
    assert agent.call(bound, proof=proof).status_code == 200


# --- 7. the proxy drops a task token the gateway refused to refresh ------------------------


def test_proxy_drops_a_dead_task_token_after_a_failed_refresh(env: Env) -> None:
    key = read_private_key(env.paths.identity_key(AGENT))
    app = create_proxy_app(agent_id=AGENT, key=key, gateway_url=env.url)
    server = BackgroundServer(app, bind("127.0.0.1", 0)).start()
    session = app.state.token_session
    try:
        with httpx.Client(base_url=server.url, timeout=10) as proxy:
            assert proxy.get("/v1/models", headers={TASK_HEADER: "T"}).status_code == 200
            assert session.held("T") is not None

            # The operator ends T from the CLI: a separate connection to the ledger.
            cli_side = Ledger(env.paths.token_ledger, create=False)
            try:
                assert cli_side.end_task(AGENT, "T", now=time.time(), reason="operator") == 1
            finally:
                cli_side.close()

            first = proxy.get("/v1/models", headers={TASK_HEADER: "T"})
            assert first.status_code == 401, first.text
            assert first.json()["error"]["message"] == ENDED_MESSAGE
            assert session.held("T") is None

            seen = len(events(env.paths))
            second = proxy.get("/v1/models", headers={TASK_HEADER: "T"})
            assert second.status_code == 401, second.text
            assert second.json()["error"]["message"] == ENDED_MESSAGE
            assert session.held("T") is None
            # Straight to a token request (refused): no attempt with the dead token.
            new = events(env.paths)[seen:]
            assert [(e["action"], e["status"]) for e in new] == [("token.reject", 400)]

            # Calls without a task still run on the session token.
            assert proxy.get("/v1/models").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("claim", ["iss", "sub", "jti", "aud"])
def test_a_string_claim_with_a_lone_surrogate_is_refused(claim: str) -> None:
    """A ``\\ud800`` escape parses to a string with no UTF-8 form: a jti like that was
    accepted, and a sub like that could not be audited (503 with no event)."""
    from agentzt.errors import MissingClaimError
    from agentzt.identity import jws

    claims = {"iss": "a", "sub": "a", "aud": "b", "jti": "j", "iat": 1, "exp": 2}
    raw = json.dumps({**claims, claim: "x\ud800y"}).encode("ascii")
    assert b"\\ud800" in raw
    with pytest.raises(MissingClaimError, match="not valid Unicode"):
        jws.parse_claims(raw)
    assert jws.parse_claims(json.dumps(claims).encode())["jti"] == "j"
