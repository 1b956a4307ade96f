"""One reading of each request: the path and method the gateway routes on are the ones
authorization decides on and the audit log records, or the request is refused.

Every variant goes over a raw socket (no client library normalizes it) to the gateway,
with agent-1's valid bearer token, and to agent-1's client proxy. agent-1 is demo-agent:
it may call kb.search, db.query and web.fetch, never email.send. Each variant names the
route it means once normalized (the percent-decoded path, the fragment dropped, the query
ignored), or None when it names no route. The invariants, checked on every row:

- no 5xx; the answer is 200 or a refusal (400, 403, 404, 405);
- a tool runs only if it is the variant's normalized tool, the role allows it, the answer
  is 200 and the audit events that allowed it (the decision written before it ran, then
  its outcome) name that very tool (authorization saw what ran); email.send never runs;
- the audit events of the request name no resource but the normalized one, and allow
  nothing but the normalized route;
- through the proxy, whatever reaches the gateway is exactly the normalized route (method
  and raw path), with no override header; a variant naming no route never reaches it.

The ``seen`` column records what this build answers (gateway, proxy); it documents, the
invariants decide.
"""

from __future__ import annotations

import json
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
DEMO_TOOLS = {"kb.search", "db.query", "web.fetch"}
REFUSED = {400, 403, 404, 405}
# A body each tool would accept, so a call that wrongly got through would really run.
ARGUMENTS: dict[str, dict[str, Any]] = {
    "kb.search": {"query": "vpn"},
    "email.send": {"to": "ceo@example.com", "subject": "hi", "body": "exfiltrated"},
    "db.query": {"sql": "select 1"},
}


# --- the bench: one gateway and proxy for the module, instrumented ---------------------


@dataclass(frozen=True)
class Seen:
    """A request as it reached the gateway's ASGI app."""

    method: str
    path: str
    raw_path: bytes
    headers: tuple[tuple[bytes, bytes], ...]

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


@dataclass
class Bench:
    stack: Stack
    token: str
    seen: list[Seen] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    @property
    def audit_log(self) -> Path:
        return self.stack.paths.audit_log


def recording(app: Any, seen: list[Seen]) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(
                Seen(scope["method"], scope["path"], scope["raw_path"], tuple(scope["headers"]))
            )
        await app(scope, receive, send)

    return wrapped


def issue_token(gateway: Gateway, url: str, key: SigningKey, agent_id: str) -> str:
    assertion = make_assertion(key, agent_id, audience=gateway.token_endpoint, now=time.time())
    form = (
        f"grant_type=client_credentials&client_assertion_type={CLIENT_ASSERTION_TYPE}"
        f"&client_assertion={assertion}"
    ).encode()
    reply = send(
        url,
        b"POST",
        b"/v1/token",
        [(b"content-type", b"application/x-www-form-urlencoded")],
        form,
    )
    assert reply.status == 200, reply.body
    token: str = json.loads(reply.body)["access_token"]
    return token


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    root = tmp_path_factory.mktemp("reading")
    paths = roomy_config(root)
    key = enroll_agent(paths, "agent-1", "demo-agent")
    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    seen: list[Seen] = []
    ran: list[str] = []
    run = gateway.toolbox.run

    def run_and_record(name: str, arguments: Any) -> Any:
        ran.append(name)
        return run(name, arguments)

    gateway.toolbox.run = run_and_record  # type: ignore[method-assign]
    proxy = create_proxy_app(agent_id="agent-1", key=key, gateway_url=url_of(gateway_sock))
    with (
        running(recording(create_app(gateway), seen), gateway_sock) as gw,
        running(proxy, bind("127.0.0.1", 0)) as px,
    ):
        stack = Stack(paths=paths, gateway=gateway, gateway_url=gw.url, proxy_url=px.url)
        token = issue_token(gateway, gw.url, key, "agent-1")
        # The proxy's token session starts on its first call; later rows then see only
        # their own events.
        assert send(px.url, b"GET", b"/v1/models").status == 200
        yield Bench(stack=stack, token=token, seen=seen, ran=ran)


# --- raw HTTP/1.1 ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def send(
    url: str,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    host: bytes = b"127.0.0.1",
) -> Reply:
    """One request exactly as given (request line, headers, body); the connection closes."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: " + host, b"connection: close"]
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
    raw = b"".join(chunks)
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        found[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return Reply(int(status_line.split()[1]), found, payload, raw)


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A route as the gateway defines it: what a variant means once normalized."""

    method: str
    path: str
    audit: str  # the audit resource of a tool call, or the audit action of a listing

    @property
    def tool(self) -> str | None:
        return self.audit.removeprefix("tool:") if self.audit.startswith("tool:") else None


