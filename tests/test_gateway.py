"""The gateway and the client proxy over real loopback sockets: every control, allowed and
denied, the rate limit, request ids, the audit trail, and what the proxy forwards."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anthropic
import httpx
import pytest
from conftest import REPO, TEST_ROLES, Stack, allow_bearer, enroll_agent
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import agentzt.gateway.ratelimit as ratelimit_module
from agentzt.audit import read_events, verify_chain
from agentzt.config import Paths
from agentzt.errors import RateLimitedError
from agentzt.gateway import Gateway, create_app
from agentzt.gateway.ratelimit import SlidingWindowLimiter
from agentzt.identity import CLIENT_ASSERTION_TYPE, SigningKey, make_assertion, read_private_key
from agentzt.proxy import create_proxy_app
from agentzt.server import BackgroundServer, bind, running, url_of

RID = "x-agentzt-request-id"
WELL_FORMED_RID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DEMO_MODELS = ["claude-sonnet-4-6", "claude-haiku-4-5"]
DEMO_TOOLS = ["kb.search", "db.query", "web.fetch"]
DEMO_MAX_OUTPUT = 1024


def message_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Summarise the VPN policy in one line."}],
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def assert_error(resp: httpx.Response, status: int, error_type: str) -> dict[str, Any]:
    """``resp`` is the Anthropic error envelope with this status and type."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert WELL_FORMED_RID.match(resp.headers[RID])
    assert body["request_id"] == resp.headers[RID]
    return body


def gateway_token(gateway_url: str, agent_id: str, key: SigningKey) -> str:
    """An access token obtained the way the proxy does: RFC 8414 discovery, RFC 7523."""
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        meta = client.get("/.well-known/oauth-authorization-server").json()
        resp = client.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": make_assertion(
                    key, agent_id, audience=meta["token_endpoint"], now=time.time()
                ),
            },
        )
    assert resp.status_code == 200, resp.text
    token = resp.json()["access_token"]
    assert isinstance(token, str)
    return token


def agent1_token(stack: Stack) -> str:
    key = read_private_key(stack.paths.identity_key("agent-1"))
    return gateway_token(stack.gateway_url, "agent-1", key)


