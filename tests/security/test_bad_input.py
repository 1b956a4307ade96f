"""Bad input and size: what a hostile client can send the gateway and the client proxy.

Every case runs against both servers: the gateway, with agent-1's valid bearer token, and
agent-1's client proxy, which must refuse on its own so that nothing reaches the gateway.
Framing attacks go over raw sockets, since an HTTP client library would not send them.

The invariants:

- a body over the limit is a 413 ``request_too_large``: on the declared length alone,
  before any body byte is sent, or mid-stream for a chunked body, in bounded memory;
- a request whose framing is ambiguous or broken (huge or too many headers, Content-Length
  with Transfer-Encoding, malformed chunks, duplicate lengths, slow headers) gets one 4xx
  answer or none (a timeout), never a 2xx, never two answers, and nothing is forwarded;
- a body that is not strict JSON (nesting, huge or overflowing numbers, NaN, bad UTF-8,
  lone surrogates, BOMs, other encodings, duplicate keys, non-objects, content-type and
  content-encoding lies, compression bombs) is a 400 (or 413/415), never a 500;
- the gateway audits each denial and no 5xx appears in its audit log;
- meanwhile, and afterwards, both servers keep serving ordinary requests.

The servers run in this process (``BackgroundServer``), so the resident set of the test
process bounds what they hold in memory.

Every defect this module found is fixed; the cases that found them stay in the tables.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import logging
import os
import select
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import REPO, TEST_ROLES, Stack, allow_bearer, enroll_agent

import agentzt.server
from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import CLIENT_ASSERTION_TYPE, make_assertion, read_private_key
from agentzt.proxy import create_proxy_app
from agentzt.proxy.app import MAX_BODY_BYTES as PROXY_BODY_LIMIT
from agentzt.server import BackgroundServer, bind, running, url_of

RID = "x-agentzt-request-id"
MIB = 1024 * 1024
TARGETS = ["gateway", "proxy"]
MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
TOOL = {"arguments": {"query": "vpn"}}
ROUTES = {"messages": ("/v1/messages", MESSAGE), "kb.search": ("/v1/tools/kb.search", TOOL)}
TOOL_PATH = "/v1/tools/kb.search"
TOOL_BODY = json.dumps(TOOL, separators=(",", ":")).encode()
JSON_TYPE = "content-type: application/json"
# The servers' keep-alive timeout in the slowloris bound test (see short_timeout_servers).
SHORT_TIMEOUT = 0.3
STATM = Path("/proc/self/statm")


def rid_for(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:12]}"


# --- the bench: one gateway and proxy for the module ------------------------------------


@dataclass
class Target:
    name: str
    url: str
    # What a legitimate caller adds: the bearer token at the gateway, nothing at the proxy.
    auth: dict[str, str]
    body_limit: int
    # One client for the module: making one per request costs more than the request.
    client: httpx.Client | None = None

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def auth_lines(self) -> list[str]:
        return [f"{name}: {value}" for name, value in self.auth.items()]


@dataclass
class Servers:
    stack: Stack
    targets: dict[str, Target]

    def events(self, rid: str) -> list[dict[str, Any]]:
        return read_events(self.stack.paths.audit_log, request_id=rid)

    def audit_size(self) -> int:
        return len(self.stack.paths.audit_log.read_bytes().splitlines())

    def wait_for_events(self, rid: str, timeout: float) -> list[dict[str, Any]]:
        """The gateway's events for ``rid``, once there are any, or [] after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (found := self.events(rid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return found


def bench_paths(root: Path) -> Paths:
    """The shipped configuration with demo-agent's rate limit raised, so that the hundreds
    of requests of this module never trip it (rate limits have their own suite)."""
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
    enroll_agent(paths, "agent-1", "demo-agent")
    return paths


def bearer_token(gateway_url: str, gateway: Gateway, paths: Paths) -> str:
    key = read_private_key(paths.identity_key("agent-1"))
    assertion = make_assertion(key, "agent-1", audience=gateway.token_endpoint, now=time.time())
    with httpx.Client(base_url=gateway_url, timeout=10) as client:
        response = client.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    paths = bench_paths(tmp_path_factory.mktemp("bad-input"))
    key = read_private_key(paths.identity_key("agent-1"))
    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    proxy = create_proxy_app(agent_id="agent-1", key=key, gateway_url=url_of(gateway_sock))
    with contextlib.ExitStack() as stack:
        gw = stack.enter_context(running(create_app(gateway), gateway_sock))
        px = stack.enter_context(running(proxy, bind("127.0.0.1", 0)))
        bench = Stack(paths=paths, gateway=gateway, gateway_url=gw.url, proxy_url=px.url)
        token = bearer_token(gw.url, gateway, paths)
        targets = {
            "gateway": Target(
                "gateway",
                gw.url,
                {"authorization": f"Bearer {token}"},
                gateway.max_body_bytes,
                stack.enter_context(httpx.Client(base_url=gw.url, timeout=10)),
            ),
            "proxy": Target(
                "proxy",
                px.url,
                {},
                PROXY_BODY_LIMIT,
                stack.enter_context(httpx.Client(base_url=px.url, timeout=10)),
            ),
        }
        # The proxy gets its token now, so that what it sends later is only the case.
        assert_still_serving(targets["proxy"])
        yield Servers(bench, targets)