def tool(name: str) -> Route:
    return Route("POST", f"/v1/tools/{name}", f"tool:{name}")


MODELS = Route("GET", "/v1/models", "model.list")
TOOLS = Route("GET", "/v1/tools", "tool.list")


@dataclass(frozen=True)
class Case:
    id: str
    method: bytes
    target: bytes
    route: Route | None  # None: names no route, so it must be refused
    seen: str  # what this build answers, gateway / proxy
    aim: str = "kb.search"  # the tool the variant is after: its arguments are sent
    headers: tuple[tuple[bytes, bytes], ...] = ()


def post(id: str, target: str | bytes, route: Route | None, seen: str, aim: str = "") -> Any:
    raw = target.encode("utf-8") if isinstance(target, str) else target
    default_aim = route.tool if route is not None and route.tool else "kb.search"
    case = Case(id, b"POST", raw, route, seen, aim=aim or default_aim)
    return pytest.param(case, id=id)


PATH_CASES = [
    # controls
    post("plain-allowed", "/v1/tools/kb.search", tool("kb.search"), "200/200"),
    post("plain-denied", "/v1/tools/email.send", tool("email.send"), "403/403"),
    # dot segments, raw and encoded
    post("dotdot", "/v1/tools/kb.search/../email.send", None, "404/404", "email.send"),
    post("dotdot-encoded", "/v1/tools/%2e%2e/email.send", None, "404/404", "email.send"),
    post("dotdot-upper", "/v1/tools/%2E%2E/email.send", None, "404/404", "email.send"),
    post("dot-segment", "/v1/tools/./email.send", None, "404/404", "email.send"),
    post("dotdot-to-tools", "/v1/x/../tools/email.send", None, "404/404", "email.send"),
    # encoded and double-encoded slashes in the tool name
    post("slash-2F", "/v1/tools/kb.search%2F..%2Femail.send", None, "404/404", "email.send"),
    post("slash-2f-lower", "/v1/tools/kb.search%2f..%2femail.send", None, "404/404", "email.send"),
    post("slash-252F", "/v1/tools/kb.search%252F..%252Femail.send", None, "404/404", "email.send"),
    # The server decodes %2F before routing, so this one decodes to a plain tool path,
    # and routing and authorization both read that decoded path.
    post("slash-2F-prefix", "/v1/tools%2Femail.send", tool("email.send"), "403/403"),
    # doubled slashes
    post("leading-double-slash", "//v1/tools/email.send", None, "404/404", "email.send"),
    post("inner-double-slash", "/v1//tools/kb.search", None, "404/404"),
    post("tool-double-slash", "/v1/tools//email.send", None, "404/404", "email.send"),
    # case
    post("upper-prefix", "/V1/TOOLS/email.send", None, "404/404", "email.send"),
    post("upper-name", "/v1/tools/EMAIL.SEND", None, "404/404", "email.send"),
    post("mixed-name", "/v1/tools/Kb.Search", None, "404/404"),
    # path parameters
    post("param-allowed", "/v1/tools/kb.search;x=1", None, "404/404"),
    post("param-denied", "/v1/tools/email.send;.search", None, "404/404", "email.send"),
    post("param-shadow", "/v1/tools/kb.search;/../email.send", None, "404/404", "email.send"),
    # NUL, encoded and raw
    post("nul-encoded", "/v1/tools/kb.search%00", None, "404/404"),
    post("nul-encoded-denied", "/v1/tools/email.send%00.kb", None, "404/404", "email.send"),
    post("nul-raw", b"/v1/tools/kb.search\x00", None, "400/400"),
    # backslash, raw and encoded
    post("backslash", "/v1\\tools\\email.send", None, "404/404", "email.send"),
    post("backslash-5c", "/v1/tools%5cemail.send", None, "404/404", "email.send"),
    post("backslash-5C-name", "/v1/tools/kb.search%5C..%5Cemail.send", None, "404/404"),
    # trailing dot and slash: "email.send." is a well-formed name, and no tool
    post("trailing-dot", "/v1/tools/email.send.", tool("email.send."), "404/404", "email.send"),
    post("trailing-slash", "/v1/tools/kb.search/", None, "404/404"),
    post("trailing-slash-denied", "/v1/tools/email.send/", None, "404/404", "email.send"),
    # percent-encoded names decode to the one name authorization sees
    post("encoded-dot-denied", "/v1/tools/email%2Esend", tool("email.send"), "403/403"),
    post("encoded-dot-allowed", "/v1/tools/kb%2esearch", tool("kb.search"), "200/200"),
    post(
        "fully-encoded", "/v1/tools/%65%6d%61%69%6c%2e%73%65%6e%64", tool("email.send"), "403/403"
    ),
    post("bad-escape", "/v1/tools/kb.search%ff", None, "404/404"),
    post("half-escape", "/v1/tools/kb.search%", None, "404/404"),
    # encoded delimiters stay in the name
    post("encoded-query", "/v1/tools/kb.search%3F", None, "404/404"),
    post("encoded-fragment", "/v1/tools/kb.search%23", None, "404/404"),
    # homoglyphs, raw UTF-8 and percent-encoded
    post("cyrillic-e-raw", "/v1/tools/\u0435mail.send", None, "400/400", "email.send"),
    post("fullwidth-dot-raw", "/v1/tools/email\uff0esend", None, "400/400", "email.send"),
    post("cyrillic-e-encoded", "/v1/tools/%D0%B5mail.send", None, "404/404", "email.send"),
    post("fullwidth-dot-encoded", "/v1/tools/email%EF%BC%8Esend", None, "404/404", "email.send"),
    post("kelvin-k-encoded", "/v1/tools/%E2%84%AAb.search", None, "404/404"),
    # absolute-form request target: the path counts, the authority does not
    post("absolute-denied", "http://evil/v1/tools/email.send", tool("email.send"), "403/403"),
    post("absolute-allowed", "http://evil/v1/tools/kb.search", tool("kb.search"), "200/200"),
    post("absolute-userinfo", "http://a@evil/v1/tools/email.send", tool("email.send"), "403/403"),
    # queries and fragments are not part of the route
    post("query", "/v1/tools/kb.search?x=1", tool("kb.search"), "200/200"),
    post("query-dotdot", "/v1/tools/kb.search?x=/../email.send", tool("kb.search"), "200/200"),
    post("query-tool", "/v1/tools/kb.search?tool=email.send", tool("kb.search"), "200/200"),
    post("query-denied", "/v1/tools/email.send?name=kb.search", tool("email.send"), "403/403"),
    post(
        "query-encoded-fragment",
        "/v1/tools/kb.search?a=%23/../../email.send",
        tool("kb.search"),
        "200/200",
    ),
    post(
        "query-double-question", "/v1/tools/kb.search??/../email.send", tool("kb.search"), "200/200"
    ),
    post("query-raw-utf8", b"/v1/tools/kb.search?q=\xc3\xa9", None, "400/400"),
    post("fragment", "/v1/tools/kb.search#/../email.send", tool("kb.search"), "200/200"),
    # dot segments through the other prefixed route
    post("task-dotdot", "/v1/tasks/../tools/email.send", None, "404/404", "email.send"),
]


