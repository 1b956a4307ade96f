"""Rate limits: keyed on who is authenticated, exact under a burst, on the OAuth
endpoints too, and with bounded state.

Issue 8's rate-limit class. A resource call counts against its agent's role limit
(``requests_per_minute``) once its token verified and before authorization, so denied
calls count too (PROTOCOL.md). Rotating tokens, forwarding headers or a claimed identity
header do not reset it. ``/v1/token``, ``/v1/revoke`` and ``/v1/introspect`` count per
client TCP address before anything is verified, and per agent once its assertion
verified; over the limit they answer 429 ``slow_down`` with ``Retry-After``.

The gateways here run in process with a frozen clock, so a test decides where in the
window every request falls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from burst import all_at_once
from conftest import REPO, TEST_ROLES, Clock, allow_bearer, at, enroll_agent

from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.gateway.ratelimit import SlidingWindowLimiter
from agentzt.identity import (
    CLIENT_ASSERTION_TYPE,
    Ledger,
    SigningKey,
    make_assertion,
)
from agentzt.server import bind, running, url_of

REQUEST_ID = "x-agentzt-request-id"
LIMITED, OTHER, BURSTY = "limited-1", "limited-2", "bursty-1"
BURST_LIMIT = 10
BURST_ROLE = f"""
[roles.burst-agent]
description = "test role: {BURST_LIMIT} requests a minute"
models = ["claude-haiku-4-5"]
tools = ["kb.search"]

[roles.burst-agent.limits]
requests_per_minute = {BURST_LIMIT}
max_output_tokens = 16
"""
AGENTS = {LIMITED: "limited-agent", OTHER: "limited-agent", BURSTY: "burst-agent"}
# limited-agent in tests/conftest.py TEST_ROLES.
LIMITED_PER_MINUTE = 3
# Noon on an ordinary day, exactly at the start of a one-minute window.
NOON = at(12)
GARBAGE_ASSERTION = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJub2JvZHkifQ.c2lnbmF0dXJl"


# --- an in-process gateway with a frozen clock -------------------------------------------


def with_limits(gateway_toml: str, **limits: int) -> str:
    """``gateway_toml`` with the given ``[limits]`` keys set."""
    for name, value in limits.items():
        gateway_toml, found = re.subn(
            rf"^{name} = \d+", f"{name} = {value}", gateway_toml, flags=re.MULTILINE
        )
        assert found == 1, f"{name} is not in gateway.toml"
    return gateway_toml


@dataclass
class Gw:
    """One gateway, shared by the tests that want its ``[limits]``.

    Each test gets it at a fresh hour of its frozen clock, two windows and more past the
    previous test's traffic, so every counter starts from zero; it sees only the audit
    events and ledger rows made since.
    """

    paths: Paths
    gateway: Gateway
    url: str
    clock: Clock
    keys: dict[str, SigningKey]
    client: httpx.Client = field(init=False)
    # The start of this test's hour, and the last audit seq before it.
    t0: float = NOON
    seq0: int = 0

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def fresh(self) -> Gw:
        self.t0 = self.clock.now = self.t0 + 3600
        last = read_events(self.paths.audit_log, limit=1)
        self.seq0 = last[0]["seq"] if last else 0
        return self

    def token_form(self, agent_id: str) -> dict[str, str]:
        assertion = make_assertion(
            self.keys[agent_id], agent_id, audience=self.gateway.token_endpoint, now=self.clock()
        )
        return {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
        }

    def ask_token(
        self, agent_id: str, headers: dict[str, str] | None = None, request_id: str = "req-token"
    ) -> httpx.Response:
        return self.client.post(
            "/v1/token",
            data=self.token_form(agent_id),
            headers={REQUEST_ID: request_id, **(headers or {})},
        )

    def token(self, agent_id: str) -> str:
        resp = self.ask_token(agent_id)
        assert resp.status_code == 200, resp.text
        assert resp.json()["token_type"] == "Bearer"
        token: str = resp.json()["access_token"]
        return token

    def models(
        self, token: str, headers: dict[str, str] | None = None, request_id: str = "req-models"
    ) -> httpx.Response:
        return self.client.get(
            "/v1/models",
            headers={"Authorization": f"Bearer {token}", REQUEST_ID: request_id, **(headers or {})},
        )

    def event(self, request_id: str) -> dict[str, Any]:
        """The one audit event of this test's request ``request_id``."""
        found = read_events(self.paths.audit_log, request_id=request_id)
        found = [e for e in found if e["seq"] > self.seq0]
        assert len(found) == 1, found
        return found[0]

    def ledger_rows(self, agent_id: str) -> int:
        """How many tokens were issued to ``agent_id`` in this test."""
        ledger = Ledger(self.paths.token_ledger, create=False)
        try:
            rows = ledger.rows(now=self.clock(), agent_id=agent_id, limit=10_000)
        finally:
            ledger.close()
        return sum(row.issued_at >= self.t0 for row in rows)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gw]]:
    """A gateway per distinct ``[limits]``, started on first use; limited-1 and limited-2
    (3 calls a minute) and bursty-1 (10 a minute) enrolled; bearer tokens (the packaged
    config with dpop = "optional", as the ``paths`` fixture writes it)."""
    started: dict[tuple[tuple[str, int], ...], Gw] = {}
    with ExitStack() as stack:

        def gateway_with(**limits: int) -> Gw:
            key = tuple(sorted(limits.items()))
            if key not in started:
                config = tmp_path_factory.mktemp("rate-limits") / "config"
                config.mkdir()
                packaged = allow_bearer((REPO / "config" / "gateway.toml").read_text())
                (config / "gateway.toml").write_text(with_limits(packaged, **limits))
                policy = (REPO / "config" / "policy.toml").read_text() + TEST_ROLES + BURST_ROLE
                (config / "policy.toml").write_text(policy)
                paths = Paths(config_dir=config, home=config.parent / "home")
                keys = {agent: enroll_agent(paths, agent, role) for agent, role in AGENTS.items()}
                clock = Clock(NOON)
                sock = bind("127.0.0.1", 0)
                gateway = Gateway(paths, public_url=url_of(sock), clock=clock)
                server = stack.enter_context(running(create_app(gateway), sock))
                gw = Gw(paths=paths, gateway=gateway, url=server.url, clock=clock, keys=keys)
                stack.callback(gw.client.close)
                started[key] = gw
            return started[key]

        yield gateway_with