def assert_still_serving(target: Target, route: str = "kb.search") -> None:
    """An ordinary call on ``route`` succeeds."""
    path, body = ROUTES[route]
    assert target.client is not None
    response = target.client.post(path, json=body, headers=target.auth)
    assert response.status_code == 200, response.text


# --- a raw HTTP/1.1 client --------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Raw:
    """One connection that sends bytes exactly as given and parses what comes back."""

    def __init__(self, target: Target, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(target.address, timeout=timeout)
        self.buffer = b""
        self.closed = False

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server has closed or reset the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def _fill(self, deadline: float) -> bool:
        if self.closed:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def reply(self, wait: float) -> Reply | None:
        """The next answer, or None if none arrives within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        self.buffer = rest
        while len(self.buffer) < length:
            if not self._fill(deadline):
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Reply(int(status_line.split()[1]), headers, body)

    def replies(self, wait: float, linger: float = 0.2) -> list[Reply]:
        """Every answer: the first within ``wait``, any further one within ``linger``."""
        found: list[Reply] = []
        while (answer := self.reply(wait if not found else linger)) is not None:
            found.append(answer)
        return found


def http_request(path: str, lines: Sequence[str], body: bytes = b"", method: str = "POST") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes) -> bytes:
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"


def assert_envelope(reply: Reply, statuses: set[int], error_type: str | None = None) -> None:
    """``reply`` is the Anthropic error envelope with one of ``statuses``."""
    assert reply.status in statuses, (reply.status, reply.body[:300])
    payload = json.loads(reply.body)
    assert payload["type"] == "error", payload
    if error_type is not None:
        assert payload["error"]["type"] == error_type, payload
    assert payload["request_id"] == reply.headers[RID]


def assert_denied_and_audited(servers: Servers, rid: str, status: int) -> None:
    """The gateway wrote a deny event with ``status`` for ``rid``, and no 5xx."""
    events = servers.events(rid)
    assert events, f"no audit event for {rid}"
    assert any(e["decision"] == "deny" and e["status"] == status for e in events), events
    assert all(e["status"] < 500 for e in events), events


# --- peak memory ------------------------------------------------------------------------


def _rss() -> int:
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The largest growth of this process's resident set while the block runs (0 where
    /proc is not available)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.base = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakRss:
        if STATM.exists():
            self.base = self.peak = _rss()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


needs_proc = pytest.mark.skipif(not STATM.exists(), reason="measures RSS in /proc/self/statm")


# --- size: Content-Length over the limit ------------------------------------------------

DECLARED: dict[str, Callable[[int], int]] = {
    "limit-plus-one": lambda limit: limit + 1,
    "one-terabyte": lambda limit: 10**12,
    "sixteen-digits": lambda limit: 10**16 - 1,
}


@pytest.mark.parametrize("declared", list(DECLARED), ids=list(DECLARED))
@pytest.mark.parametrize("target_name", TARGETS)
def test_declared_length_over_limit_is_413_before_the_body(
    servers: Servers, target_name: str, declared: str
) -> None:
    target = servers.targets[target_name]
    rid = rid_for("declared")
    length = DECLARED[declared](target.body_limit)
    lines = [*target.auth_lines(), JSON_TYPE, f"content-length: {length}", f"{RID}: {rid}"]
    audited = servers.audit_size()
    with Raw(target) as conn:
        # Only the headers: the answer must come on the declared length alone.
        conn.send(http_request("/v1/messages", lines))
        reply = conn.reply(wait=3)
    assert reply is not None, "no answer without the body"
    assert_envelope(reply, {413}, "request_too_large")
    if target_name == "gateway":
        assert_denied_and_audited(servers, rid, 413)
    else:
        assert servers.audit_size() == audited, "the proxy forwarded a body over its limit"
    assert_still_serving(target)


# --- size: a chunked body over the limit ------------------------------------------------


@dataclass
class Streamed:
    reply: Reply | None = None
    sent: int = 0
    # Bytes sent when the answer was first seen (None: no answer while sending).
    sent_at_reply: int | None = None


def stream_chunked(target: Target, rid: str, total: int, after_reply: int) -> Streamed:
    """POST a chunked body of ``total`` bytes, reading while sending; once the answer has
    come, send at most ``after_reply`` more bytes, stopping when the server refuses them."""
    frame_data = b" " * 65536
    frame = b"%x\r\n" % len(frame_data) + frame_data + b"\r\n"
    lines = [*target.auth_lines(), JSON_TYPE, "transfer-encoding: chunked", f"{RID}: {rid}"]
    out = Streamed()
    with Raw(target, timeout=2) as conn:
        conn.send(http_request("/v1/messages", lines))
        while out.sent < total:
            if out.reply is None and select.select([conn.sock], [], [], 0)[0]:
                out.reply = conn.reply(wait=2)
                out.sent_at_reply = out.sent
            if out.sent_at_reply is not None and out.sent - out.sent_at_reply >= after_reply:
                break
            try:
                conn.sock.settimeout(1)
                conn.sock.sendall(frame)
            except OSError:  # closed, reset, or no longer read from for a second
                if out.sent_at_reply is None:
                    # The server answered and closed (413 with connection: close) while
                    # the body was still being sent: that is mid-stream.
                    out.sent_at_reply = out.sent
                break
            out.sent += len(frame_data)
        if out.reply is None:
            out.reply = conn.reply(wait=3)
    return out


@needs_proc
@pytest.mark.parametrize("target_name", TARGETS)
def test_chunked_body_over_limit_is_413_mid_stream_in_bounded_memory(
    servers: Servers, target_name: str
) -> None:
    target = servers.targets[target_name]
    rid = rid_for("chunked")
    total = max(50 * MIB, 4 * target.body_limit)
    audited = servers.audit_size()
    with PeakRss() as rss:
        out = stream_chunked(target, rid, total, after_reply=total)
    assert out.reply is not None, "no answer to a body over the limit"
    assert_envelope(out.reply, {413}, "request_too_large")
    # Mid-stream: the answer came while the client was still sending, about one limit in
    # (socket buffers on either side hold a few MB more).
    assert out.sent_at_reply is not None, "answered only after the whole body"
    assert out.sent_at_reply < target.body_limit + 16 * MIB, out.sent_at_reply
    # Bounded: the servers held at most about one limit, not the body.
    assert rss.growth < min(total // 2, target.body_limit + 32 * MIB), (rss.growth, total)
    if target_name == "gateway":
        assert_denied_and_audited(servers, rid, 413)
    else:
        assert servers.audit_size() == audited, "the proxy forwarded a body over its limit"
    assert_still_serving(target)


STOP_READING_BUG = (
    "BUG: after a 413 the connection stays open (no 'connection: close') and the server "
    "keeps reading and discarding the rest of the body: 64 MiB more are accepted after "
    "the answer, and a chunked body never ends"
)


@pytest.mark.parametrize("how", ["declared-length", "chunked"])
@pytest.mark.parametrize("target_name", TARGETS)
def test_server_stops_reading_after_413(servers: Servers, target_name: str, how: str) -> None:
    target = servers.targets[target_name]
    rid = rid_for("stop-reading")
    more = 64 * MIB
    if how == "chunked":
        out = stream_chunked(target, rid, target.body_limit + 2 * more, after_reply=more)
        assert out.reply is not None and out.reply.status == 413
        assert out.sent_at_reply is not None
        accepted = out.sent - out.sent_at_reply
    else:
        lines = [*target.auth_lines(), JSON_TYPE, f"content-length: {10**12}", f"{RID}: {rid}"]
        accepted = 0
        with Raw(target, timeout=1) as conn:
            conn.send(http_request("/v1/messages", lines))
            reply = conn.reply(wait=3)
            assert reply is not None and reply.status == 413
            data = b" " * 65536
            with contextlib.suppress(OSError):
                while accepted < more:
                    conn.sock.sendall(data)
                    accepted += len(data)
    # Kernel buffers take a few MB before the client notices a close; not 64 MiB.
    assert accepted < 16 * MIB, f"{accepted} bytes read after the 413"


# --- framing: headers, lengths, chunks --------------------------------------------------


@dataclass(frozen=True)
class Framing:
    id: str
    lines: tuple[str, ...]
    body: bytes
    # The server may also just wait (for a body it was promised): no answer is fine.
    may_wait: bool = False
    # The request reaches the app and then breaks off mid-body (see the audit test below).
    breaks_body: bool = False
    bug: str | None = None


HEADER_SIZE_BUG = (
    "BUG: uvicorn runs the httptools parser (httptools is installed), which has no header "
    "size limit; server.py's h11_max_incomplete_event_size applies only to h11. A 64 KiB "
    "header line or 10,000 headers (1 MB ones too) are accepted and answered 200"
)
SMUGGLED = http_request(TOOL_PATH, ["authorization: Bearer x", f"{RID}: smuggled"], method="GET")
FRAMING = [
    Framing(
        "header-line-64k",
        (f"content-length: {len(TOOL_BODY)}", "x-pad: " + "a" * 65536),
        TOOL_BODY,
        bug=HEADER_SIZE_BUG,
    ),
    Framing(
        "headers-10000",
        (f"content-length: {len(TOOL_BODY)}", *(f"x-h{i}: v" for i in range(10_000))),
        TOOL_BODY,
        bug=HEADER_SIZE_BUG,
    ),
    Framing(
        "content-length-and-chunked",
        ("content-length: 4", "transfer-encoding: chunked"),
        chunked(TOOL_BODY),
    ),
    Framing(
        "chunked-and-content-length",
        ("transfer-encoding: chunked", f"content-length: {len(chunked(TOOL_BODY))}"),
        chunked(TOOL_BODY),
    ),
    Framing(
        # CL.TE: a server reading the length would take a second request from the body.
        "smuggle-behind-content-length",
        ("content-length: 5", "transfer-encoding: chunked"),
        b"0\r\n\r\n" + SMUGGLED,
    ),
    Framing(
        "chunked-then-identity",
        ("transfer-encoding: chunked, identity",),
        chunked(TOOL_BODY),
    ),
    Framing(
        "chunked-with-space-before-colon", ("transfer-encoding : chunked",), chunked(TOOL_BODY)
    ),
    Framing(
        # The parser admits the headers, then refuses the body it cannot frame.
        "transfer-encoding-gzip-only",
        ("transfer-encoding: gzip",),
        TOOL_BODY,
        breaks_body=True,
    ),
    Framing(
        "duplicate-content-length",
        (f"content-length: {len(TOOL_BODY)}", "content-length: 5"),
        TOOL_BODY,
    ),
    Framing("content-length-list", (f"content-length: {len(TOOL_BODY)}, 5",), TOOL_BODY),
    Framing("content-length-negative", ("content-length: -1",), TOOL_BODY),
    Framing("content-length-plus-sign", (f"content-length: +{len(TOOL_BODY)}",), TOOL_BODY),
    Framing("content-length-hex", ("content-length: 0x1d",), TOOL_BODY),
    Framing("content-length-past-64-bits", ("content-length: " + "9" * 20,), TOOL_BODY),
    Framing(
        "chunk-size-zz",
        ("transfer-encoding: chunked",),
        b"zz\r\n" + TOOL_BODY + b"\r\n0\r\n\r\n",
        breaks_body=True,
    ),
    Framing(
        "chunk-size-negative",
        ("transfer-encoding: chunked",),
        b"-1\r\n" + TOOL_BODY + b"\r\n0\r\n\r\n",
        breaks_body=True,
    ),
    Framing(
        "chunk-size-past-64-bits",
        ("transfer-encoding: chunked",),
        b"f" * 20 + b"\r\n" + TOOL_BODY + b"\r\n0\r\n\r\n",
        breaks_body=True,
    ),
    Framing(
        # 2**64 - 1 parses; the server then waits for that much body (or 413s at the limit).
        "chunk-size-2-to-64-minus-1",
        ("transfer-encoding: chunked",),
        b"f" * 16 + b"\r\n" + TOOL_BODY + b"\r\n0\r\n\r\n",
        may_wait=True,
        breaks_body=True,
    ),
    Framing(
        "chunk-without-crlf-after-data",
        ("transfer-encoding: chunked",),
        b"%x\r\n" % len(TOOL_BODY) + TOOL_BODY + b"0\r\n\r\n",
        breaks_body=True,
    ),
    Framing(
        "chunk-lines-with-bare-lf",
        ("transfer-encoding: chunked",),
        b"%x\n" % len(TOOL_BODY) + TOOL_BODY + b"\n0\n\n",
        breaks_body=True,
    ),
]
BROKEN_BODY = "broken-body"


def framing_rid(case: Framing) -> str:
    # Requests that break off mid-body share a prefix: the final audit sweep knows them.
    return rid_for(BROKEN_BODY if case.breaks_body else "framing")


def send_framing(target: Target, case: Framing, rid: str) -> tuple[list[Reply], bool]:
    lines = [*target.auth_lines(), JSON_TYPE, f"{RID}: {rid}", *case.lines]
    with Raw(target, timeout=2) as conn:
        conn.send(http_request(TOOL_PATH, lines, case.body))
        replies = conn.replies(wait=0.3 if case.may_wait else 3)
        return replies, conn.closed


def framing_params() -> list[Any]:
    return [
        pytest.param(
            target,
            case,
            id=f"{target}-{case.id}",
            marks=[],
        )
        for target in TARGETS
        for case in FRAMING
    ]


@pytest.mark.parametrize(("target_name", "case"), framing_params())
def test_bad_framing_gets_one_4xx_or_none(
    servers: Servers, target_name: str, case: Framing
) -> None:
    target = servers.targets[target_name]
    rid = framing_rid(case)
    replies, closed = send_framing(target, case, rid)
    assert len(replies) <= 1, f"one request answered {len(replies)} times"
    for reply in replies:
        assert 400 <= reply.status < 500, (reply.status, reply.body[:200])
    if not case.may_wait:
        assert replies or closed, "neither answered nor closed"
    # Nothing was allowed, at the gateway or through the proxy, and nothing was smuggled.
    assert all(e["decision"] == "deny" for e in servers.events(rid))
    if target_name == "proxy":
        assert servers.events(rid) == [], "the proxy forwarded a request it could not frame"
    assert servers.events("smuggled") == []
    assert_still_serving(target)


BROKEN_BODY_BUG = (
    "BUG: a client that breaks the body off (malformed chunk, or closing mid-body) makes "
    "read_body raise starlette's ClientDisconnect; the gateway audits it as 'internal "
    "error: ClientDisconnect' with status 500 and logs a traceback"
)


@pytest.mark.parametrize(
    "case",
    [
        *(pytest.param(case, id=case.id) for case in FRAMING if case.breaks_body),
        pytest.param(
            Framing(
                "closed-mid-body",
                (f"content-length: {len(TOOL_BODY)}",),
                TOOL_BODY[:10],
                may_wait=True,
                breaks_body=True,
            ),
            id="closed-mid-body",
        ),
    ],
)
def test_broken_body_is_audited_as_a_denial_not_a_500(servers: Servers, case: Framing) -> None:
    rid = framing_rid(case)
    send_framing(servers.targets["gateway"], case, rid)
    # The deny event is written once the server has seen the broken framing, which can
    # be after send_framing returns; a generous wait costs nothing when it is there.
    events = servers.wait_for_events(rid, timeout=10)
    assert events, "no audit event for an authenticated request"
    assert all(e["decision"] == "deny" for e in events), events
    assert all(e["status"] < 500 for e in events), [(e["status"], e["reason"]) for e in events]


class Records(logging.Handler):
    """Keeps the ERROR records logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_proxy_handles_a_broken_body_without_an_unhandled_error(servers: Servers) -> None:
    case = next(c for c in FRAMING if c.id == "chunk-size-zz")
    uvicorn_errors = logging.getLogger("uvicorn.error")
    handler = Records()
    uvicorn_errors.addHandler(handler)
    try:
        replies, _ = send_framing(servers.targets["proxy"], case, rid_for(BROKEN_BODY))
        assert [r.status for r in replies] == [400]
        deadline = time.monotonic() + 1
        while not handler.records and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        uvicorn_errors.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=case.id)
        for case in FRAMING
        if case.id
        in {"content-length-and-chunked", "duplicate-content-length", "chunked-then-identity"}
    ],
)
def test_request_refused_by_the_http_parser_never_reaches_the_app(
    servers: Servers, case: Framing
) -> None:
    """Ambiguous framing is refused by the HTTP parser itself (a plain 400) before the
    app runs: nothing is executed, and (a known limit, in the note on issue 8) nothing is
    audited either, since the gateway never sees the request."""
    audited = servers.audit_size()
    rid = framing_rid(case)
    replies, _ = send_framing(servers.targets["gateway"], case, rid)
    assert [r.status for r in replies] == [400]
    assert not servers.wait_for_events(rid, timeout=0.3)
    assert servers.audit_size() == audited