def audit_line_count(stack: Stack) -> int:
    return len(stack.paths.audit_log.read_bytes().splitlines())


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One gateway and proxy for agent-1 (demo-agent) shared by the checks that change no
    state, so each case costs one request rather than two server start-ups. The policy is
    the shipped one with demo-agent's rate limit raised, so this module's calls never trip
    it; the rate limit has its own tests on a fresh stack.
    """
    root = tmp_path_factory.mktemp("shared")
    config = root / "config"
    config.mkdir()
    (config / "gateway.toml").write_text(
        allow_bearer((REPO / "config" / "gateway.toml").read_text())
    )
    policy = (REPO / "config" / "policy.toml").read_text() + TEST_ROLES
    raised = policy.replace("requests_per_minute = 120", "requests_per_minute = 100000")
    assert raised != policy
    (config / "policy.toml").write_text(raised)
    paths = Paths(config_dir=config, home=root / "home")
    key = enroll_agent(paths, "agent-1", "demo-agent")
    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    proxy = create_proxy_app(agent_id="agent-1", key=key, gateway_url=url_of(gateway_sock))
    with (
        running(create_app(gateway), gateway_sock) as gw,
        running(proxy, bind("127.0.0.1", 0)) as px,
    ):
        yield Stack(paths=paths, gateway=gateway, gateway_url=gw.url, proxy_url=px.url)


# --- each control, allowed and denied, through the real proxy ---------------------------


def test_model_in_role_returns_anthropic_message(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.post(
            "/v1/messages", json=message_body(), headers={"anthropic-version": "2023-06-01"}
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-sonnet-4-6"
    assert body["id"].startswith("msg_")
    assert body["content"][0]["type"] == "text"
    assert body["content"][0]["text"]
    assert body["stop_reason"] in ("end_turn", "max_tokens")
    assert isinstance(body["usage"]["input_tokens"], int)
    assert 1 <= body["usage"]["output_tokens"] <= 64
    assert WELL_FORMED_RID.match(resp.headers[RID])


def test_model_outside_role_is_denied(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.post("/v1/messages", json=message_body(model="claude-opus-4-8"))
    body = assert_error(resp, 403, "permission_error")
    assert "content" not in body


TOOL_CASES = [
    ("kb.search", {"arguments": {"query": "vpn policy"}}, 200, None),
    ("db.query", {"arguments": {"sql": "SELECT id, name FROM employees"}}, 200, None),
    (
        "email.send",
        {"arguments": {"to": "cfo@example.com", "subject": "Q3", "body": "Numbers attached."}},
        403,
        "permission_error",
    ),
    ("db.query", {"arguments": {"sql": "DELETE FROM employees"}}, 400, "invalid_request_error"),
    ("no.such-tool", {"arguments": {}}, 404, "not_found_error"),
    (
        "kb.search",
        {"arguments": {"query": "vpn"}, "extra": True},
        400,
        "invalid_request_error",
    ),
    ("kb.search", {"arguments": {"query": 42}}, 400, "invalid_request_error"),
    ("kb.search", {"arguments": {}}, 400, "invalid_request_error"),
    ("kb.search", {"arguments": {"query": "vpn", "top_k": 999}}, 400, "invalid_request_error"),
    ("kb.search", {"arguments": {"query": "vpn", "x": 1}}, 400, "invalid_request_error"),
    ("kb.search", {"arguments": ["vpn"]}, 400, "invalid_request_error"),
]
TOOL_IDS = [
    "kb-search-in-role",
    "db-query-select",
    "email-send-not-in-standing-scope",
    "db-query-delete",
    "unknown-tool",
    "unknown-top-level-field",
    "argument-wrong-type",
    "argument-missing",
    "argument-out-of-range",
    "argument-not-in-schema",
    "arguments-not-an-object",
]


@pytest.mark.parametrize(("tool", "payload", "status", "error_type"), TOOL_CASES, ids=TOOL_IDS)
def test_tool_calls(
    shared: Stack, tool: str, payload: dict[str, Any], status: int, error_type: str | None
) -> None:
    with shared.proxy_client() as client:
        resp = client.post(f"/v1/tools/{tool}", json=payload)
    if error_type is None:
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["ok"] is True
        assert set(body) == {"ok", "output"}
    else:
        body = assert_error(resp, status, error_type)
        assert "output" not in body


def test_kb_search_output(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.post("/v1/tools/kb.search", json={"arguments": {"query": "vpn"}})
    assert resp.status_code == 200
    results = resp.json()["output"]["results"]
    assert results
    assert results[0]["id"] == "KB-001"


def test_db_query_select_returns_rows(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.post(
            "/v1/tools/db.query",
            json={"arguments": {"sql": "SELECT id, name FROM employees ORDER BY id LIMIT 3"}},
        )
    assert resp.status_code == 200, resp.text
    output = resp.json()["output"]
    assert output["columns"] == ["id", "name"]
    assert output["rows"] == [[1, "Ada Okafor"], [2, "Bram Visser"], [3, "Chen Wei"]]
    assert output["row_count"] == 3


def _deep(depth: int) -> bytes:
    return b'{"model":' + b"[" * depth + b"]" * depth + b"}"


BAD_BODIES = [
    b'{"model": "claude-sonnet-4-6", ',
    b'{"model":"claude-sonnet-4-6","max_tokens":NaN,"messages":[]}',
    b'{"model":"claude-sonnet-4-6","max_tokens":Infinity,"messages":[]}',
    b'{"model":"claude-\xff\xfe-4-6","max_tokens":16,"messages":[]}',
    _deep(100_000),
    _deep(1_500),
    b'[{"model":"claude-sonnet-4-6"}]',
    b"",
]
BAD_BODY_IDS = [
    "truncated-json",
    "nan",
    "infinity",
    "invalid-utf8",
    "nested-100k-deep",
    "nested-1500-deep-small-body",
    "top-level-array",
    "empty",
]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/tools/kb.search"], ids=["model", "tool"])
@pytest.mark.parametrize("raw", BAD_BODIES, ids=BAD_BODY_IDS)
def test_malformed_body_is_400(shared: Stack, path: str, raw: bytes) -> None:
    with shared.proxy_client() as client:
        resp = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400, "invalid_request_error")


@pytest.mark.parametrize("how", ["declared-content-length", "chunked-body"])
def test_body_over_gateway_limit_is_413(shared: Stack, how: str) -> None:
    token = agent1_token(shared)
    limit = shared.gateway.max_body_bytes
    if how == "declared-content-length":
        # Only the headers are sent: the gateway must refuse on the declared length alone.
        parts = urlsplit(shared.gateway_url)
        assert parts.hostname is not None
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.putrequest("POST", "/v1/messages")
            conn.putheader("authorization", f"Bearer {token}")
            conn.putheader("content-type", "application/json")
            conn.putheader("content-length", str(limit + 1))
            conn.endheaders()
            raw = conn.getresponse()
            status, payload, headers = raw.status, raw.read(), dict(raw.getheaders())
        finally:
            conn.close()
        resp = httpx.Response(status, content=payload, headers=headers)
    else:
        chunk = b" " * 65536

        def body() -> Iterator[bytes]:
            for _ in range(limit // len(chunk) + 2):
                yield chunk

        with shared.gw_client() as client:
            resp = client.post(
                "/v1/messages",
                content=body(),
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            )
    assert_error(resp, 413, "request_too_large")


MAX_TOKENS_CASES = [
    (DEMO_MAX_OUTPUT + 1, 400),
    (100_000, 400),
    (None, 400),
    (0, 400),
    (-5, 400),
    ("64", 400),
    (True, 400),
    (1.5, 400),
    (DEMO_MAX_OUTPUT, 200),
]
MAX_TOKENS_IDS = [
    "one-above-role-limit",
    "far-above-role-limit",
    "missing",
    "zero",
    "negative",
    "string",
    "bool",
    "float",
    "exactly-role-limit",
]


@pytest.mark.parametrize(("max_tokens", "status"), MAX_TOKENS_CASES, ids=MAX_TOKENS_IDS)
def test_max_tokens(shared: Stack, max_tokens: object, status: int) -> None:
    with shared.proxy_client() as client:
        resp = client.post("/v1/messages", json=message_body(max_tokens=max_tokens))
    if status == 200:
        assert resp.status_code == 200, resp.text
        assert resp.json()["type"] == "message"
    else:
        assert_error(resp, status, "invalid_request_error")


def test_count_tokens(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.post(
            "/v1/messages/count_tokens",
            json={
                "model": "claude-sonnet-4-6",
                "messages": [{"role": "user", "content": "x" * 40}],
            },
        )
        denied = client.post(
            "/v1/messages/count_tokens",
            json={"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"input_tokens"}
    assert isinstance(body["input_tokens"], int)
    assert body["input_tokens"] >= 1
    assert_error(denied, 403, "permission_error")


def test_models_lists_exactly_the_role_models(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.get("/v1/models")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert sorted(m["id"] for m in body["data"]) == sorted(DEMO_MODELS)
    assert all(m["type"] == "model" for m in body["data"])
    assert body["has_more"] is False


def test_tools_lists_exactly_the_role_tools_with_schemas(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.get("/v1/tools")
    assert resp.status_code == 200, resp.text
    tools = resp.json()["tools"]
    assert sorted(t["name"] for t in tools) == sorted(DEMO_TOOLS)
    for tool in tools:
        assert tool["description"]
        assert tool["input_schema"]["type"] == "object"
        Draft202012Validator.check_schema(tool["input_schema"])


def test_unknown_route_is_404_through_proxy_and_at_gateway(shared: Stack) -> None:
    token = agent1_token(shared)
    with shared.proxy_client() as proxy, shared.gw_client() as gw:
        via_proxy = proxy.get("/v1/no-such-route")
        authed = gw.get("/v1/no-such-route", headers={"authorization": f"Bearer {token}"})
        anonymous = gw.post("/admin/shutdown")
    assert_error(via_proxy, 404, "not_found_error")
    assert_error(authed, 404, "not_found_error")
    assert_error(anonymous, 404, "not_found_error")


WRONG_METHODS = [
    ("GET", "/v1/messages"),
    ("PUT", "/v1/messages"),
    ("DELETE", "/v1/messages/count_tokens"),
    ("POST", "/v1/models"),
    ("DELETE", "/v1/tools"),
    ("GET", "/v1/tools/kb.search"),
    ("PATCH", "/v1/tools/kb.search"),
    ("POST", "/healthz"),
    ("POST", "/.well-known/jwks.json"),
]


@pytest.mark.parametrize(
    ("method", "path"), WRONG_METHODS, ids=[f"{m}-{p}" for m, p in WRONG_METHODS]
)
def test_wrong_method_on_known_route_is_4xx_envelope(shared: Stack, method: str, path: str) -> None:
    token = agent1_token(shared)
    with shared.gw_client() as gw:
        resp = gw.request(method, path, headers={"authorization": f"Bearer {token}"})
    assert 400 <= resp.status_code < 500, resp.text
    assert_error(resp, resp.status_code, resp.json()["error"]["type"])


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_token_endpoint_is_4xx(shared: Stack, method: str) -> None:
    with shared.gw_client() as gw:
        resp = gw.request(method, "/v1/token")
    assert 400 <= resp.status_code < 500, resp.text
    assert isinstance(resp.json(), dict)


# --- rate limit ------------------------------------------------------------------------


@dataclass
class LimitedAgent:
    agent_id: str
    key: SigningKey
    proxy_url: str


@pytest.fixture
def limited(stack: Stack) -> Iterator[LimitedAgent]:
    """Agent lim-1 (role limited-agent, 3 requests a minute) behind its own proxy."""
    key = enroll_agent(stack.paths, "lim-1", "limited-agent")
    app = create_proxy_app(agent_id="lim-1", key=key, gateway_url=stack.gateway_url)
    with running(app, bind("127.0.0.1", 0)) as server:
        yield LimitedAgent("lim-1", key, server.url)


LIMITED_MESSAGE = message_body(model="claude-haiku-4-5", max_tokens=16)


def assert_retry_after(resp: httpx.Response) -> int:
    value = resp.headers["retry-after"]
    assert re.fullmatch(r"[0-9]+", value), value
    seconds = int(value)
    # A sliding-window counter can need up to two windows to free a slot (the full
    # current window becomes the weighted previous one), and says so honestly.
    assert 1 <= seconds <= 120
    return seconds


def test_fourth_call_in_a_minute_is_429(stack: Stack, limited: LimitedAgent) -> None:
    with httpx.Client(base_url=limited.proxy_url, timeout=10) as client:
        statuses = [client.post("/v1/messages", json=LIMITED_MESSAGE).status_code for _ in range(3)]
        fourth = client.post("/v1/messages", json=LIMITED_MESSAGE)
        tool = client.post("/v1/tools/kb.search", json={"arguments": {"query": "vpn"}})
    assert statuses == [200, 200, 200]
    assert_error(fourth, 429, "rate_limit_error")
    assert_retry_after(fourth)
    # The limit is per agent, across models and tools.
    assert_error(tool, 429, "rate_limit_error")
    # Another agent is not affected.
    with stack.proxy_client() as other:
        assert other.post("/v1/messages", json=message_body()).status_code == 200


def test_rate_limit_is_keyed_on_identity_not_headers(stack: Stack, limited: LimitedAgent) -> None:
    token = gateway_token(stack.gateway_url, limited.agent_id, limited.key)
    statuses = []
    with stack.gw_client() as gw:
        for i in range(6):
            resp = gw.post(
                "/v1/messages",
                json=LIMITED_MESSAGE,
                headers={
                    "authorization": f"Bearer {token}",
                    "x-agentzt-agent-id": f"someone-else-{i}",
                    "x-forwarded-for": f"10.0.0.{i}",
                },
            )
            statuses.append(resp.status_code)
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert_error(resp, 429, "rate_limit_error")
    assert_retry_after(resp)
    # A second agent in the same role has its own budget.
    key2 = enroll_agent(stack.paths, "lim-2", "limited-agent")
    token2 = gateway_token(stack.gateway_url, "lim-2", key2)
    with stack.gw_client() as gw:
        resp2 = gw.post(
            "/v1/messages", json=LIMITED_MESSAGE, headers={"authorization": f"Bearer {token2}"}
        )
    assert resp2.status_code == 200, resp2.text


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hits_allowed(limiter: SlidingWindowLimiter, key: str, limit: int, attempts: int) -> int:
    allowed = 0
    for _ in range(attempts):
        try:
            limiter.hit(key, limit)
        except RateLimitedError:
            continue
        allowed += 1
    return allowed


def test_limiter_refuses_over_the_limit() -> None:
    clock = FakeClock(600.0)
    limiter = SlidingWindowLimiter(clock)
    assert hits_allowed(limiter, "a", 3, 3) == 3
    with pytest.raises(RateLimitedError) as info:
        limiter.hit("a", 3)
    assert info.value.status == 429
    assert isinstance(info.value.retry_after, int)
    assert info.value.retry_after >= 1
    # Other keys have their own count.
    assert hits_allowed(limiter, "b", 3, 3) == 3


def test_limiter_window_slides() -> None:
    clock = FakeClock(650.0)  # 50 s into the window that starts at 600
    limiter = SlidingWindowLimiter(clock)
    assert hits_allowed(limiter, "a", 3, 5) == 3
    clock.now += 60.0  # the three hits are now a minute old
    assert hits_allowed(limiter, "a", 3, 1) == 1
    clock.now += 120.0  # two whole windows later nothing is remembered
    assert hits_allowed(limiter, "a", 3, 5) == 3


def test_limiter_weighs_the_previous_window() -> None:
    clock = FakeClock(659.0)
    limiter = SlidingWindowLimiter(clock)
    assert hits_allowed(limiter, "a", 10, 10) == 10
    clock.now = 660.0  # a new window, but the previous one still fully overlaps
    assert hits_allowed(limiter, "a", 10, 1) == 0
    clock.now = 690.0  # half of the previous window still overlaps: 10 * 0.5 = 5 counted
    assert hits_allowed(limiter, "a", 10, 10) == 5


@pytest.mark.parametrize(
    ("start", "limit", "burst"),
    [(600.0, 3, 3), (650.0, 3, 3), (659.5, 10, 10), (630.0, 5, 5)],
    ids=["at-window-start", "late-in-window", "end-of-window", "mid-window"],
)
def test_limiter_retry_after_is_enough(start: float, limit: int, burst: int) -> None:
    """Waiting exactly Retry-After seconds must be enough for the next call to pass."""
    clock = FakeClock(start)
    limiter = SlidingWindowLimiter(clock)
    assert hits_allowed(limiter, "a", limit, burst) == burst
    with pytest.raises(RateLimitedError) as info:
        limiter.hit("a", limit)
    retry_after = info.value.retry_after
    assert 1 <= retry_after <= 120
    clock.now += retry_after
    limiter.hit("a", limit)


def test_limiter_memory_per_key_is_constant() -> None:
    clock = FakeClock(0.0)
    limiter = SlidingWindowLimiter(clock)
    trace = tracemalloc.Filter(True, ratelimit_module.__file__)

    def run(calls: int) -> None:
        for _ in range(calls):
            clock.now += 0.01
            with contextlib.suppress(RateLimitedError):
                limiter.hit("agent", 50)

    tracemalloc.start()
    try:
        run(1_000)
        before = sum(
            s.size for s in tracemalloc.take_snapshot().filter_traces([trace]).statistics("lineno")
        )
        run(20_000)
        after = sum(
            s.size for s in tracemalloc.take_snapshot().filter_traces([trace]).statistics("lineno")
        )
    finally:
        tracemalloc.stop()
    assert after - before < 1024


# --- request ids ----------------------------------------------------------------------


def test_request_id_is_echoed_and_audited(shared: Stack) -> None:
    allowed_rid, denied_rid = "agent-run_42:step.1", "agent-run_42:step.2"
    with shared.proxy_client() as client:
        allowed = client.post("/v1/messages", json=message_body(), headers={RID: allowed_rid})
        denied = client.post(
            "/v1/messages", json=message_body(model="claude-opus-4-8"), headers={RID: denied_rid}
        )
    assert allowed.status_code == 200
    assert allowed.headers[RID] == allowed_rid
    assert assert_error(denied, 403, "permission_error")["request_id"] == denied_rid

    events = read_events(shared.paths.audit_log, request_id=allowed_rid)
    # The decision is written before the upstream call, then its outcome.
    assert [(e["action"], e["decision"], e["status"]) for e in events] == [
        ("model.call.authorized", "allow", 0),
        ("model.call", "allow", 200),
    ]
    assert all(e["agent_id"] == "agent-1" for e in events)
    assert all(e["resource"] == "model:claude-sonnet-4-6" for e in events)
    events = read_events(shared.paths.audit_log, request_id=denied_rid)
    assert [(e["action"], e["decision"], e["status"]) for e in events] == [
        ("model.call", "deny", 403)
    ]


@pytest.mark.parametrize("via", ["proxy", "gateway"])
@pytest.mark.parametrize(
    "given",
    ["has spaces in it", "x" * 500, "semi;colon", ""],
    ids=["spaces", "500-chars", "semicolon", "empty"],
)
def test_malformed_request_id_is_replaced(shared: Stack, via: str, given: str) -> None:
    headers = {RID: given}
    if via == "gateway":
        headers["authorization"] = f"Bearer {agent1_token(shared)}"
    client = shared.proxy_client() if via == "proxy" else shared.gw_client()
    with client:
        resp = client.post(
            "/v1/messages", json=message_body(model="claude-opus-4-8"), headers=headers
        )
    body = assert_error(resp, 403, "permission_error")
    assert resp.headers[RID] != given
    assert body["request_id"] == resp.headers[RID]
    events = read_events(shared.paths.audit_log, request_id=resp.headers[RID])
    assert [e["action"] for e in events] == ["model.call"]
    if given:
        assert given.encode() not in shared.paths.audit_log.read_bytes()


# --- audit ---------------------------------------------------------------------------


def test_every_request_reaching_the_gateway_is_audited(stack: Stack) -> None:
    token = agent1_token(stack)
    bearer = {"authorization": f"Bearer {token}"}
    # (via, method, path, request kwargs)
    batch: list[tuple[str, str, str, dict[str, Any]]] = [
        ("proxy", "POST", "/v1/messages", {"json": message_body()}),
        ("proxy", "POST", "/v1/messages", {"json": message_body(model="claude-opus-4-8")}),
        ("proxy", "POST", "/v1/tools/kb.search", {"json": {"arguments": {"query": "vpn"}}}),
        ("proxy", "POST", "/v1/tools/email.send", {"json": {"arguments": {}}}),
        ("proxy", "POST", "/v1/tools/db.query", {"json": {"arguments": {"sql": "DROP TABLE x"}}}),
        ("proxy", "GET", "/v1/models", {}),
        ("proxy", "GET", "/v1/tools", {}),
        ("gateway", "GET", "/healthz", {}),
        ("gateway", "GET", "/.well-known/jwks.json", {}),
        ("gateway", "GET", "/no/such/route", {}),
        ("gateway", "DELETE", "/v1/messages", {"headers": bearer}),
        ("gateway", "GET", "/v1/models", {}),
        ("gateway", "GET", "/v1/models", {"headers": {"authorization": "Bearer not.a.jwt"}}),
        ("gateway", "POST", "/v1/token", {"data": {"grant_type": "password"}}),
        ("gateway", "POST", "/v1/messages", {"headers": bearer, "content": b"{nope"}),
        ("gateway", "POST", "/v1/tools/no.such-tool", {"headers": bearer, "json": {}}),
    ]
    before = audit_line_count(stack)
    statuses = []
    with stack.proxy_client() as proxy, stack.gw_client() as gw:
        for number, (via, method, path, kwargs) in enumerate(batch):
            client = proxy if via == "proxy" else gw
            headers = {**kwargs.pop("headers", {}), RID: f"audit-batch-{number}"}
            statuses.append(client.request(method, path, headers=headers, **kwargs).status_code)
    assert 200 in statuses and 401 in statuses and 403 in statuses and 404 in statuses
    after = audit_line_count(stack)
    assert after - before >= len(batch)
    for number in range(len(batch)):
        events = read_events(stack.paths.audit_log, request_id=f"audit-batch-{number}")
        assert events, f"request {batch[number][:3]} left no audit event"
        assert all(e["decision"] in ("allow", "deny") for e in events)
        decisions = [e for e in events if e["action"].endswith(".authorized")]
        outcomes = [e for e in events if not e["action"].endswith(".authorized")]
        assert {e["status"] for e in outcomes} == {statuses[number]}
        # An allowed model or tool call was audited before it was acted on: its decision
        # event (allow, status 0) comes first, then the outcome of the same action.
        acted = [e for e in outcomes if e["action"] in ("model.call", "tool.call")]
        if any(e["decision"] == "allow" for e in acted):
            assert [e["action"] for e in decisions] == [f"{acted[0]['action']}.authorized"]
        for decision in decisions:
            assert (decision["decision"], decision["status"]) == ("allow", 0)
            action = decision["action"].removesuffix(".authorized")
            assert any(e["action"] == action and e["seq"] > decision["seq"] for e in outcomes)
    report = verify_chain(stack.paths.audit_log)
    assert report.events == after == stack.gateway.audit.seq


def test_audit_failure_fails_closed(stack: Stack) -> None:
    token = agent1_token(stack)
    with stack.proxy_client() as proxy:
        # Warm the proxy's token so the next call goes straight to the model route.
        assert proxy.post("/v1/messages", json=message_body()).status_code == 200
        before = stack.paths.audit_log.read_bytes()
        stack.gateway.audit.close()
        via_proxy = proxy.post("/v1/messages", json=message_body())
    with stack.gw_client() as gw:
        direct = gw.post(
            "/v1/messages", json=message_body(), headers={"authorization": f"Bearer {token}"}
        )
        health = gw.get("/healthz")
    for resp in (via_proxy, direct):
        body = assert_error(resp, 503, "api_error")
        assert "content" not in body
        assert "mock model" not in resp.text
    assert health.status_code == 503
    assert "ok" not in health.text
    assert stack.paths.audit_log.read_bytes() == before


# --- what the proxy forwards ----------------------------------------------------------


@dataclass
class FakeGateway:
    """A stand-in gateway that records what the proxy sends it."""

    url: str
    # (path, raw headers) of every request it received.
    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    message_bodies: list[bytes] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    # Replies for /v1/messages, in order; the last one repeats.
    replies: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)

    def message_requests(self) -> list[list[tuple[str, str]]]:
        return [h for p, h in self.requests if p == "/v1/messages"]


def _fake_gateway_app(fake: FakeGateway) -> Starlette:
    def record(request: Request) -> None:
        raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        fake.requests.append((request.url.path, raw))

    async def metadata(request: Request) -> Response:
        record(request)
        return JSONResponse({"issuer": fake.url, "token_endpoint": f"{fake.url}/v1/token"})

    async def token(request: Request) -> Response:
        record(request)
        await request.body()
        value = f"dummy-access-token-{len(fake.tokens) + 1}"
        fake.tokens.append(value)
        return JSONResponse({"access_token": value, "token_type": "Bearer", "expires_in": 300})

    async def messages(request: Request) -> Response:
        record(request)
        fake.message_bodies.append(await request.body())
        index = min(len(fake.message_bodies), len(fake.replies)) - 1
        status, payload, headers = fake.replies[index]
        return Response(payload, status_code=status, headers=headers)

    return Starlette(
        routes=[
            Route("/.well-known/oauth-authorization-server", metadata, methods=["GET"]),
            Route("/v1/token", token, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
        ]
    )


@dataclass
class FakeStack:
    fake: FakeGateway
    proxy_url: str


@pytest.fixture
def fake_stack() -> Iterator[FakeStack]:
    gateway_sock = bind("127.0.0.1", 0)
    fake = FakeGateway(url=url_of(gateway_sock))
    proxy = create_proxy_app(agent_id="agent-1", key=SigningKey.generate(), gateway_url=fake.url)
    with running(_fake_gateway_app(fake), gateway_sock), running(proxy, bind("127.0.0.1", 0)) as px:
        yield FakeStack(fake, px.url)


FAKE_REPLY = b'{"id":"msg_fake","type":"message","note":"relayed byte for byte"}'


def test_proxy_never_forwards_agent_credentials(fake_stack: FakeStack) -> None:
    fake = fake_stack.fake
    fake.replies = [(201, FAKE_REPLY, {"content-type": "application/json", "x-fake": "yes"})]
    sent = message_body()
    with httpx.Client(base_url=fake_stack.proxy_url, timeout=10) as client:
        resp = client.post(
            "/v1/messages",
            json=sent,
            headers={
                "x-api-key": "CANARY-api-key-1b2c",
                "authorization": "Bearer CANARY2-bearer-9f8e",
                "cookie": "session=CANARY3-cookie",
                "proxy-authorization": "Basic CANARY4",
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "tools-2024-04-04",
            },
        )
    # The answer is relayed unchanged.
    assert resp.status_code == 201
    assert resp.content == FAKE_REPLY
    assert resp.headers["x-fake"] == "yes"
    assert resp.headers["content-type"] == "application/json"

    assert fake.requests, "the fake gateway saw nothing"
    for _, headers in fake.requests:
        names = {name.lower() for name, _ in headers}
        assert not names & {"x-api-key", "cookie", "proxy-authorization"}
        for _, value in headers:
            assert "CANARY" not in value
    [forwarded] = fake.message_requests()
    auth = [v for k, v in forwarded if k.lower() == "authorization"]
    assert auth == [f"Bearer {fake.tokens[0]}"]
    values = {k.lower(): v for k, v in forwarded}
    assert values["anthropic-version"] == "2023-06-01"
    assert values["anthropic-beta"] == "tools-2024-04-04"
    assert WELL_FORMED_RID.match(values[RID])
    assert json.loads(fake.message_bodies[0]) == sent


def test_proxy_refreshes_token_and_retries_once_on_401(fake_stack: FakeStack) -> None:
    fake = fake_stack.fake
    fake.replies = [
        (401, b'{"type":"error","error":{"type":"authentication_error"}}', {}),
        (200, FAKE_REPLY, {"content-type": "application/json"}),
    ]
    with httpx.Client(base_url=fake_stack.proxy_url, timeout=10) as client:
        resp = client.post("/v1/messages", json=message_body())
    assert resp.status_code == 200
    assert resp.content == FAKE_REPLY
    assert len(fake.tokens) == 2
    auths = [
        [v for k, v in headers if k.lower() == "authorization"]
        for headers in fake.message_requests()
    ]
    assert auths == [[f"Bearer {fake.tokens[0]}"], [f"Bearer {fake.tokens[1]}"]]


def test_proxy_retries_401_exactly_once(fake_stack: FakeStack) -> None:
    fake = fake_stack.fake
    denied = b'{"type":"error","error":{"type":"authentication_error","message":"no"}}'
    fake.replies = [(401, denied, {"content-type": "application/json"})]
    with httpx.Client(base_url=fake_stack.proxy_url, timeout=10) as client:
        resp = client.post("/v1/messages", json=message_body())
    assert resp.status_code == 401
    assert resp.content == denied
    assert len(fake.message_requests()) == 2
    assert len(fake.tokens) == 2


# --- proxy health and failures -----------------------------------------------------------


def test_proxy_healthz(shared: Stack) -> None:
    with shared.proxy_client() as client:
        resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "agent_id": "agent-1"}


NOT_FORWARDED = [
    ("GET", "/v1/token"),
    ("POST", "/v1/token"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/metrics"),
    ("DELETE", "/v1/messages"),
    ("GET", "/v1/tools/kb.search"),
    ("POST", "/v1/tools/kb.search/run"),
]


@pytest.mark.parametrize(
    ("method", "path"), NOT_FORWARDED, ids=[f"{m}-{p}" for m, p in NOT_FORWARDED]
)
def test_proxy_refuses_routes_it_does_not_forward(shared: Stack, method: str, path: str) -> None:
    before = audit_line_count(shared)
    with shared.proxy_client() as client:
        resp = client.request(method, path)
    assert_error(resp, 404, "not_found_error")
    # Refused at the proxy: nothing reached the gateway.
    assert audit_line_count(shared) == before


def test_proxy_with_gateway_down_is_502() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    app = create_proxy_app(agent_id="agent-1", key=SigningKey.generate(), gateway_url=dead_url)
    sock = bind("127.0.0.1", 0)
    server = BackgroundServer(app, sock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            resp = client.post("/v1/messages", json=message_body())
            health = client.get("/healthz")
    finally:
        server.stop()
    assert_error(resp, 502, "api_error")
    assert health.status_code == 200


# --- the official Anthropic SDK against the proxy ---------------------------------------


@pytest.fixture
def sdk(shared: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=shared.proxy_url, api_key="dummy", max_retries=0)


def test_sdk_messages_create(sdk: anthropic.Anthropic) -> None:
    message = sdk.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=128,
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.type == "message"
    assert message.model == "claude-sonnet-4-6"
    assert message.content[0].type == "text"
    assert message.usage.output_tokens >= 1


def test_sdk_denied_model_raises_permission_denied(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        sdk.messages.create(
            model="claude-opus-4-8",
            max_tokens=128,
            messages=[{"role": "user", "content": "Hello"}],
        )
    assert info.value.status_code == 403
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "permission_error"


def test_sdk_models_list(sdk: anthropic.Anthropic) -> None:
    assert sorted(m.id for m in sdk.models.list()) == sorted(DEMO_MODELS)
