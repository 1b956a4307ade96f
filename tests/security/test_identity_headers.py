"""Client-sent identity headers never influence a decision.

Who calls is what the access token says, nothing else: an ``x-agentzt-agent-id`` in any
spelling, a role, a forwarded-for chain, another agent's token in a side header, a bogus
elevation grant; none of them lends an identity or takes one away (PROTOCOL.md: "any
``x-agentzt-agent-id`` is informational and never trusted"). The client proxy drops
every credential the agent sends and attaches its own. A request id the client chooses is
used only when well-formed, so it can never write anything of its own into the audit log.

The module's gateway has two agents: agent-1 (demo-agent: no email.send) and boss (an
``admin`` role this module adds, with email.send in standing scope), so every header below
names an identity that would be allowed.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import Stack, enroll_agent, roomy_config

from agentzt.audit import read_events, verify_chain
from agentzt.gateway import Gateway, create_app
from agentzt.identity import CLIENT_ASSERTION_TYPE, SigningKey, make_assertion
from agentzt.proxy import create_proxy_app
from agentzt.server import bind, running, url_of

RID = "x-agentzt-request-id"
GENERATED_RID = re.compile(r"req_[0-9a-f]{32}")
WELL_FORMED_RID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ADMIN_ROLE = """
[roles.admin]
description = "test role: email.send and db.query in standing scope"
models = ["claude-haiku-4-5"]
tools = ["kb.search", "db.query", "email.send"]