def method_case(
    id: str,
    method: str,
    target: str,
    route: Route | None,
    seen: str,
    headers: dict[str, str] | None = None,
) -> Any:
    aim = route.tool if route is not None and route.tool else "kb.search"
    pairs = tuple((k.encode(), v.encode()) for k, v in (headers or {}).items())
    case = Case(id, method.encode(), target.encode(), route, seen, aim=aim, headers=pairs)
    return pytest.param(case, id=id)


OVERRIDE_GET = {"x-http-method-override": "GET"}
METHOD_CASES = [
    # HEAD: a listing answered to HEAD (without a body) would be fine; running anything not
    method_case("head-models", "HEAD", "/v1/models", MODELS, "404/404"),
    method_case("get-models", "GET", "/v1/models", MODELS, "200/200"),
    method_case("head-tools", "HEAD", "/v1/tools", TOOLS, "404/404"),
    method_case("get-tools", "GET", "/v1/tools", TOOLS, "200/200"),
    method_case("head-tool-call", "HEAD", "/v1/tools/kb.search", None, "404/404"),
    method_case("head-denied-tool", "HEAD", "/v1/tools/email.send", None, "404/404"),
    method_case("get-tool-call", "GET", "/v1/tools/kb.search", None, "404/404"),
    # method overrides are ignored: the POST stays a POST (or is refused)
    method_case("override-get-tools", "POST", "/v1/tools", None, "404/404", OVERRIDE_GET),
    method_case("override-get-models", "POST", "/v1/models", None, "404/404", OVERRIDE_GET),
    method_case(
        "x-method-override", "POST", "/v1/models", None, "404/404", {"x-method-override": "GET"}
    ),
    method_case("x-http-method", "POST", "/v1/models", None, "404/404", {"x-http-method": "GET"}),
    method_case("query-method-models", "POST", "/v1/models?_method=GET", None, "404/404"),
    method_case("query-method-tools", "POST", "/v1/tools?_method=GET", None, "404/404"),
    method_case(
        "override-on-tool-call",
        "POST",
        "/v1/tools/kb.search",
        tool("kb.search"),
        "200/200",
        {"x-http-method-override": "DELETE"},
    ),
    method_case(
        "override-on-denied-tool",
        "POST",
        "/v1/tools/email.send",
        tool("email.send"),
        "403/403",
        OVERRIDE_GET,
    ),
    method_case(
        "override-post-on-get",
        "GET",
        "/v1/tools/kb.search",
        None,
        "404/404",
        {"x-http-method-override": "POST"},
    ),
    method_case("query-post-on-get", "GET", "/v1/tools/email.send?_method=POST", None, "404/404"),
    # method names are case-sensitive, and unknown ones route nowhere
    method_case("lowercase-post", "post", "/v1/tools/kb.search", None, "400/400"),
    method_case("mixedcase-get", "Get", "/v1/models", None, "400/400"),
    method_case("put", "PUT", "/v1/tools/kb.search", None, "404/404"),
    method_case("delete", "DELETE", "/v1/tools/email.send", None, "404/404"),
    method_case("patch", "PATCH", "/v1/tools/kb.search", None, "404/404"),
    method_case("options", "OPTIONS", "/v1/tools/kb.search", None, "404/404"),
    method_case("propfind", "PROPFIND", "/v1/tools/kb.search", None, "405/405"),
    method_case("trace", "TRACE", "/v1/tools", None, "405/405"),
    method_case("connect", "CONNECT", "/v1/tools/kb.search", None, "405/405"),
    method_case("made-up", "FROB", "/v1/tools/kb.search", None, "400/400"),
]