@pytest.fixture
def start(gateways: Callable[..., Gw]) -> Callable[..., Gw]:
    """``start(**limits)``: the gateway with those ``[limits]``, fresh for this test."""
    return lambda **limits: gateways(**limits).fresh()


def retry_after(resp: httpx.Response) -> int:
    value = resp.headers["retry-after"]
    assert value.isdigit() and int(value) >= 1, value
    return int(value)


def assert_rate_limited(gw: Gw, resp: httpx.Response, request_id: str, agent_id: str) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.json()["error"]["type"] == "rate_limit_error"
    retry_after(resp)
    seen = gw.event(request_id)
    assert (seen["decision"], seen["status"], seen["agent_id"]) == ("deny", 429, agent_id)


# --- keyed on the authenticated identity -------------------------------------------------

FORWARDED = {"X-Forwarded-For": "1.2.3.4"}
REAL_IP = {"X-Real-IP": "1.2.3.4"}
FORWARDED_RFC7239 = {"Forwarded": "for=1.2.3.4;proto=https"}
EVERY_FORWARDING_HEADER = {
    "X-Forwarded-For": "203.0.113.9, 1.2.3.4",
    "X-Real-IP": "203.0.113.9",
    "Forwarded": 'for="[2001:db8::1]"',
    "X-Client-IP": "203.0.113.9",
    "True-Client-IP": "203.0.113.9",
    "CF-Connecting-IP": "203.0.113.9",
}