[roles.admin.limits]
requests_per_minute = 100000
max_output_tokens = 1024
"""
EMAIL = {"arguments": {"to": "ceo@example.com", "subject": "hi", "body": "exfiltrated"}}
KB = {"arguments": {"query": "vpn"}}


# --- the bench ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A request as it reached the gateway's ASGI app."""

    method: str
    path: str
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Bench:
    stack: Stack
    tokens: dict[str, str]
    seen: list[Seen] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    @property
    def audit_log(self) -> Path:
        return self.stack.paths.audit_log

    @property
    def proxy_url(self) -> str:
        assert self.stack.proxy_url is not None
        return self.stack.proxy_url

    def audit_lines(self) -> list[bytes]:
        return self.audit_log.read_bytes().splitlines()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def send(
    url: str,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> Reply:
    """One raw HTTP/1.1 request, headers exactly as given (names, case, repeats)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    lines += [name + b": " + value for name, value in headers or []]
    if body:
        lines.append(b"content-length: " + str(len(body)).encode())
    parts = urlsplit(url)
    assert parts.hostname is not None
    chunks = []
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        found[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Reply(int(status_line.split()[1]), found, payload)


def json_post(body: dict[str, Any]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    return [(b"content-type", b"application/json")], json.dumps(body).encode()


def issue_token(gateway: Gateway, url: str, key: SigningKey, agent_id: str) -> str:
    assertion = make_assertion(key, agent_id, audience=gateway.token_endpoint, now=time.time())
    form = (
        f"grant_type=client_credentials&client_assertion_type={CLIENT_ASSERTION_TYPE}"
        f"&client_assertion={assertion}"
    ).encode()
    content_type = [(b"content-type", b"application/x-www-form-urlencoded")]
    reply = send(url, b"POST", b"/v1/token", content_type, form)
    assert reply.status == 200, reply.body
    token: str = json.loads(reply.body)["access_token"]
    return token


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("identity")
    paths = roomy_config(root, ADMIN_ROLE)
    keys = {
        "agent-1": enroll_agent(paths, "agent-1", "demo-agent"),
        "boss": enroll_agent(paths, "boss", "admin"),
    }
    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    seen: list[Seen] = []
    ran: list[str] = []
    run = gateway.toolbox.run

    def run_and_record(name: str, arguments: Any) -> Any:
        ran.append(name)
        return run(name, arguments)

    gateway.toolbox.run = run_and_record  # type: ignore[method-assign]
    app = create_app(gateway)

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(Seen(scope["method"], scope["path"], tuple(scope["headers"])))
        await app(scope, receive, send)

    proxy = create_proxy_app(
        agent_id="agent-1", key=keys["agent-1"], gateway_url=url_of(gateway_sock)
    )
    with (
        running(recording, gateway_sock) as gw,
        running(proxy, bind("127.0.0.1", 0)) as px,
    ):
        stack = Stack(paths=paths, gateway=gateway, gateway_url=gw.url, proxy_url=px.url)
        tokens = {agent: issue_token(gateway, gw.url, key, agent) for agent, key in keys.items()}
        # The proxy's token session starts on its first call; later calls see only their
        # own events.
        assert send(px.url, b"GET", b"/v1/models").status == 200
        yield Bench(stack=stack, tokens=tokens, seen=seen, ran=ran)


def test_the_admin_role_may_send_email_so_the_headers_below_name_real_power(
    bench: Bench,
) -> None:
    headers, body = json_post(EMAIL)
    auth = (b"authorization", f"Bearer {bench.tokens['boss']}".encode())
    reply = send(bench.stack.gateway_url, b"POST", b"/v1/tools/email.send", [*headers, auth], body)
    assert reply.status == 200, reply.body
    assert bench.ran[-1:] == ["email.send"]


# --- identity headers sent straight to the gateway ---------------------------------------

# {agent}, {role} and {token} name the *other* agent: its id, its role, its valid token.
# {self} names the caller.
HEADER_SETS: list[tuple[str, list[tuple[str, str]]]] = [
    ("agent-id", [("x-agentzt-agent-id", "{agent}")]),
    ("agent-id-mixed-case", [("X-Agentzt-Agent-ID", "{agent}")]),
    ("agent-id-upper", [("X-AGENTZT-AGENT-ID", "{agent}")]),
    ("agent-id-underscore", [("X_Agentzt_Agent_Id", "{agent}")]),
    ("agent-id-underscore-lower", [("x_agentzt_agent_id", "{agent}")]),
    (
        "agent-id-dash-and-underscore",
        [("x-agentzt-agent-id", "{self}"), ("x_agentzt_agent_id", "{agent}")],
    ),
    (
        "agent-id-duplicated",
        [("x-agentzt-agent-id", "{self}"), ("x-agentzt-agent-id", "{agent}")],
    ),
    (
        "agent-id-duplicated-other-first",
        [("x-agentzt-agent-id", "{agent}"), ("x-agentzt-agent-id", "{self}")],
    ),
    ("agent-id-list", [("x-agentzt-agent-id", "{agent}, {self}")]),
    ("role", [("x-agentzt-role", "{role}")]),
    ("role-and-scope", [("x-agentzt-role", "{role}"), ("x-agentzt-scope", "tool:email.send")]),
    ("sub-and-client-id", [("x-agentzt-sub", "{agent}"), ("x-agentzt-client-id", "{agent}")]),
    ("x-forwarded-for", [("x-forwarded-for", "127.0.0.1, 10.0.0.1")]),
    ("x-real-ip", [("x-real-ip", "127.0.0.1")]),
    ("forwarded", [("forwarded", 'for=127.0.0.1;by=agentzt;host=gateway;user="{agent}"')]),
    (
        "forwarded-user",
        [("x-forwarded-user", "{agent}"), ("x-remote-user", "{agent}"), ("remote-user", "{agent}")],
    ),
    ("forwarded-client-cert", [("x-forwarded-client-cert", 'Subject="CN={agent}";URI=spiffe://x')]),
    ("token-as-api-key", [("x-api-key", "{token}")]),
    ("token-as-cookie", [("cookie", "access_token={token}; agent={agent}")]),
    ("token-as-dpop-proof", [("dpop", "{token}")]),
    ("token-as-elevation", [("x-agentzt-elevation", "{token}")]),
    ("elevation-garbage", [("x-agentzt-elevation", "garbage")]),
    ("elevation-alg-none", [("x-agentzt-elevation", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJib3NzIn0.")]),
    ("elevation-10kb", [("x-agentzt-elevation", "A" * 10_240)]),
    ("elevation-duplicated", [("x-agentzt-elevation", "a.b.c"), ("x-agentzt-elevation", "d.e.f")]),
    (
        "everything-at-once",
        [
            ("x-agentzt-agent-id", "{agent}"),
            ("X_Agentzt_Agent_Id", "{agent}"),
            ("x-agentzt-role", "{role}"),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-real-ip", "127.0.0.1"),
            ("forwarded", "for=127.0.0.1"),
            ("x-api-key", "{token}"),
            ("cookie", "access_token={token}"),
            ("x-agentzt-elevation", "garbage"),
        ],
    ),
]


def params(table: list[tuple[str, list[tuple[str, str]]]]) -> list[Any]:
    return [pytest.param(template, id=name) for name, template in table]


def fill(template: list[tuple[str, str]], values: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.format(**values).encode()) for name, value in template]


@pytest.mark.parametrize("template", params(HEADER_SETS))
def test_identity_headers_lend_no_identity(bench: Bench, template: list[tuple[str, str]]) -> None:
    """agent-1's token plus headers naming boss: email.send is still refused, as agent-1."""
    rid = f"lend-{len(bench.seen)}"
    values = {"agent": "boss", "role": "admin", "token": bench.tokens["boss"], "self": "agent-1"}
    headers, body = json_post(EMAIL)
    headers += [
        (RID.encode(), rid.encode()),
        (b"authorization", f"Bearer {bench.tokens['agent-1']}".encode()),
        *fill(template, values),
    ]
    ran_before = len(bench.ran)
    reply = send(bench.stack.gateway_url, b"POST", b"/v1/tools/email.send", headers, body)
    assert reply.status == 403, reply.body
    assert json.loads(reply.body)["error"]["type"] == "permission_error"
    assert bench.ran[ran_before:] == []
    events = read_events(bench.audit_log, request_id=rid)
    assert events
    assert {(e["agent_id"], e["role"]) for e in events} == {("agent-1", "demo-agent")}
    last = events[-1]
    assert (last["action"], last["resource"], last["decision"], last["status"]) == (
        "tool.call",
        "tool:email.send",
        "deny",
        403,
    )
    # Nothing the client sent is written into the decision's record.
    written = json.dumps(events).encode()
    assert all(value not in written for _, value in fill(template, values) if len(value) >= 16)


@pytest.mark.parametrize("template", params(HEADER_SETS))
def test_identity_headers_take_no_identity_away(
    bench: Bench, template: list[tuple[str, str]]
) -> None:
    """boss's token plus headers naming agent-1: email.send still runs, as boss."""
    rid = f"take-{len(bench.seen)}"
    values = {
        "agent": "agent-1",
        "role": "demo-agent",
        "token": bench.tokens["agent-1"],
        "self": "boss",
    }
    headers, body = json_post(EMAIL)
    headers += [
        (RID.encode(), rid.encode()),
        (b"authorization", f"Bearer {bench.tokens['boss']}".encode()),
        *fill(template, values),
    ]
    ran_before = len(bench.ran)
    reply = send(bench.stack.gateway_url, b"POST", b"/v1/tools/email.send", headers, body)
    assert reply.status == 200, reply.body
    assert bench.ran[ran_before:] == ["email.send"]
    events = read_events(bench.audit_log, request_id=rid)
    assert {(e["agent_id"], e["role"]) for e in events} == {("boss", "admin")}
    assert (events[-1]["resource"], events[-1]["decision"]) == ("tool:email.send", "allow")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(["Bearer {self}", "Bearer {other}"], id="own-then-other"),
        pytest.param(["Bearer {other}", "Bearer {self}"], id="other-then-own"),
        pytest.param(["Bearer {self}, Bearer {other}"], id="both-in-one-header"),
        pytest.param(["Bearer {self}", "bearer {self}"], id="own-twice"),
    ],
)
def test_more_than_one_access_token_is_refused_not_chosen_from(
    bench: Bench, authorization: list[str]
) -> None:
    rid = f"two-tokens-{len(bench.seen)}"
    tokens = {"self": bench.tokens["agent-1"], "other": bench.tokens["boss"]}
    headers, body = json_post(EMAIL)
    headers.append((RID.encode(), rid.encode()))
    headers += [(b"authorization", a.format(**tokens).encode()) for a in authorization]
    ran_before = len(bench.ran)
    reply = send(bench.stack.gateway_url, b"POST", b"/v1/tools/email.send", headers, body)
    assert reply.status == 401, reply.body
    assert bench.ran[ran_before:] == []
    events = read_events(bench.audit_log, request_id=rid)
    assert [(e["decision"], e["status"]) for e in events] == [("deny", 401)]
    assert events[0]["agent_id"] in (None, "agent-1")