# Host is not part of the route: a Host that looks like a path changes nothing.
HOST_CASES = [
    method_case(
        "host-with-path", "POST", "/v1/tools/kb.search", tool("kb.search"), "200/200",
        {"host": "evil/v1/tools/email.send#"},
    ),
    method_case(
        "host-with-query", "POST", "/v1/tools/kb.search", tool("kb.search"), "200/200",
        {"host": "x/v1/tools/email.send?"},
    ),
    method_case(
        "host-userinfo", "POST", "/v1/tools/email.send", tool("email.send"), "403/403",
        {"host": "kb.search@evil"},
    ),
]  # fmt: skip


# --- the invariants ----------------------------------------------------------------------


@dataclass
class Outcome:
    reply: Reply
    ran: list[str]
    events: list[dict[str, Any]]
    forwarded: list[Seen]


def attempt(bench: Bench, case: Case, via: str, rid: str) -> Outcome:
    """Send ``case`` to the gateway (with agent-1's token) or through the proxy."""
    headers = [(RID.encode(), rid.encode()), *case.headers]
    url = bench.stack.gateway_url
    if via == "gateway":
        headers.append((b"authorization", f"Bearer {bench.token}".encode()))
    else:
        assert bench.stack.proxy_url is not None
        url = bench.stack.proxy_url
    body = b""
    if case.method in (b"POST", b"post"):
        headers.append((b"content-type", b"application/json"))
        body = json.dumps({"arguments": ARGUMENTS[case.aim]}).encode()
    host = dict(case.headers).get(b"host", b"127.0.0.1")
    headers = [h for h in headers if h[0] != b"host"]
    seen_before, ran_before = len(bench.seen), len(bench.ran)
    reply = send(url, case.method, case.target, headers, body, host=host)
    events = read_events(bench.audit_log, request_id=rid)
    forwarded = [s for s in bench.seen[seen_before:] if s.header(RID.encode()) == [rid.encode()]]
    return Outcome(reply, bench.ran[ran_before:], events, forwarded)


