"""Task-bound tokens, the issuance ledger, revocation (RFC 7009), introspection (RFC 7662)
and the ``agentzt tokens`` / ``agentzt revoke`` commands, over real HTTP against a real
gateway (and client proxy) on ephemeral loopback ports.

DPoP proof checks live in tests/test_dpop.py and restarts / crashes / a failing ledger in
tests/test_state_persistence.py; here the gateway runs with ``dpop = "optional"`` (see
conftest's ``paths``), so tokens asked for directly without a proof are bearer tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import Clock, Stack, enroll_agent, in_ledger, outcome_event
from forge import b64u, compact

from agentzt.audit import read_events
from agentzt.cli import main as cli_main
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import Ledger, SigningKey, make_assertion, read_private_key
from agentzt.identity.ledger import TokenRow
from agentzt.server import BackgroundServer, bind, url_of

AGENT = "agent-1"
OTHER = "agent-2"
ROLE = "demo-agent"
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TASK_HEADER = "x-agentzt-task-id"
REQUEST_ID = "x-agentzt-request-id"
ENDED_MESSAGE = "this task has ended; start a new task id"
TTL = 300
# The error codes RFC 6749 section 5.2 defines, plus RFC 7009's own.
OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "unsupported_token_type",
}
ROW_KEYS = {
    "jti",
    "agent_id",
    "role",
    "task_id",
    "scope",
    "binding",
    "issued_at",
    "expires_at",
    "state",
    "revoked_at",
    "revoked_reason",
}
BAD_TASK_IDS = ["has space", "-leading-dash", "a" * 129, "a/b", "semi;colon", "tab\tin"]


# --- helpers ---------------------------------------------------------------------------


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def bearer(token: str, task: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    if task is not None:
        headers[TASK_HEADER] = task
    return headers


def ledger_rows(paths: Paths, **filters: Any) -> list[TokenRow]:
    """The ledger as an independent reader (a second SQLite connection) sees it."""
    ledger = Ledger(paths.token_ledger, create=False)
    try:
        return ledger.rows(now=time.time(), limit=10_000, **filters)
    finally:
        ledger.close()


def row_of(paths: Paths, jti: str) -> TokenRow:
    (row,) = [r for r in ledger_rows(paths) if r.jti == jti]
    return row


def events(paths: Paths, **filters: Any) -> list[dict[str, Any]]:
    return read_events(paths.audit_log, **filters)


def event_of(paths: Paths, response: httpx.Response, **expect: bool) -> dict[str, Any]:
    """The outcome event of the request that got ``response`` (after its decision event,
    if the gateway acted on it; see ``outcome_event`` for ``expect``)."""
    return outcome_event(events(paths, request_id=response.headers[REQUEST_ID]), **expect)


def operator_secret(paths: Paths) -> str:
    return paths.operator_token.read_text("utf-8").strip()


def operator(paths: Paths) -> dict[str, str]:
    return {"authorization": f"Bearer {operator_secret(paths)}"}


def assert_error(response: httpx.Response, status: int, error_type: str) -> str:
    """An Anthropic-style error body; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    message: str = body["error"]["message"]
    return message