# --- through the client proxy ------------------------------------------------------------

DROPPED = {
    b"x-agentzt-agent-id",
    b"x_agentzt_agent_id",
    b"x-agentzt-role",
    b"x-api-key",
    b"cookie",
    b"proxy-authorization",
    b"x-forwarded-for",
    b"x-real-ip",
    b"forwarded",
}
PROXY_SETS: list[tuple[str, list[tuple[str, str]]]] = [
    ("agent-id", [("x-agentzt-agent-id", "boss")]),
    ("agent-id-underscore", [("X_Agentzt_Agent_Id", "boss")]),
    ("agent-id-duplicated", [("x-agentzt-agent-id", "agent-1"), ("x-agentzt-agent-id", "boss")]),
    ("role", [("x-agentzt-role", "admin")]),
    ("bearer-of-another-agent", [("authorization", "Bearer {token}")]),
    ("dpop-of-another-agent", [("authorization", "DPoP {token}"), ("dpop", "{token}")]),
    ("dpop-proof-only", [("dpop", "not.a.proof")]),
    ("api-key", [("x-api-key", "{token}")]),
    ("cookie", [("cookie", "access_token={token}")]),
    ("proxy-authorization", [("proxy-authorization", "Bearer {token}")]),
    ("forwarded-for", [("x-forwarded-for", "127.0.0.1"), ("forwarded", "for=127.0.0.1")]),
    (
        "everything-at-once",
        [
            ("x-agentzt-agent-id", "boss"),
            ("x_agentzt_agent_id", "boss"),
            ("x-agentzt-role", "admin"),
            ("authorization", "Bearer {token}"),
            ("dpop", "{token}"),
            ("x-api-key", "{token}"),
            ("cookie", "access_token={token}"),
            ("proxy-authorization", "Bearer {token}"),
            ("x-real-ip", "127.0.0.1"),
        ],
    ),
]