# After limited-1 used its 3 calls and got a 429: (who calls, with a new token?,
# extra headers, expected status).
AFTER_THE_LIMIT = [
    pytest.param(LIMITED, True, {}, 429, id="rotated-token"),
    pytest.param(LIMITED, False, FORWARDED, 429, id="x-forwarded-for"),
    pytest.param(LIMITED, False, REAL_IP, 429, id="x-real-ip"),
    pytest.param(LIMITED, False, FORWARDED_RFC7239, 429, id="forwarded"),
    pytest.param(LIMITED, True, EVERY_FORWARDING_HEADER, 429, id="rotated-token+every-header"),
    pytest.param(LIMITED, False, {"x-agentzt-agent-id": OTHER}, 429, id="claims-other-identity"),
    pytest.param(OTHER, True, {}, 200, id="another-agent-unaffected"),
]


@pytest.mark.parametrize(("caller", "new_token", "headers", "status"), AFTER_THE_LIMIT)
def test_the_limit_follows_the_authenticated_agent(
    start: Callable[..., Gw], caller: str, new_token: bool, headers: dict[str, str], status: int
) -> None:
    gw = start()
    token = gw.token(LIMITED)
    for i in range(LIMITED_PER_MINUTE):
        assert gw.models(token, request_id=f"req-ok-{i}").status_code == 200
    assert_rate_limited(gw, gw.models(token, request_id="req-over"), "req-over", LIMITED)

    attempt_token = gw.token(caller) if new_token else token
    attempt = gw.models(attempt_token, headers, request_id="req-attempt")

    assert attempt.status_code == status, attempt.text
    if status == 429:
        assert_rate_limited(gw, attempt, "req-attempt", LIMITED)
    else:
        assert gw.event("req-attempt")["agent_id"] == caller
        # limited-1 is still at its limit.
        assert_rate_limited(gw, gw.models(token, request_id="req-still"), "req-still", LIMITED)


@pytest.mark.parametrize(
    ("used_at", "refused_at"),
    [
        pytest.param(0.0, 0.0, id="refused-in-the-same-window"),
        pytest.param(59.0, 61.0, id="refused-by-the-previous-window"),
    ],
)
def test_retry_after_is_when_one_more_call_fits(
    start: Callable[..., Gw], used_at: float, refused_at: float
) -> None:
    gw = start()
    token = gw.token(LIMITED)
    gw.clock.now = gw.t0 + used_at
    for _ in range(LIMITED_PER_MINUTE):
        assert gw.models(token).status_code == 200
    gw.clock.now = gw.t0 + refused_at
    wait = retry_after(gw.models(token))

    # A refused call is not counted: asking again just before the wait is over changes
    # nothing, and the call after the wait goes through.
    gw.clock.now = gw.t0 + refused_at + wait - 1
    assert gw.models(token).status_code == 429
    gw.clock.now = gw.t0 + refused_at + wait
    assert gw.models(token).status_code == 200


# --- under a concurrent burst --------------------------------------------------------------


def allowed(gw: Gw, tokens: list[str], i: int) -> dict[str, Any]:
    return {"method": "GET", "url": "/v1/models", "headers": bearer(tokens[0])}


def denied(gw: Gw, tokens: list[str], i: int) -> dict[str, Any]:
    """A tool outside the role: 403 from the PDP, after the call was counted."""
    return {
        "method": "POST",
        "url": "/v1/tools/email.send",
        "json": {"arguments": {"to": "x@example.com", "subject": "s", "body": "b"}},
        "headers": bearer(tokens[0]),
    }


def malformed(gw: Gw, tokens: list[str], i: int) -> dict[str, Any]:
    """A body that is not JSON: 400, after the call was counted."""
    return {
        "method": "POST",
        "url": "/v1/messages",
        "content": b"{not json",
        "headers": {**bearer(tokens[0]), "content-type": "application/json"},
    }


def mixed(gw: Gw, tokens: list[str], i: int) -> dict[str, Any]:
    return (allowed, denied, malformed)[i % 3](gw, tokens, i)