# --- slow headers (slowloris) -----------------------------------------------------------


def slow_request(target: Target, rid: str) -> bytes:
    """A request whose headers would take minutes to finish at one byte per tick."""
    lines = [f"{RID}: {rid}", *target.auth_lines(), JSON_TYPE, "x-pad: " + "a" * 4096]
    return http_request(TOOL_PATH, lines).removesuffix(b"\r\n\r\n")


def dribble(conns: list[Raw], payload: bytes, interval: float, duration: float) -> list[str]:
    """Send ``payload`` one byte per connection every ``interval`` s for ``duration`` s.

    Returns what each connection ended in: "open", "closed" or "answered <status>".
    """
    state = ["open"] * len(conns)
    deadline = time.monotonic() + duration
    position = 0
    while time.monotonic() < deadline:
        for i, conn in enumerate(conns):
            if state[i] != "open":
                continue
            if select.select([conn.sock], [], [], 0)[0]:
                reply = conn.reply(wait=0.5)
                state[i] = f"answered {reply.status}" if reply is not None else "closed"
            elif position < len(payload) and not conn.send(payload[position : position + 1]):
                state[i] = "closed"
        position += 1
        if all(s != "open" for s in state):
            break
        time.sleep(interval)
    return state


@pytest.mark.parametrize("target_name", TARGETS)
def test_slow_headers_do_not_stop_other_clients(servers: Servers, target_name: str) -> None:
    target = servers.targets[target_name]
    rid = rid_for("slowloris")
    states: list[str] = []
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(Raw(target)) for _ in range(20)]
        slow = threading.Thread(
            target=lambda: states.extend(dribble(conns, slow_request(target, rid), 0.2, 0.6))
        )
        slow.start()
        try:
            # Meanwhile an ordinary client is served promptly, three times over.
            for _ in range(3):
                started = time.monotonic()
                assert_still_serving(target)
                # Loose on purpose (a loaded CI machine): a server held by the slow
                # clients would not answer until they finished, seconds later.
                assert time.monotonic() - started < 3.0
                time.sleep(0.1)
        finally:
            slow.join()
    assert len(states) == len(conns)
    assert not [s for s in states if s.startswith("answered 2")], states
    assert servers.events(rid) == [], "a request with unfinished headers reached the gateway"