def through_proxy(
    bench: Bench, template: list[tuple[str, str]], tool: str, body: dict[str, Any], rid: str
) -> tuple[Reply, list[Seen]]:
    headers, payload = json_post(body)
    headers += [(RID.encode(), rid.encode()), *fill(template, {"token": bench.tokens["boss"]})]
    before = len(bench.seen)
    reply = send(bench.proxy_url, b"POST", f"/v1/tools/{tool}".encode(), headers, payload)
    forwarded = [s for s in bench.seen[before:] if s.header(RID.encode()) == [rid.encode()]]
    return reply, forwarded


def check_forwarded_headers(bench: Bench, forwarded: list[Seen]) -> None:
    """What reached the gateway carries the proxy's own credential and nothing of the
    agent's: no identity header, no foreign token anywhere."""
    assert forwarded
    boss_token = bench.tokens["boss"].encode()
    for seen in forwarded:
        names = {name for name, _ in seen.headers}
        assert not names & DROPPED, names & DROPPED
        assert all(boss_token not in value for _, value in seen.headers)
        assert all(b"boss" not in value and b"admin" not in value for _, value in seen.headers)
        [authorization] = seen.header(b"authorization")
        assert authorization.startswith(b"DPoP ")
        [proof] = seen.header(b"dpop")
        assert proof.count(b".") == 2
        assert proof != b"not.a.proof"


@pytest.mark.parametrize("template", params(PROXY_SETS))
def test_the_proxy_drops_identity_and_credentials_the_agent_sends(
    bench: Bench, template: list[tuple[str, str]]
) -> None:
    rid = f"proxy-deny-{len(bench.seen)}"
    ran_before = len(bench.ran)
    reply, forwarded = through_proxy(bench, template, "email.send", EMAIL, rid)
    assert reply.status == 403, reply.body
    assert bench.ran[ran_before:] == []
    check_forwarded_headers(bench, forwarded)
    events = read_events(bench.audit_log, request_id=rid)
    assert {(e["agent_id"], e["role"]) for e in events} == {("agent-1", "demo-agent")}
    assert (events[-1]["resource"], events[-1]["decision"]) == ("tool:email.send", "deny")


def test_the_proxy_calls_as_its_own_agent_whatever_the_agent_presents(bench: Bench) -> None:
    template = dict(PROXY_SETS)["everything-at-once"]
    rid = "proxy-allow-everything"
    ran_before = len(bench.ran)
    reply, forwarded = through_proxy(bench, template, "kb.search", KB, rid)
    assert reply.status == 200, reply.body
    assert bench.ran[ran_before:] == ["kb.search"]
    check_forwarded_headers(bench, forwarded)
    events = read_events(bench.audit_log, request_id=rid)
    # The decision event comes before the tool runs, then the outcome; both as agent-1.
    assert [(e["agent_id"], e["action"], e["resource"], e["decision"]) for e in events] == [
        ("agent-1", "tool.call.authorized", "tool:kb.search", "allow"),
        ("agent-1", "tool.call", "tool:kb.search", "allow"),
    ]


# --- request ids -------------------------------------------------------------------------