@dataclass
class Direct:
    """A client talking to the gateway directly, as a given agent."""

    stack: Stack
    client: httpx.Client
    agent_id: str = AGENT
    key: SigningKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = read_private_key(self.stack.paths.identity_key(self.agent_id))

    @property
    def paths(self) -> Paths:
        return self.stack.paths

    def as_agent(self, agent_id: str) -> Direct:
        return Direct(self.stack, self.client, agent_id)

    def assertion(self) -> str:
        return make_assertion(
            self.key, self.agent_id, audience=self.stack.gateway.token_endpoint, now=time.time()
        )

    def post_form(
        self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return self.client.post(
            path, content=urlencode(fields), headers={"content-type": FORM, **(headers or {})}
        )

    def request_token(self, task: str | None = None, **extra: str) -> httpx.Response:
        fields = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
            **extra,
        }
        if task is not None:
            fields["task_id"] = task
        return self.post_form("/v1/token", fields)

    def issue(self, task: str | None = None, **extra: str) -> str:
        response = self.request_token(task, **extra)
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "Bearer"
        token: str = response.json()["access_token"]
        return token

    def models(self, token: str, task: str | None = None) -> httpx.Response:
        return self.client.get("/v1/models", headers=bearer(token, task))

    def end(self, task: str, token: str, header: str | None = None) -> httpx.Response:
        return self.client.post(f"/v1/tasks/{task}/end", headers=bearer(token, header))

    def revoke(self, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.post_form("/v1/revoke", {"token": token}, headers)

    def revoke_as_agent(self, token: str) -> httpx.Response:
        return self.post_form(
            "/v1/revoke",
            {
                "token": token,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(),
            },
        )

    def introspect(self, token: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.post_form(
            "/v1/introspect", {"token": token}, operator(self.paths) if headers is None else headers
        )

    def mint(self, key: SigningKey | None = None, **claims: Any) -> str:
        """An access token built by hand and signed with ``key`` (the gateway's own by
        default): it never went through the token endpoint."""
        gateway_key = read_private_key(self.paths.gateway_key)
        now = int(time.time())
        issuer = self.stack.gateway.issuer
        payload = {
            "iss": issuer,
            "sub": self.agent_id,
            "aud": issuer,
            "client_id": self.agent_id,
            "role": ROLE,
            "scope": "model:claude-haiku-4-5 model:claude-sonnet-4-6 tool:kb.search",
            "iat": now,
            "exp": now + TTL,
            "jti": b64u(hashlib.sha256(repr((now, time.perf_counter_ns())).encode()).digest()),
            **claims,
        }
        header = {"alg": "EdDSA", "typ": "at+jwt", "kid": gateway_key.public.kid}
        return compact(header, payload, key or gateway_key)


@pytest.fixture
def direct(gateway_stack: Stack) -> Iterator[Direct]:
    enroll_agent(gateway_stack.paths, OTHER, ROLE)
    with gateway_stack.gw_client() as client:
        yield Direct(stack=gateway_stack, client=client)


@dataclass
class Ran:
    code: int
    out: str
    err: str


def cli(paths: Paths, capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """``agentzt --config ... --home ... ARGS`` through the real entry point (its error
    handling and exit codes included), in this process: fast, with its own ledger
    connection, as a separate CLI process would have."""
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
    return Ran(code, out, err)


def cli_process(paths: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    """The same, as a separate process writing the ledger while the gateway runs."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "agentzt"),
            *("--config", str(paths.config_dir), "--home", str(paths.home)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- 1. through the proxy --------------------------------------------------------------


def test_proxy_runs_task_calls_on_a_task_token_and_others_on_the_session_token(
    stack: Stack,
) -> None:
    with stack.proxy_client() as proxy:
        plain = proxy.get("/v1/models")
        assert plain.status_code == 200, plain.text
        tasked = proxy.get("/v1/models", headers={TASK_HEADER: "T-1"})
        assert tasked.status_code == 200, tasked.text
        again = proxy.get("/v1/models", headers={TASK_HEADER: "T-1"})
        assert again.status_code == 200, again.text

    rows = ledger_rows(stack.paths, agent_id=AGENT)
    by_task = {r.task_id: r for r in rows}
    assert sorted(by_task, key=str) == sorted([None, "T-1"], key=str)
    assert len(rows) == 2, "the proxy should reuse its task token"
    # The proxy always sends a proof, so its tokens are DPoP-bound.
    assert {r.binding for r in rows} == {"dpop"}

    # Each call ran on the token for its task: the gateway recorded which token it saw.
    plain_event, tasked_event, again_event = (
        event_of(stack.paths, r) for r in (plain, tasked, again)
    )
    assert plain_event["meta"]["jti"] == by_task[None].jti
    assert "task" not in plain_event["meta"]
    assert tasked_event["meta"]["jti"] == again_event["meta"]["jti"] == by_task["T-1"].jti
    assert tasked_event["meta"]["task"] == "T-1"
    # And the task token says so in its own claims: the issuance event names the task.
    (issued,) = [
        e
        for e in events(stack.paths, agent_id=AGENT)
        if e["action"] == "token.issue" and e["meta"]["jti"] == by_task["T-1"].jti
    ]
    assert issued["meta"]["task"] == "T-1"


def test_proxy_two_tasks_get_two_tokens_and_ending_one_revokes_only_it(stack: Stack) -> None:
    with stack.proxy_client() as proxy:
        for task in ("alpha", "beta", "alpha", "beta"):
            response = proxy.get("/v1/models", headers={TASK_HEADER: task})
            assert response.status_code == 200, response.text
        assert proxy.get("/v1/models").status_code == 200

        alpha = ledger_rows(stack.paths, task_id="alpha")
        beta = ledger_rows(stack.paths, task_id="beta")
        assert len(alpha) == len(beta) == 1
        assert alpha[0].jti != beta[0].jti

        ended = proxy.post("/v1/tasks/alpha/end")
        assert ended.status_code == 200, ended.text
        assert ended.json() == {"task_id": "alpha", "ended": True, "revoked": 1}

        now = time.time()
        assert [r.state(now) for r in ledger_rows(stack.paths, task_id="alpha")] == ["revoked"]
        assert [r.state(now) for r in ledger_rows(stack.paths, task_id="beta")] == ["live"]

        refused = proxy.get("/v1/models", headers={TASK_HEADER: "alpha"})
        assert assert_error(refused, 401, "authentication_error") == ENDED_MESSAGE
        # No token was issued for the ended task.
        assert len(ledger_rows(stack.paths, task_id="alpha")) == 1

        # The other task and calls without a task are untouched.
        assert proxy.get("/v1/models", headers={TASK_HEADER: "beta"}).status_code == 200
        assert proxy.get("/v1/models").status_code == 200
        # A new task id works.
        assert proxy.get("/v1/models", headers={TASK_HEADER: "alpha-2"}).status_code == 200

    (end_event,) = [e for e in events(stack.paths) if e["action"] == "task.end"]
    assert (end_event["decision"], end_event["resource"], end_event["status"]) == (
        "allow",
        "task:alpha",
        200,
    )
    assert end_event["meta"]["revoked"] == 1


MALFORMED_TASK_HEADERS = [[(TASK_HEADER, value)] for value in [*BAD_TASK_IDS, ""]] + [
    [(TASK_HEADER, "one"), (TASK_HEADER, "two")],
    [(TASK_HEADER, "one"), (TASK_HEADER, "one")],
]


def test_proxy_refuses_a_malformed_task_header_before_the_gateway(stack: Stack) -> None:
    message = {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with stack.proxy_client() as proxy:
        assert proxy.get("/v1/models").status_code == 200
        audit_before = stack.paths.audit_log.read_bytes()
        rows_before = ledger_rows(stack.paths)

        for headers in MALFORMED_TASK_HEADERS:
            response = proxy.get("/v1/models", headers=headers)
            assert response.status_code == 400, (headers, response.text)
            assert_error(response, 400, "invalid_request_error")
            posted = proxy.post("/v1/messages", json=message, headers=headers)
            assert posted.status_code == 400, (headers, posted.text)
            assert_error(posted, 400, "invalid_request_error")

        assert stack.paths.audit_log.read_bytes() == audit_before
        assert ledger_rows(stack.paths) == rows_before
        # The proxy itself still works, for tasks too.
        assert proxy.get("/v1/models", headers={TASK_HEADER: "fine"}).status_code == 200


# --- 2. task binding, directly at the gateway ------------------------------------------


def test_task_token_serves_only_calls_naming_its_task(direct: Direct) -> None:
    token = direct.issue(task="T-7")
    assert claims_of(token)["task"] == "T-7"
    assert direct.models(token, task="T-7").status_code == 200

    message = assert_error(direct.models(token), 401, "authentication_error")
    assert message.startswith("task mismatch")
    message = assert_error(direct.models(token, task="T-8"), 401, "authentication_error")
    assert message.startswith("task mismatch")

    session = direct.issue()
    assert "task" not in claims_of(session)
    assert direct.models(session).status_code == 200
    message = assert_error(direct.models(session, task="T-7"), 401, "authentication_error")
    assert message.startswith("task mismatch")

    denied = [e for e in events(direct.paths) if e["action"] == "model.list"]
    assert [(e["decision"], e["status"]) for e in denied] == [
        ("allow", 200),
        ("deny", 401),
        ("deny", 401),
        ("allow", 200),
        ("deny", 401),
    ]


@pytest.mark.parametrize("values", [["T-7", "T-7"], ["T-7", "T-8"]], ids=["same", "different"])
def test_two_task_headers_are_a_bad_request(direct: Direct, values: list[str]) -> None:
    token = direct.issue(task="T-7")
    headers = [("authorization", f"Bearer {token}")] + [(TASK_HEADER, v) for v in values]
    response = direct.client.get("/v1/models", headers=headers)
    assert_error(response, 400, "invalid_request_error")


def test_bad_task_id_in_the_token_request_is_refused(direct: Direct) -> None:
    for task in BAD_TASK_IDS:
        response = direct.request_token(task=task)
        assert response.status_code == 400, (task, response.text)
        body = response.json()
        assert body["error"] == "invalid_request", task
        assert "access_token" not in body
        assert event_of(direct.paths, response)["action"] == "token.reject"
    assert not direct.paths.token_ledger.exists() or ledger_rows(direct.paths) == []
    # A good one is issued (and recorded), so the refusals above are about the value.
    token = direct.issue(task="a" * 128)
    assert [r.task_id for r in ledger_rows(direct.paths)] == ["a" * 128]
    assert direct.models(token, "a" * 128).status_code == 200


def test_ended_task_gets_no_new_token_for_that_agent_only(direct: Direct) -> None:
    task_token = direct.issue(task="job-1")
    session = direct.issue()
    ended = direct.end("job-1", session)
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"task_id": "job-1", "ended": True, "revoked": 1}
    assert direct.models(task_token, task="job-1").status_code == 401
    rows_before = ledger_rows(direct.paths)

    refused = direct.request_token(task="job-1")
    assert refused.status_code == 400, refused.text
    assert refused.json() == {"error": "invalid_request", "error_description": ENDED_MESSAGE}
    assert event_of(direct.paths, refused)["action"] == "token.reject"
    assert ledger_rows(direct.paths) == rows_before

    # Ending is per agent: another agent's task of the same name goes on, and this agent
    # can start a new task and still use its session token.
    other = direct.as_agent(OTHER)
    other_token = other.issue(task="job-1")
    assert other.models(other_token, task="job-1").status_code == 200
    assert direct.models(direct.issue(task="job-2"), task="job-2").status_code == 200
    assert direct.models(session).status_code == 200


def test_task_token_ends_only_its_own_task(direct: Direct) -> None:
    mine = direct.issue(task="own")
    theirs = direct.issue(task="other")

    # Named in the path, not in the header: the token's task must match the header first.
    forbidden = direct.end("other", mine, header="own")
    assert_error(forbidden, 403, "permission_error")
    event = event_of(direct.paths, forbidden)
    assert (event["action"], event["decision"], event["resource"]) == (
        "task.end",
        "deny",
        "task:other",
    )
    assert direct.models(theirs, task="other").status_code == 200
    assert direct.models(mine, task="own").status_code == 200
    direct.issue(task="other")  # not ended

    # A task token presented without its task header is refused before anything else.
    assert_error(direct.end("own", mine), 401, "authentication_error")

    ended = direct.end("own", mine, header="own")
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"task_id": "own", "ended": True, "revoked": 1}
    assert direct.models(mine, task="own").status_code == 401
    assert direct.request_token(task="own").status_code == 400
    assert direct.models(theirs, task="other").status_code == 200


def test_ending_a_task_needs_a_valid_token(direct: Direct) -> None:
    response = direct.client.post("/v1/tasks/job-9/end")
    assert_error(response, 401, "authentication_error")
    garbage = direct.end("job-9", "not.a.token")
    assert_error(garbage, 401, "authentication_error")
    # Nothing was ended.
    token = direct.issue(task="job-9")
    assert direct.models(token, task="job-9").status_code == 200


# --- 3. the ledger matches what was issued ---------------------------------------------


def test_every_issued_token_has_exactly_one_row_and_refusals_none(direct: Direct) -> None:
    issued = [
        direct.issue(),
        direct.issue(),
        direct.issue(scope="model:claude-haiku-4-5"),
        direct.issue(task="ledger-task"),
        direct.as_agent(OTHER).issue(task="ledger-task"),
    ]
    refusals = [
        direct.request_token(scope="tool:email.send"),
        direct.request_token(task="bad task"),
        direct.post_form(
            "/v1/token",
            {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": "not-a-jwt",
            },
        ),
    ]
    session = issued[0]
    assert direct.end("ledger-task", session).status_code == 200
    refusals.append(direct.request_token(task="ledger-task"))
    assert all(r.status_code in (400, 401) for r in refusals), [r.text for r in refusals]

    rows = ledger_rows(direct.paths)
    audit = events(direct.paths)
    issue_jtis = [e["meta"]["jti"] for e in audit if e["action"] == "token.issue"]
    assert all(e["decision"] == "allow" for e in audit if e["action"] == "token.issue")
    assert len([e for e in audit if e["action"] == "token.reject"]) == len(refusals)
    assert sorted(r.jti for r in rows) == sorted(issue_jtis)
    assert sorted(issue_jtis) == sorted(claims_of(t)["jti"] for t in issued)
    assert len(set(issue_jtis)) == len(issue_jtis) == 5

    by_jti = {r.jti: r for r in rows}
    for token in issued:
        claims = claims_of(token)
        row = by_jti[claims["jti"]]
        assert row.agent_id == claims["sub"]
        assert row.role == claims["role"] == ROLE
        assert row.task_id == claims.get("task")
        assert row.scope == claims["scope"]
        assert row.binding == "bearer"
        assert (row.issued_at, row.expires_at) == (claims["iat"], claims["exp"])
        assert row.expires_at - row.issued_at == TTL
    assert by_jti[claims_of(issued[2])["jti"]].scope == "model:claude-haiku-4-5"


# --- 4. revocation takes effect on the very next call -----------------------------------

REVOKERS = ["operator-endpoint", "own-assertion", "cli-jti", "cli-agent", "cli-task"]


@pytest.mark.parametrize("how", REVOKERS)
def test_revocation_refuses_the_next_call_at_once(direct: Direct, how: str) -> None:
    task = "rev-task" if how == "cli-task" else None
    token = direct.issue(task=task)
    jti = claims_of(token)["jti"]
    for _ in range(2):  # the verified claims are now cached
        assert direct.models(token, task).status_code == 200
    gateway = direct.stack.gateway

    if how == "operator-endpoint":
        response = direct.revoke(token, operator(direct.paths))
        assert response.status_code == 200, response.text
    elif how == "own-assertion":
        response = direct.revoke_as_agent(token)
        assert response.status_code == 200, response.text
    else:
        args = {
            "cli-jti": ["--jti", jti],
            "cli-agent": ["--agent", AGENT],
            "cli-task": ["--task", "rev-task"],
        }[how]
        result = cli_process(direct.paths, "revoke", *args, "--reason", "incident 42")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("revoked 1 live token"), result.stdout

    refused = direct.models(token, task)
    assert_error(refused, 401, "authentication_error")
    event = event_of(direct.paths, refused)
    assert (event["decision"], event["meta"]["jti"]) == ("deny", jti)
    assert event["reason"].startswith("token revoked")
    row = row_of(direct.paths, jti)
    assert row.state(time.time()) == "revoked"
    if how.startswith("cli"):
        assert row.revoked_reason == "incident 42"
        assert "incident 42" in event["reason"]

    # Same gateway, still serving: a new token works (for a new task, if the old ended).
    assert direct.stack.gateway is gateway
    fresh_task = "rev-task-2" if task else None
    assert direct.models(direct.issue(task=fresh_task), fresh_task).status_code == 200
    if how == "cli-task":
        assert direct.request_token(task="rev-task").status_code == 400


def test_cli_revoke_by_agent_leaves_other_agents_alone(
    direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = [direct.issue(), direct.issue(task="a")]
    other = direct.as_agent(OTHER)
    theirs = other.issue()
    result = cli(direct.paths, capsys, "revoke", "--agent", AGENT)
    assert result.code == 0, result.err
    assert result.out.strip() == "revoked 2 live tokens"
    assert direct.models(mine[0]).status_code == 401
    assert direct.models(mine[1], "a").status_code == 401
    assert other.models(theirs).status_code == 200
    # Revoking tokens ends no task and does not lock the agent out.
    assert direct.models(direct.issue(task="a"), "a").status_code == 200
    again = cli(direct.paths, capsys, "revoke", "--jti", claims_of(mine[0])["jti"])
    assert (again.code, again.out.strip()) == (0, "revoked 0 live tokens")


def test_cli_revoke_task_ends_it_for_every_agent_or_for_one(
    direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    other = direct.as_agent(OTHER)
    shared = [direct.issue(task="shared"), other.issue(task="shared")]
    result = cli(direct.paths, capsys, "revoke", "--task", "shared")
    assert result.code == 0, result.err
    assert result.out.strip() == "revoked 2 live tokens; task shared ended"
    assert direct.models(shared[0], "shared").status_code == 401
    assert other.models(shared[1], "shared").status_code == 401
    assert direct.request_token(task="shared").json()["error_description"] == ENDED_MESSAGE
    assert other.request_token(task="shared").json()["error_description"] == ENDED_MESSAGE

    mine, theirs = direct.issue(task="solo"), other.issue(task="solo")
    result = cli(direct.paths, capsys, "revoke", "--agent", AGENT, "--task", "solo")
    assert result.code == 0, result.err
    assert result.out.strip() == f"revoked 1 live token; task solo ended for {AGENT}"
    assert direct.models(mine, "solo").status_code == 401
    assert direct.request_token(task="solo").status_code == 400
    assert other.models(theirs, "solo").status_code == 200
    assert other.models(other.issue(task="solo"), "solo").status_code == 200


# --- 5. the ledger is the list of what is live -----------------------------------------


@pytest.mark.parametrize("task", [None, "minted"], ids=["session", "task"])
def test_token_signed_by_the_gateway_key_but_never_recorded_is_refused(
    direct: Direct, task: str | None
) -> None:
    extra: dict[str, Any] = {"task": task} if task else {}
    token = direct.mint(**extra)
    refused = direct.models(token, task)
    assert_error(refused, 401, "authentication_error")
    assert event_of(direct.paths, refused)["reason"] == "token is not in the issuance ledger"
    assert direct.introspect(token).json() == {"active": False}

    in_ledger(direct.stack.gateway, token)
    assert direct.models(token, task).status_code == 200
    assert direct.introspect(token).json()["active"] is True


# --- 6. /v1/revoke and /v1/introspect ---------------------------------------------------


def test_metadata_lists_the_revocation_and_introspection_endpoints(direct: Direct) -> None:
    meta = direct.client.get("/.well-known/oauth-authorization-server").json()
    issuer = direct.stack.gateway.issuer
    assert meta["revocation_endpoint"] == f"{issuer}/v1/revoke"
    assert meta["introspection_endpoint"] == f"{issuer}/v1/introspect"


def _revoke_unauthenticated(d: Direct, token: str) -> httpx.Response:
    return d.revoke(token)


def _revoke_wrong_operator(d: Direct, token: str) -> httpx.Response:
    return d.revoke(token, {"authorization": f"Bearer {operator_secret(d.paths)}x"})


def _revoke_basic_scheme(d: Direct, token: str) -> httpx.Response:
    return d.revoke(token, {"authorization": f"Basic {operator_secret(d.paths)}"})


def _revoke_with_access_token(d: Direct, token: str) -> httpx.Response:
    return d.revoke(token, bearer(token))


def _revoke_with_bad_assertion(d: Direct, token: str) -> httpx.Response:
    fields = {"token": token, "client_assertion_type": ASSERTION_TYPE, "client_assertion": "x.y.z"}
    return d.post_form("/v1/revoke", fields)


def _revoke_with_replayed_assertion(d: Direct, token: str) -> httpx.Response:
    assertion = d.assertion()
    fields = {"token": "garbage", "client_assertion_type": ASSERTION_TYPE}
    first = d.post_form("/v1/revoke", {**fields, "client_assertion": assertion})
    assert first.status_code == 200, first.text
    return d.post_form("/v1/revoke", {**fields, "token": token, "client_assertion": assertion})


REVOKE_WITHOUT_CREDENTIALS = {
    "no-auth": _revoke_unauthenticated,
    "wrong-operator-secret": _revoke_wrong_operator,
    "basic-scheme": _revoke_basic_scheme,
    "access-token-as-operator": _revoke_with_access_token,
    "bad-assertion": _revoke_with_bad_assertion,
    "replayed-assertion": _revoke_with_replayed_assertion,
}


def test_revoke_without_valid_credentials_is_401_and_revokes_nothing(direct: Direct) -> None:
    token = direct.issue()
    for name, attempt in REVOKE_WITHOUT_CREDENTIALS.items():
        response = attempt(direct, token)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_client", name
        assert response.headers["cache-control"] == "no-store"
        assert direct.models(token).status_code == 200, name
    assert row_of(direct.paths, claims_of(token)["jti"]).revoked_at is None
    # The control: with the operator credential the same request revokes it.
    assert direct.revoke(token, operator(direct.paths)).status_code == 200
    assert direct.models(token).status_code == 401


def test_agent_cannot_revoke_another_agents_token(direct: Direct) -> None:
    theirs = direct.as_agent(OTHER).issue()
    response = direct.revoke_as_agent(theirs)
    assert response.status_code in (400, 403), response.text
    body = response.json()
    # RFC 7009 2.2.1: an RFC 6749 5.2 client error, not server_error.
    assert body["error"] in OAUTH_ERRORS
    assert body["error_description"] == "a client may revoke only its own tokens"
    event = event_of(direct.paths, response)
    assert (event["action"], event["decision"], event["agent_id"]) == (
        "token.revoke",
        "deny",
        AGENT,
    )
    assert direct.as_agent(OTHER).models(theirs).status_code == 200
    assert row_of(direct.paths, claims_of(theirs)["jti"]).revoked_at is None


def test_operator_revokes_any_agents_token(direct: Direct) -> None:
    other = direct.as_agent(OTHER)
    theirs = other.issue()
    response = direct.revoke(theirs, operator(direct.paths))
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    assert other.models(theirs).status_code == 401
    assert row_of(direct.paths, claims_of(theirs)["jti"]).revoked_reason == (
        "revoked by the operator"
    )
    event = event_of(direct.paths, response)
    assert event["meta"]["by"] == "operator"
    assert event["resource"] == f"token:{claims_of(theirs)['jti']}"


@pytest.mark.parametrize("who", ["operator", "agent"])
def test_revoking_what_is_not_a_live_token_is_200(direct: Direct, who: str) -> None:
    """RFC 7009 section 2.2: invalid, unknown, expired or already revoked tokens."""
    revoked = direct.issue()
    assert direct.revoke(revoked, operator(direct.paths)).status_code == 200
    now = int(time.time())
    candidates = {
        "garbage": "garbage",
        "three-dots": "a.b.c",
        "stranger-signed": direct.mint(key=SigningKey.generate()),
        "unrecorded": direct.mint(),
        "expired": in_ledger(direct.stack.gateway, direct.mint(iat=now - 400, exp=now - 100)),
        "already-revoked": revoked,
    }
    rows_before = ledger_rows(direct.paths)
    for name, token in candidates.items():
        if who == "operator":
            response = direct.revoke(token, operator(direct.paths))
        else:
            response = direct.revoke_as_agent(token)
        assert response.status_code == 200, (name, response.text)
    assert ledger_rows(direct.paths) == rows_before
    # Still one working token, so a blanket refusal would show.
    live = direct.issue()
    assert direct.revoke(live, operator(direct.paths)).status_code == 200
    assert direct.models(live).status_code == 401


def test_revoke_without_a_token_parameter_is_invalid_request(direct: Direct) -> None:
    response = direct.post_form("/v1/revoke", {}, operator(direct.paths))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    json_body = direct.client.post(
        "/v1/revoke", json={"token": "x"}, headers=operator(direct.paths)
    )
    assert json_body.status_code == 400
    assert json_body.json()["error"] == "invalid_request"


def test_introspect_needs_the_operator_credential(direct: Direct) -> None:
    token = direct.issue()
    refused = {
        "no-auth": {},
        "wrong-secret": {"authorization": f"Bearer {operator_secret(direct.paths)}x"},
        "basic": {"authorization": f"Basic {operator_secret(direct.paths)}"},
        "access-token": bearer(token),
    }
    for name, headers in refused.items():
        response = direct.introspect(token, headers)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_client", name
        assert "active" not in response.json()
    # Nor does an agent's assertion stand in for the operator.
    with_assertion = direct.post_form(
        "/v1/introspect",
        {
            "token": token,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": direct.assertion(),
        },
    )
    assert with_assertion.status_code == 401
    assert direct.introspect(token).json()["active"] is True


def test_introspect_live_task_and_revoked_tokens(direct: Direct) -> None:
    token = direct.issue()
    claims = claims_of(token)
    response = direct.introspect(token)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    issuer = direct.stack.gateway.issuer
    assert response.json() == {
        "active": True,
        "iss": issuer,
        "aud": issuer,
        "sub": AGENT,
        "client_id": AGENT,
        "role": ROLE,
        "scope": " ".join(sorted(claims["scope"].split())),
        "iat": claims["iat"],
        "exp": claims["exp"],
        "jti": claims["jti"],
        "token_type": "Bearer",
    }

    task_token = direct.issue(task="inspect-me")
    answer = direct.introspect(task_token).json()
    assert answer["active"] is True
    assert answer["task_id"] == "inspect-me"
    assert answer["jti"] == claims_of(task_token)["jti"]
    assert "cnf" not in answer

    assert direct.revoke(token, operator(direct.paths)).status_code == 200
    assert direct.introspect(token).json() == {"active": False}
    assert direct.end("inspect-me", direct.issue()).status_code == 200
    assert direct.introspect(task_token).json() == {"active": False}


def test_introspect_garbage_forged_and_expired_tokens_are_inactive(direct: Direct) -> None:
    now = int(time.time())
    stranger = SigningKey.generate()
    forged = direct.mint(key=stranger)
    in_ledger(direct.stack.gateway, forged)  # even with a ledger row
    inactive = {
        "garbage": "garbage",
        "three-dots": "a.b.c",
        "empty-ish": ".",
        "forged": forged,
        "expired": in_ledger(direct.stack.gateway, direct.mint(iat=now - 400, exp=now - 100)),
        "wrong-issuer": in_ledger(direct.stack.gateway, direct.mint(iss="https://evil.example")),
    }
    for name, token in inactive.items():
        response = direct.introspect(token)
        assert response.status_code == 200, (name, response.text)
        assert response.json() == {"active": False}, name
    # The same construction, recorded and current, is active: the checks above can fail.
    good = in_ledger(direct.stack.gateway, direct.mint())
    assert direct.introspect(good).json()["active"] is True


@pytest.fixture
def clocked(paths: Paths) -> Iterator[tuple[Direct, Clock]]:
    """A gateway whose clock the test moves, so its tokens expire without sleeping."""
    enroll_agent(paths, AGENT, ROLE)
    clock = Clock(time.time())
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock), clock=clock)
    server = BackgroundServer(create_app(gateway), sock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield Direct(Stack(paths=paths, gateway=gateway, gateway_url=server.url), client), clock
    finally:
        server.stop()


def test_expired_token_introspects_inactive_and_revokes_as_a_no_op(
    clocked: tuple[Direct, Clock],
) -> None:
    direct, clock = clocked
    token = direct.issue()
    assert direct.introspect(token).json()["active"] is True
    assert direct.models(token).status_code == 200

    clock.now += TTL + 60
    assert direct.introspect(token).json() == {"active": False}
    assert_error(direct.models(token), 401, "authentication_error")
    assert direct.revoke(token, operator(direct.paths)).status_code == 200
    row = row_of(direct.paths, claims_of(token)["jti"])
    assert row.revoked_at is None
    assert row.state(clock.now) == "expired"


# --- 7. agentzt tokens / agentzt revoke --------------------------------------------------


def test_cli_tokens_lists_and_filters_the_ledger(
    direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    other = direct.as_agent(OTHER)
    session = direct.issue()
    revoked = direct.issue()
    mine_task = direct.issue(task="cli-task")
    theirs_task = other.issue(task="cli-task")
    assert direct.revoke(revoked, operator(direct.paths)).status_code == 200
    tokens = {
        "session": session,
        "revoked": revoked,
        "mine_task": mine_task,
        "theirs_task": theirs_task,
    }
    jti = {name: claims_of(token)["jti"] for name, token in tokens.items()}

    listed = cli(direct.paths, capsys, "tokens", "--json")
    assert listed.code == 0, listed.err
    rows = json_lines(listed.out)
    assert all(set(r) == ROW_KEYS for r in rows)
    # Oldest first, in the order they were issued.
    assert [r["jti"] for r in rows] == list(jti.values())
    by_jti = {r["jti"]: r for r in rows}
    assert by_jti[jti["revoked"]]["state"] == "revoked"
    assert by_jti[jti["revoked"]]["revoked_reason"] == "revoked by the operator"
    assert isinstance(by_jti[jti["revoked"]]["revoked_at"], float)
    assert by_jti[jti["session"]]["state"] == "live"
    assert by_jti[jti["session"]]["revoked_at"] is None
    assert by_jti[jti["session"]]["task_id"] is None
    assert by_jti[jti["mine_task"]]["task_id"] == "cli-task"
    assert by_jti[jti["theirs_task"]]["agent_id"] == OTHER
    assert {r["binding"] for r in rows} == {"bearer"}
    assert {r["role"] for r in rows} == {ROLE}
    assert all(r["expires_at"] - r["issued_at"] == TTL for r in rows)

    def jtis(*args: str) -> set[str]:
        result = cli(direct.paths, capsys, "tokens", "--json", *args)
        assert result.code == 0, result.err
        return {r["jti"] for r in json_lines(result.out)}

    assert jtis("--agent", OTHER) == {jti["theirs_task"]}
    assert jtis("--agent", AGENT) == {jti["session"], jti["revoked"], jti["mine_task"]}
    assert jtis("--task", "cli-task") == {jti["mine_task"], jti["theirs_task"]}
    assert jtis("--task", "cli-task", "--agent", AGENT) == {jti["mine_task"]}
    assert jtis("--live") == set(jti.values()) - {jti["revoked"]}
    assert jtis("--task", "nope") == set()
    assert len(jtis("--limit", "2")) == 2

    table = cli(direct.paths, capsys, "tokens")
    assert table.code == 0, table.err
    assert "Issued tokens" in table.out
    assert "revoked" in table.out and "cli-task" in table.out


CLI_USAGE_ERRORS = [
    ["tokens", "--task", "bad task"],
    ["tokens", "--task", "-x"],
    ["tokens", "--agent", "Not An Agent"],
    ["tokens", "--limit", "0"],
    ["revoke"],
    ["revoke", "--reason", "why"],
    ["revoke", "--jti", "bad jti!"],
    ["revoke", "--task", "bad/task"],
    ["revoke", "--agent", "UPPER CASE"],
    ["revoke", "--agent", AGENT, "--reason", "   "],
    ["revoke", "--agent", AGENT, "--reason", "x" * 201],
]


def test_cli_usage_errors_exit_2(direct: Direct, capsys: pytest.CaptureFixture[str]) -> None:
    token = direct.issue()
    for args in CLI_USAGE_ERRORS:
        result = cli(direct.paths, capsys, *args)
        assert result.code == 2, (args, result.out, result.err)
        assert "Traceback" not in result.err, args
        assert result.out == "", args
    # Nothing was revoked: the same command with good arguments does revoke.
    assert direct.models(token).status_code == 200
    result = cli(direct.paths, capsys, "revoke", "--agent", AGENT, "--reason", "why")
    assert (result.code, result.out.strip()) == (0, "revoked 1 live token")
    assert direct.models(token).status_code == 401


def test_cli_without_a_ledger(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    listed = cli(paths, capsys, "tokens", "--json")
    assert listed.code == 0
    assert listed.out == ""
    assert "no tokens issued yet" in listed.err
    table = cli(paths, capsys, "tokens")
    assert (table.code, table.out) == (0, "")

    revoked = cli(paths, capsys, "revoke", "--agent", AGENT)
    assert revoked.code == 1, revoked
    assert revoked.err.startswith("agentzt: error: ")
    assert "no token ledger" in revoked.err
    assert not paths.token_ledger.exists()


def test_cli_revoke_from_a_separate_process_while_the_gateway_runs(direct: Direct) -> None:
    """The real entry point in its own process: it reads the ledger the running gateway
    writes, and its usage errors exit 2 without touching it."""
    token = direct.issue(task="proc")
    listed = cli_process(direct.paths, "tokens", "--task", "proc", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json_lines(listed.stdout)
    assert (row["jti"], row["state"]) == (claims_of(token)["jti"], "live")
    usage = cli_process(direct.paths, "revoke")
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    assert direct.models(token, "proc").status_code == 200