def check_one_reading(bench: Bench, case: Case, via: str, out: Outcome) -> None:
    route, status = case.route, out.reply.status
    table = f"{case.id} via {via}: {case.method!r} {case.target!r} -> {status}"
    assert status < 500, table
    assert status in REFUSED | {200}, table
    # Nothing the role may not call ever runs; what runs is the normalized tool.
    assert set(out.ran) <= DEMO_TOOLS, (table, out.ran)
    assert "email.send" not in out.ran, table
    if out.ran:
        assert route is not None, (table, out.ran)
        assert out.ran == [route.tool], (table, out.ran)
        assert status == 200, table
    # Authorization saw what was routed: no other resource, no other allow.
    allowed = [e for e in out.events if e["decision"] == "allow"]
    if route is None:
        assert status in REFUSED, table
        assert not out.ran, table
        assert not allowed, (table, allowed)
    elif route.tool is not None:
        assert {e["resource"] for e in out.events} <= {None, route.audit}, (table, out.events)
        # Audit before acting: a tool call is allowed twice, by its decision event (written
        # before the tool runs) and by its outcome event, both naming the normalized tool.
        decided = [("tool.call.authorized", route.audit), ("tool.call", route.audit)]
        assert all((e["action"], e["resource"]) in decided for e in allowed), (table, allowed)
        if status == 403:
            # Refused by authorization, which saw the normalized tool.
            assert route.audit in {e["resource"] for e in out.events}, (table, out.events)
        if status == 200:
            assert out.ran == [route.tool], (table, out.ran)
            assert [(e["action"], e["resource"]) for e in allowed] == decided, table
            assert route.tool in DEMO_TOOLS, table
    else:
        assert not out.ran, table
        assert all(e["resource"] is None for e in out.events), (table, out.events)
        assert all(e["action"] == route.audit for e in allowed), (table, allowed)
        if status == 200:
            assert [e["action"] for e in allowed] == [route.audit], table
    if case.method == b"HEAD":
        assert out.reply.body == b"", table
    # The agent's credential is never reflected (TRACE and friends).
    assert bench.token.encode() not in out.reply.raw, table
    if via == "proxy":
        # The proxy forwards exact route matches only, as they are, with no override.
        check_forwarded(case, out, table)


def check_forwarded(case: Case, out: Outcome, table: str) -> None:
    route = case.route
    if route is None:
        assert out.forwarded == [], (table, out.forwarded)
        return
    for seen in out.forwarded:
        assert seen.method in {route.method, case.method.decode()}, (table, seen)
        assert (seen.path, seen.raw_path) == (route.path, route.path.encode()), (table, seen)
        names = {name for name, _ in seen.headers}
        assert not names & {b"x-http-method-override", b"x-method-override", b"x-http-method"}


@pytest.mark.parametrize("via", ["gateway", "proxy"])
@pytest.mark.parametrize("case", PATH_CASES + METHOD_CASES + HOST_CASES)
def test_one_reading_of_each_request(bench: Bench, case: Case, via: str) -> None:
    rid = f"read-{case.id}-{via}"
    out = attempt(bench, case, via, rid)
    check_one_reading(bench, case, via, out)


def test_the_audit_chain_holds_after_every_variant(bench: Bench) -> None:
    # The module's gateway has seen every row of the table by now (file order); raw
    # paths, NULs and odd methods never leave a line that breaks the chain.
    report = verify_chain(bench.audit_log)
    assert report.events == len(bench.audit_log.read_bytes().splitlines())


# Regression: methods outside the list Starlette's route was given got its plain 405,
# before the gateway's endpoint: no audit event, no request id, no error envelope.
@pytest.mark.parametrize("method", ["PROPFIND", "TRACE", "CONNECT"])
def test_an_unknown_method_is_refused_and_audited_like_any_other(bench: Bench, method: str) -> None:
    rid = f"unknown-method-{method.lower()}"
    reply = send(
        bench.stack.gateway_url,
        method.encode(),
        b"/v1/tools/kb.search",
        [(RID.encode(), rid.encode()), (b"authorization", f"Bearer {bench.token}".encode())],
    )
    assert reply.status in (404, 405)
    assert reply.headers.get(RID) == rid
    envelope = json.loads(reply.body)
    assert envelope["type"] == "error"
    assert envelope["request_id"] == rid
    events = read_events(bench.audit_log, request_id=rid)
    assert [e["decision"] for e in events] == ["deny"]