def rotating(gw: Gw, tokens: list[str], i: int) -> dict[str, Any]:
    """Each call with one of five tokens of the same agent, and its own forwarded-for."""
    request = allowed(gw, tokens, i)
    request["headers"] = {**bearer(tokens[i % len(tokens)]), "X-Forwarded-For": f"10.0.0.{i}"}
    return request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("build", "answers"),
    [
        pytest.param(allowed, {200}, id="all-allowed"),
        pytest.param(denied, {403}, id="all-denied-by-policy"),
        pytest.param(malformed, {400}, id="all-malformed"),
        pytest.param(mixed, {200, 400, 403}, id="mixed"),
        pytest.param(rotating, {200}, id="rotating-tokens-and-forwarded-for"),
    ],
)
def test_a_burst_of_fifty_gets_exactly_the_limit_through(
    start: Callable[..., Gw],
    build: Callable[[Gw, list[str], int], dict[str, Any]],
    answers: set[int],
) -> None:
    gw = start()
    tokens = [gw.token(BURSTY) for _ in range(5)]
    burst = 50
    requests = []
    for i in range(burst):
        request = build(gw, tokens, i)
        request["headers"][REQUEST_ID] = f"req-burst-{i}"
        requests.append(request)

    responses = all_at_once(gw.url, requests)

    statuses = [r.status_code for r in responses]
    assert statuses.count(429) == burst - BURST_LIMIT, statuses
    assert {s for s in statuses if s != 429} <= answers
    assert sum(s != 429 for s in statuses) == BURST_LIMIT
    limited = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["type"] == "rate_limit_error" for r in limited)
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
    events = [gw.event(f"req-burst-{i}") for i in range(burst)]
    assert [e["status"] for e in events] == statuses
    assert all(e["agent_id"] == BURSTY for e in events)

    # Whatever the first ten were, the agent's minute is used up.
    after = gw.models(tokens[-1], request_id="req-after")
    assert_rate_limited(gw, after, "req-after", BURSTY)


# --- the OAuth endpoints -------------------------------------------------------------------

PER_AGENT = 5


def token_request(gw: Gw, agent_id: str, headers: dict[str, str]) -> httpx.Response:
    return gw.client.post("/v1/token", data=gw.token_form(agent_id), headers=headers)


def revoke_request(gw: Gw, agent_id: str, headers: dict[str, str]) -> httpx.Response:
    """An agent revoking (with its client assertion) a token that is not live: 200."""
    return gw.client.post(
        "/v1/revoke", data={**gw.token_form(agent_id), "token": "not-a-token"}, headers=headers
    )


@pytest.mark.parametrize(
    ("spend", "then"),
    [
        pytest.param(token_request, token_request, id="tokens-then-token"),
        pytest.param(revoke_request, token_request, id="revokes-then-token"),
        pytest.param(token_request, revoke_request, id="tokens-then-revoke"),
    ],
)
def test_an_agent_gets_at_most_its_token_requests_per_minute(
    start: Callable[..., Gw],
    spend: Callable[[Gw, str, dict[str, str]], httpx.Response],
    then: Callable[[Gw, str, dict[str, str]], httpx.Response],
) -> None:
    gw = start(token_requests_per_minute=PER_AGENT)
    for i in range(PER_AGENT):
        # Each from another claimed address: the count is the agent's all the same.
        headers = {REQUEST_ID: f"req-spend-{i}", "X-Forwarded-For": f"198.51.100.{i + 1}"}
        resp = spend(gw, LIMITED, headers)
        assert resp.status_code == 200, resp.text
    rows = gw.ledger_rows(LIMITED)

    over = then(gw, LIMITED, {REQUEST_ID: "req-over", "X-Forwarded-For": "198.51.100.99"})

    assert over.status_code == 429, over.text
    assert over.json()["error"] == "slow_down"
    assert "access_token" not in over.json()
    assert over.headers["cache-control"] == "no-store"
    retry_after(over)
    assert gw.ledger_rows(LIMITED) == rows
    seen = gw.event("req-over")
    assert (seen["decision"], seen["status"], seen["agent_id"]) == ("deny", 429, LIMITED)
    assert seen["action"] == ("token.reject" if then is token_request else "token.revoke")

    # Per agent, not per address: another agent on the same connection still gets one.
    assert gw.ask_token(OTHER, request_id="req-other").status_code == 200
    assert gw.ledger_rows(OTHER) == 1


PER_ADDRESS = 5


def garbage_token(gw: Gw, headers: dict[str, str]) -> httpx.Response:
    return gw.client.post(
        "/v1/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": GARBAGE_ASSERTION,
        },
        headers=headers,
    )