@pytest.fixture(scope="module")
def short_timeout_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Target]]:
    """A gateway and a proxy run with the shipped server options, except a keep-alive
    timeout of SHORT_TIMEOUT seconds: server.py names that timeout as the bound on what a
    slow client can make the server hold, and 30 s is too long to wait for in a test."""
    paths = bench_paths(tmp_path_factory.mktemp("short-timeout"))
    key = read_private_key(paths.identity_key("agent-1"))
    shipped = agentzt.server._config

    def short(app: Any, tls: Any = None, **overrides: Any) -> Any:
        return shipped(
            app,
            tls,
            header_timeout=SHORT_TIMEOUT,
            **{"timeout_keep_alive": SHORT_TIMEOUT, **overrides},
        )

    gateway_sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(gateway_sock))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agentzt.server, "_config", short)
        gw = BackgroundServer(create_app(gateway), gateway_sock)
        px = BackgroundServer(
            create_proxy_app(agent_id="agent-1", key=key, gateway_url=gw.url),
            bind("127.0.0.1", 0),
        )
    gw.start()
    try:
        px.start()
        try:
            yield {
                "gateway": Target("gateway", gw.url, {}, gateway.max_body_bytes),
                "proxy": Target("proxy", px.url, {}, PROXY_BODY_LIMIT),
            }
        finally:
            px.stop()
    finally:
        gw.stop()