REFUSED = "refused by the HTTP parser"
REPLACED = "replaced by a generated id"
REQUEST_IDS = [
    # Line breaks inside the value: the server refuses the request, or the break ends the
    # header and what follows is just another (inert) header.
    pytest.param(b'abc\r\n{"seq": 1, "agent_id": "boss"}', REFUSED, id="crlf-json-line"),
    pytest.param(b"abc\r\nx-agentzt-agent-id: boss", "abc", id="crlf-extra-header"),
    pytest.param(b'abc\n{"seq": 1}', REFUSED, id="bare-lf"),
    pytest.param(b'abc\r{"seq": 1}', REFUSED, id="bare-cr"),
    pytest.param(b'abc\r\n {"seq": 1}', REFUSED, id="obs-fold-space"),
    pytest.param(b'abc\r\n\t{"seq": 1}', REFUSED, id="obs-fold-tab"),
    pytest.param(b"abc\x00def", REFUSED, id="nul"),
    pytest.param(b"abc\x1bdef", REFUSED, id="escape-char"),
    # Well-formed HTTP, not a well-formed request id.
    pytest.param(b"a" * 10_240, REPLACED, id="10kb"),
    pytest.param(b"b" * 129, REPLACED, id="129-chars"),
    pytest.param("r\u00e9q-\u00fc-1".encode(), REPLACED, id="non-ascii-utf8"),
    pytest.param(b"r\xe9q-latin-1", REPLACED, id="non-ascii-latin-1"),
    pytest.param(b'abc","agent_id":"boss', REPLACED, id="json-breakout"),
    pytest.param(b"abc\\n\\r\\u2028", REPLACED, id="escaped-breaks"),
    pytest.param(b"abc%0d%0a%7b", REPLACED, id="percent-crlf"),
    pytest.param(b"../../etc/passwd", REPLACED, id="path"),
    pytest.param(b"a b", REPLACED, id="inner-space"),
    pytest.param(b"", REPLACED, id="empty"),
    # Controls: well-formed ids are kept.
    pytest.param(b"c" * 128, b"c" * 128, id="128-chars-kept"),
    pytest.param(b"my-req_1.2:3", "my-req_1.2:3", id="well-formed-kept"),
]


@pytest.mark.parametrize("via", ["gateway", "proxy"])
@pytest.mark.parametrize(("value", "expected"), REQUEST_IDS)
def test_a_client_request_id_is_used_only_when_well_formed(
    bench: Bench, value: bytes, expected: str | bytes, via: str
) -> None:
    if via == "gateway":
        url, auth = bench.stack.gateway_url, f"Bearer {bench.tokens['agent-1']}".encode()
        headers = [(b"authorization", auth), (RID.encode(), value)]
    else:
        url, headers = bench.proxy_url, [(RID.encode(), value)]
    lines_before, seen_before = bench.audit_lines(), len(bench.seen)
    reply = send(url, b"GET", b"/v1/models", headers)
    lines_after = bench.audit_lines()
    new = lines_after[len(lines_before) :]
    assert lines_after[: len(lines_before)] == lines_before
    if expected == REFUSED:
        assert reply.status == 400
        assert new == []
        return
    assert reply.status == 200, reply.body
    echoed = reply.headers[RID]
    if expected == REPLACED:
        assert GENERATED_RID.fullmatch(echoed), echoed
    else:
        want = expected.decode() if isinstance(expected, bytes) else expected
        assert echoed == want
    # Exactly this call's event was appended, under the id echoed, as agent-1: the value
    # sent wrote no line, no field and no byte of its own.
    events = [json.loads(line) for line in new]
    assert [(e["request_id"], e["agent_id"], e["action"]) for e in events] == [
        (echoed, "agent-1", "model.list")
    ]
    if expected == REPLACED and len(value) >= 8:
        assert value not in bench.audit_log.read_bytes()
    if via == "proxy":
        # The proxy settled the id before forwarding: the gateway got that one, once.
        [seen] = bench.seen[seen_before:]
        assert seen.header(RID.encode()) == [echoed.encode()]


def test_the_audit_chain_holds_after_every_header_trick(bench: Bench) -> None:
    # Last in the module (file order): the log the tricks above wrote still verifies, and
    # every line in it carries a well-formed request id.
    report = verify_chain(bench.audit_log)
    events = [json.loads(line) for line in bench.audit_lines()]
    assert report.events == len(events)
    assert all(WELL_FORMED_RID.fullmatch(e["request_id"]) for e in events)
    assert "boss" not in {e["agent_id"] for e in events if e["request_id"].startswith("lend-")}