def garbage_revoke(gw: Gw, headers: dict[str, str]) -> httpx.Response:
    return gw.client.post(
        "/v1/revoke",
        data={
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": GARBAGE_ASSERTION,
            "token": "not-a-token",
        },
        headers=headers,
    )


def garbage_introspect(gw: Gw, headers: dict[str, str]) -> httpx.Response:
    """No operator credential: 401."""
    return gw.client.post("/v1/introspect", data={"token": "not-a-token"}, headers=headers)


def valid_token(gw: Gw, headers: dict[str, str]) -> httpx.Response:
    return gw.client.post("/v1/token", data=gw.token_form(LIMITED), headers=headers)


OAuthRequest = Callable[[Gw, dict[str, str]], httpx.Response]
ACTION: dict[OAuthRequest, str] = {
    garbage_token: "token.reject",
    valid_token: "token.reject",
    garbage_revoke: "token.revoke",
    garbage_introspect: "token.introspect",
}
# Regression: uvicorn's proxy_headers (on by default) trusted X-Forwarded-For from
# 127.0.0.1, so each new header value got a fresh per-address budget.
XFF_BUG: list[pytest.MarkDecorator] = []


def headers_each(name: str) -> Callable[[int], dict[str, str]]:
    """A different ``name`` header on every request."""
    return lambda i: {name: f"198.51.100.{i + 1}"}


def no_headers(i: int) -> dict[str, str]:
    return {}


# (the five requests that use up the address's minute, the sixth, headers per request)
PER_ADDRESS_CASES = [
    pytest.param([garbage_token] * 5, garbage_token, no_headers, id="token-bad-assertions"),
    pytest.param([garbage_revoke] * 5, garbage_revoke, no_headers, id="revoke-bad-assertions"),
    pytest.param(
        [garbage_introspect] * 5, garbage_introspect, no_headers, id="introspect-no-credential"
    ),
    pytest.param(
        [garbage_token, garbage_revoke, garbage_introspect, garbage_token, garbage_revoke],
        garbage_introspect,
        no_headers,
        id="one-budget-for-the-three-endpoints",
    ),
    pytest.param(
        [garbage_token] * 5, garbage_token, headers_each("X-Real-IP"), id="x-real-ip-each-time"
    ),
    pytest.param(
        [garbage_token] * 5,
        garbage_token,
        lambda i: {"Forwarded": f"for=198.51.100.{i + 1}"},
        id="forwarded-each-time",
    ),
    pytest.param(
        [garbage_token] * 5,
        garbage_token,
        lambda i: {"X-Forwarded-For": "1.2.3.4"} if i == 5 else {},
        id="x-forwarded-for-on-the-sixth",
        marks=XFF_BUG,
    ),
    pytest.param(
        [garbage_revoke] * 5,
        garbage_introspect,
        headers_each("X-Forwarded-For"),
        id="x-forwarded-for-each-time",
        marks=XFF_BUG,
    ),
]


@pytest.mark.parametrize(("spend", "sixth", "headers"), PER_ADDRESS_CASES)
def test_a_client_address_gets_at_most_its_oauth_failures_per_minute(
    start: Callable[..., Gw],
    spend: list[OAuthRequest],
    sixth: OAuthRequest,
    headers: Callable[[int], dict[str, str]],
) -> None:
    gw = start(token_failures_per_minute_per_address=PER_ADDRESS)
    assert len(spend) == PER_ADDRESS
    for i, send in enumerate(spend):
        resp = send(gw, {REQUEST_ID: f"req-spend-{i}", **headers(i)})
        assert resp.status_code == 401, resp.text
        assert gw.event(f"req-spend-{i}")["status"] == 401

    over = sixth(gw, {REQUEST_ID: "req-over", **headers(PER_ADDRESS)})

    assert over.status_code == 429, over.text
    assert over.json()["error"] == "slow_down"
    assert "access_token" not in over.json()
    retry_after(over)
    seen = gw.event("req-over")
    assert (seen["action"], seen["decision"], seen["status"]) == (ACTION[sixth], "deny", 429)
    # A failure past the limit: nobody is named, nothing is issued.
    assert seen["agent_id"] is None
    assert gw.ledger_rows(LIMITED) == 0