def test_short_timeout_bench_closes_idle_keep_alive_connections(
    short_timeout_servers: dict[str, Target],
) -> None:
    """The bench is sound: the short timeout is in force once a request has been answered,
    so the test below measures the header phase, not the setting."""
    target = short_timeout_servers["gateway"]
    with Raw(target) as conn:
        conn.send(http_request("/healthz", [], method="GET"))
        reply = conn.reply(wait=2)
        assert reply is not None and reply.status == 200
        started = time.monotonic()
        assert conn.reply(wait=10 * SHORT_TIMEOUT) is None
        assert conn.closed
        # Well under the shipped keep-alive timeout, with room for a loaded machine.
        assert time.monotonic() - started < 10 * SHORT_TIMEOUT


@pytest.mark.parametrize(
    ("target_name", "payload"),
    [
        pytest.param("gateway", True, id="gateway-slow-headers"),
        pytest.param("proxy", True, id="proxy-slow-headers"),
        pytest.param("gateway", False, id="gateway-idle-connection"),
    ],
)
def test_slow_headers_are_cut_off_within_a_bounded_time(
    short_timeout_servers: dict[str, Target], target_name: str, payload: bool
) -> None:
    target = short_timeout_servers[target_name]
    with Raw(target) as conn:
        data = slow_request(target, rid_for("slowloris")) if payload else b""
        # A byte every 0.2 s: the server must close or answer (408) within ten times its
        # timeout (a loaded machine may check late); one ignoring it holds on for minutes.
        [state] = dribble([conn], data, 0.2, 10 * SHORT_TIMEOUT)
    assert state == "closed" or state.startswith("answered 4"), state


# --- JSON bodies ------------------------------------------------------------------------


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def with_number(route: str, literal: bytes) -> bytes:
    """A valid body for ``route`` with ``literal`` where it takes a number."""
    if route == "messages":
        return dumps(MESSAGE)[:-1] + b',"temperature":' + literal + b"}"
    return b'{"arguments":{"query":"vpn","top_k":' + literal + b"}}"


def with_string(route: str, literal: bytes) -> bytes:
    """A valid body for ``route`` with the JSON string ``literal`` as the text it reads."""
    if route == "messages":
        return (
            b'{"model":"claude-sonnet-4-6","max_tokens":16,'
            b'"messages":[{"role":"user","content":' + literal + b"}]}"
        )
    return b'{"arguments":{"query":' + literal + b"}}"


def with_value(route: str, literal: bytes) -> bytes:
    """A valid body for ``route`` with the JSON value ``literal`` in a free-form field."""
    if route == "messages":
        return dumps(MESSAGE)[:-1] + b',"metadata":' + literal + b"}"
    return b'{"arguments":{"query":' + literal + b"}}"


def valid(route: str) -> bytes:
    return dumps(ROUTES[route][1])


@functools.cache
def gzip_member() -> bytes:
    return gzip.compress(b"\0" * MIB, 9, mtime=0)


def gzip_bomb(route: str) -> bytes:
    """About 0.9 MB of gzip (concatenated members, RFC 1952) inflating to 900 MiB."""
    return gzip_member() * 900