def test_failures_from_an_address_never_lock_out_requests_that_verify(
    start: Callable[..., Gw],
) -> None:
    """Every agent and the operator on a host share its address (loopback): a neighbour's
    flood of garbage must not stop a request that verifies."""
    gw = start(token_failures_per_minute_per_address=PER_ADDRESS)
    for i in range(PER_ADDRESS + 3):
        garbage_token(gw, {REQUEST_ID: f"req-flood-{i}"})
    assert garbage_token(gw, {REQUEST_ID: "req-flood-over"}).status_code == 429
    ok = valid_token(gw, {REQUEST_ID: "req-valid"})
    assert ok.status_code == 200, ok.text
    assert "access_token" in ok.json()


# --- the limiter's own state ---------------------------------------------------------------

DISTINCT_KEYS = 200_000
# Idle keys are swept once the table holds more than this many.
SWEEP_AT = 100_000
# Entries a sweep may examine per hit, amortized: a sweep that frees a window's worth of
# keys costs about one entry per key it frees; one that frees nothing costs a table scan.
SWEEP_WORK_PER_HIT = 4


def count_sweeps(limiter: SlidingWindowLimiter) -> list[int]:
    """The entries each sweep of idle keys examined (it reports them)."""
    sizes: list[int] = []
    sweep = limiter._forget_idle

    def counted(start: float) -> int:
        examined = sweep(start)
        sizes.append(examined)
        return examined

    limiter._forget_idle = counted  # type: ignore[method-assign]
    return sizes


@pytest.mark.parametrize(
    "keys_per_window",
    [
        pytest.param(5_000, id="5k-keys-a-minute"),
        pytest.param(40_000, id="40k-keys-a-minute"),
    ],
)
def test_limiter_state_stays_bounded_as_keys_come_and_go(keys_per_window: int) -> None:
    clock = Clock(NOON)
    limiter = SlidingWindowLimiter(clock)
    sweeps = count_sweeps(limiter)
    step = 60.0 / keys_per_window
    peak = 0
    for i in range(DISTINCT_KEYS):
        limiter.hit(f"agent-{i}", 5)
        clock.now += step
        peak = max(peak, len(limiter._state))

    # Only keys of the last two windows can matter; older ones are dropped as new keys
    # arrive, so the table holds at most about two windows' worth (three at the edges).
    assert peak <= 3 * keys_per_window + 1
    assert sweeps, "200k distinct keys never triggered a sweep"
    assert sum(sweeps) <= SWEEP_WORK_PER_HIT * DISTINCT_KEYS
    # Sweeps forget only keys that no longer count: every key of the last minute is kept.
    recent = range(DISTINCT_KEYS - keys_per_window, DISTINCT_KEYS)
    assert all(f"agent-{i}" in limiter._state for i in recent)


def fill_one_window(keys: int) -> tuple[SlidingWindowLimiter, list[int]]:
    clock = Clock(NOON)
    limiter = SlidingWindowLimiter(clock)
    for i in range(keys):
        limiter.hit(f"address-{i}", 600)
    return limiter, count_sweeps(limiter)


def test_limiter_cost_of_a_known_key_does_not_grow_with_the_table() -> None:
    limiter, sweeps = fill_one_window(SWEEP_AT + 1)
    for i in range(10_000):
        limiter.hit(f"address-{i % 100}", 600)
    assert sweeps == []
    assert len(limiter._state) == SWEEP_AT + 1


# Regression: with more than 100k keys live, every new key's hit scanned the whole table
# and freed nothing (O(n) per call).
def test_limiter_cost_of_a_new_key_does_not_grow_with_the_table() -> None:
    limiter, sweeps = fill_one_window(SWEEP_AT + 1)
    new_keys = 50
    for i in range(new_keys):
        limiter.hit(f"newcomer-{i}", 600)
    assert len(limiter._state) == SWEEP_AT + 1 + new_keys
    assert sum(sweeps) <= SWEEP_WORK_PER_HIT * new_keys, (
        f"{len(sweeps)} sweeps examined {sum(sweeps)} entries for {new_keys} new keys"
    )