@functools.cache
def gzip_in_gzip_bomb(route: str) -> bytes:
    """About 10 KB that inflates to 4 MB of gzip, which inflates to 4 GiB."""
    return gzip.compress(gzip_member() * 4096, 9, mtime=0)


@functools.cache
def deflate_bomb(route: str) -> bytes:
    """About 0.9 MB of zlib-wrapped deflate (RFC 1950) inflating to 900 MiB of zeros.

    Each MiB of zeros, compressed after a full flush, is the same bytes; the checksum
    of n zeros is (n mod 65521) << 16 | 1.
    """
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = b"\0" * MIB
    first = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    again = squeeze.compress(zeros) + squeeze.flush(zlib.Z_FULL_FLUSH)
    total = 900 * MIB
    adler = ((total % 65521) << 16) | 1
    return b"\x78\xda" + first + again * 899 + squeeze.flush() + adler.to_bytes(4, "big")


def brotli_stored(route: str) -> bytes:
    """The valid body as a brotli stream (RFC 7932) of one uncompressed meta-block."""
    data = valid(route)
    # WBITS=16 (0), ISLAST=0, MNIBBLES=4 (00), MLEN-1 (16 bits), ISUNCOMPRESSED=1.
    header = ((len(data) - 1) << 4) | (1 << 20)
    return header.to_bytes(3, "little") + data + b"\x03"  # ISLAST, ISLASTEMPTY


JSON_TYPE_HEADER = (("content-type", "application/json"),)


@dataclass(frozen=True)
class Body:
    id: str
    build: Callable[[str], bytes]
    headers: tuple[tuple[str, str], ...] = JSON_TYPE_HEADER
    # route ("messages", "kb.search" or "*") -> the defect that lets this case through
    bugs: tuple[tuple[str, str], ...] = ()

    def bug(self, route: str) -> str | None:
        return dict(self.bugs).get(route) or dict(self.bugs).get("*")


INF_BUG = (
    "BUG: a number whose exponent overflows (1e999999) parses to float('inf'), so "
    "Infinity reaches the model request (temperature) past the NaN/Infinity check; the "
    "passthrough upstream would be sent the non-JSON token Infinity"
)
LONG_FLOAT_BUG = (
    "BUG: a 5,000-digit number with a fraction is accepted (rounded to a float); only "
    "integers hit Python's 4300-digit limit"
)
DUPLICATE_BUG = (
    "BUG: duplicate keys are accepted and the last one wins: "
    '{"model":"claude-opus-4-8",...,"model":"claude-sonnet-4-6"} is authorized as sonnet, '
    "while a parser that keeps the first key reads opus from the same bytes"
)
CONTENT_TYPE_BUG = (
    "BUG: the body is parsed as JSON whatever the content-type says; text/plain, form and "
    "no content-type are CORS simple requests, so any web page can make the proxy attach "
    "the agent's token to a call (CSRF)"
)


def deep_arrays(route: str) -> bytes:
    return with_value(route, b"[" * 100_000 + b"]" * 100_000)


def deep_objects(route: str) -> bytes:
    return with_value(route, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)


def duplicate_keys(route: str) -> bytes:
    if route == "messages":
        return b'{"model":"claude-opus-4-8",' + valid(route)[1:]
    return b'{"arguments":{"query":"payroll"},' + valid(route)[1:]


BODIES = [
    Body("nested-100k-arrays", deep_arrays),
    Body("nested-100k-objects", deep_objects),
    Body("int-5000-digits", lambda r: with_number(r, b"9" * 5000)),
    Body("negative-int-5000-digits", lambda r: with_number(r, b"-" + b"9" * 5000)),
    Body(
        "fraction-5000-digits",
        lambda r: with_number(r, b"0." + b"5" * 5000 if r == "messages" else b"1." + b"0" * 5000),
        bugs=(("*", LONG_FLOAT_BUG),),
    ),
    Body(
        "exponent-1e999999",
        lambda r: with_number(r, b"1e999999"),
        bugs=(("messages", INF_BUG),),
    ),
    Body(
        "exponent-minus-1e999999",
        lambda r: with_number(r, b"-1e999999"),
        bugs=(("messages", INF_BUG),),
    ),
    Body(
        "exponent-5000-digits",
        lambda r: with_number(r, b"1e" + b"9" * 5000),
        bugs=(("messages", INF_BUG),),
    ),
    Body("nan", lambda r: with_number(r, b"NaN")),
    Body("infinity", lambda r: with_number(r, b"Infinity")),
    Body("minus-infinity", lambda r: with_number(r, b"-Infinity")),
    Body("invalid-utf8", lambda r: with_string(r, b'"\xff\xfe"')),
    Body("overlong-utf8", lambda r: with_string(r, b'"\xc0\xaf"')),
    Body("utf8-encoded-surrogate", lambda r: with_string(r, b'"\xed\xa0\x80"')),
    Body("lone-high-surrogate", lambda r: with_string(r, b'"\\ud800"')),
    Body("lone-low-surrogate", lambda r: with_string(r, b'"\\udc00"')),
    Body("lone-surrogate-key", lambda r: valid(r)[:-1] + b',"\\ud800":1}'),
    Body("utf8-bom", lambda r: b"\xef\xbb\xbf" + valid(r)),
    Body("utf16-with-bom", lambda r: valid(r).decode().encode("utf-16")),
    Body("utf16be-without-bom", lambda r: valid(r).decode().encode("utf-16-be")),
    Body("utf32", lambda r: valid(r).decode().encode("utf-32")),
    Body("duplicate-keys", duplicate_keys, bugs=(("*", DUPLICATE_BUG),)),
    Body("top-level-array", lambda r: b"[" + valid(r) + b"]"),
    Body("top-level-string", lambda r: b'"hi"'),
    Body("top-level-number", lambda r: b"1"),
    Body("top-level-null", lambda r: b"null"),
    Body("top-level-true", lambda r: b"true"),
    Body("empty", lambda r: b""),
    Body("whitespace-only", lambda r: b" \r\n\t "),
    Body("trailing-garbage", lambda r: valid(r) + b"x"),
    Body("two-objects", lambda r: valid(r) + valid(r)),
    Body(
        "content-type-text-plain",
        valid,
        (("content-type", "text/plain"),),
        bugs=(("*", CONTENT_TYPE_BUG),),
    ),
    Body(
        "content-type-form",
        valid,
        (("content-type", "application/x-www-form-urlencoded"),),
        bugs=(("*", CONTENT_TYPE_BUG),),
    ),
    Body("content-type-missing", valid, (), bugs=(("*", CONTENT_TYPE_BUG),)),
    Body("gzip-bomb-900mib", gzip_bomb, (*JSON_TYPE_HEADER, ("content-encoding", "gzip"))),
    Body(
        "gzip-in-gzip-bomb-4gib",
        gzip_in_gzip_bomb,
        (*JSON_TYPE_HEADER, ("content-encoding", "gzip, gzip")),
    ),
    Body("deflate-bomb-900mib", deflate_bomb, (*JSON_TYPE_HEADER, ("content-encoding", "deflate"))),
    Body(
        "gzip-encoded-valid-json",
        lambda r: gzip.compress(valid(r), mtime=0),
        (*JSON_TYPE_HEADER, ("content-encoding", "gzip")),
    ),
    Body(
        "deflate-encoded-valid-json",
        lambda r: zlib.compress(valid(r)),
        (*JSON_TYPE_HEADER, ("content-encoding", "deflate")),
    ),
    Body(
        "br-encoded-valid-json",
        brotli_stored,
        (*JSON_TYPE_HEADER, ("content-encoding", "br")),
    ),
]


def body_params() -> list[Any]:
    params = []
    for target in TARGETS:
        for route in ROUTES:
            for case in BODIES:
                marks: list[pytest.MarkDecorator] = []
                params.append(
                    pytest.param(target, route, case, id=f"{target}-{route}-{case.id}", marks=marks)
                )
    return params


@pytest.mark.parametrize(("target_name", "route", "case"), body_params())
def test_bad_json_body_is_400(servers: Servers, target_name: str, route: str, case: Body) -> None:
    target = servers.targets[target_name]
    rid = rid_for("body")
    body = case.build(route)
    # httpx adds no content-type to raw content, so the case's headers are all there is.
    headers = {**target.auth, **dict(case.headers), RID: rid}
    assert target.client is not None
    with PeakRss() as rss:
        response = target.client.post(ROUTES[route][0], content=body, headers=headers)
    reply = Reply(response.status_code, dict(response.headers), response.content)
    assert_envelope(reply, {400, 413, 415})
    # Nothing was inflated or expanded: a bomb would take hundreds of MB.
    assert rss.growth < 64 * MIB, rss.growth
    if target_name == "gateway":
        assert_denied_and_audited(servers, rid, reply.status)
    else:
        # Refused at the proxy, or forwarded and denied at the gateway: never allowed.
        events = servers.events(rid)
        assert all(e["decision"] == "deny" and e["status"] < 500 for e in events), events
    assert_still_serving(target, route)


# --- the sweep --------------------------------------------------------------------------


def test_no_5xx_in_the_gateway_audit_log(servers: Servers) -> None:
    """After everything above: no 5xx in the log, except the requests that broke their
    body off, which test_broken_body_is_audited_as_a_denial_not_a_500 holds as a bug."""
    events = read_events(servers.stack.paths.audit_log)
    assert events
    server_errors = [
        (e["request_id"], e["status"], e["reason"])
        for e in events
        if e["status"] >= 500 and not e["request_id"].startswith(f"{BROKEN_BODY}-")
    ]
    assert server_errors == []
