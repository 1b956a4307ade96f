"""A fake Anthropic Messages API: a real HTTP server on a loopback port for passthrough tests.

It records every request (headers and JSON body) and answers with what the test
scripted: a whole message, a stream of events (optionally slow, cut midway, or endless),
an error status, or a delay longer than the gateway's timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentzt.gateway import mock_upstream
from agentzt.server import BackgroundServer, bind
from agentzt.sse import encode

ENTERPRISE_KEY = "sk-ant-enterprise-0123456789abcdefghijklmnop"


@dataclass
class Script:
    """What the next answers look like; tests change it between calls."""

    # A whole answer for non-streamed calls; None means "mock_upstream.message(body)".
    message: dict[str, Any] | None = None
    # Events for streamed calls; None means the mock's stream of the answer above.
    events: list[tuple[str, dict[str, Any]]] | None = None
    # Seconds to wait before each event (a slow model).
    event_delay: float = 0.0
    # Stop sending after this many events and drop the connection.
    cut_after: int | None = None
    # Keep streaming pings forever (to see the gateway hang up).
    endless: bool = False
    # Answer with this status and an Anthropic error body instead.
    status: int = 200
    error_type: str = "api_error"
    error_message: str = "upstream error"
    retry_after: str | None = None
    # Sleep this long before answering at all (to trip the gateway's timeout).
    delay: float = 0.0


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeAnthropic:
    url: str
    script: Script = field(default_factory=Script)
    seen: list[Seen] = field(default_factory=list)
    # Set when a streamed answer's client went away before the stream ended.
    disconnected: asyncio.Event | None = None
    stream_closed: list[str] = field(default_factory=list)


def _app(fake: FakeAnthropic) -> Starlette:
    async def messages(request: Request) -> Response:
        body = json.loads(await request.body())
        fake.seen.append(Seen(request.url.path, dict(request.headers), body))
        script = fake.script
        if script.delay:
            await asyncio.sleep(script.delay)
        if script.status != 200:
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            return JSONResponse(
                {
                    "type": "error",
                    "error": {"type": script.error_type, "message": script.error_message},
                },
                status_code=script.status,
                headers=headers,
            )
        if request.url.path.endswith("/count_tokens"):
            return JSONResponse({"input_tokens": mock_upstream.estimate_tokens(body)})
        answer = script.message or mock_upstream.message(body)
        if not body.get("stream"):
            return JSONResponse(answer)
        events = script.events or mock_upstream.stream_events(answer)
        return StreamingResponse(_stream(fake, events), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/messages/count_tokens", messages, methods=["POST"]),
        ]
    )


async def _stream(
    fake: FakeAnthropic, events: list[tuple[str, dict[str, Any]]]
) -> AsyncIterator[bytes]:
    script = fake.script
    sent = 0
    if script.endless:
        # A model that never finishes: no message_delta or message_stop, pings forever.
        events = [e for e in events if e[0] not in ("message_delta", "message_stop")]
    try:
        for name, data in events:
            if script.cut_after is not None and sent >= script.cut_after:
                # Abort the connection mid-stream, as a crashed upstream would.
                raise ConnectionResetError("fake upstream cut the stream")
            if script.event_delay:
                await asyncio.sleep(script.event_delay)
            yield encode(name, data)
            sent += 1
        while script.endless:
            await asyncio.sleep(0.02)
            yield encode("ping", {"type": "ping"})
        fake.stream_closed.append("completed")
    except (asyncio.CancelledError, GeneratorExit):
        fake.stream_closed.append("client_gone")
        raise


@contextmanager
def fake_anthropic() -> Iterator[FakeAnthropic]:
    sock = bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    fake = FakeAnthropic(url=f"http://{host}:{port}")
    server = BackgroundServer(_app(fake), sock).start()
    try:
        yield fake
    finally:
        server.stop()


def refused_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def passthrough_stack(
    paths: Any, upstream_url: str, *, timeout: float = 30.0, connect_timeout: float = 5.0
) -> Iterator[Any]:
    """Gateway (upstream mode passthrough to ``upstream_url``, the enterprise key in its
    environment) plus a client proxy for agent-1 (demo-agent), on loopback ports."""
    import dataclasses

    from conftest import Stack, enroll_agent

    from agentzt.config import UpstreamSettings, load_gateway_settings
    from agentzt.gateway import Gateway, create_app
    from agentzt.identity import read_private_key
    from agentzt.proxy import create_proxy_app
    from agentzt.server import url_of

    if not paths.agents_toml.exists() or "agent-1" not in paths.agents_toml.read_text():
        enroll_agent(paths, "agent-1", "demo-agent")
    settings = dataclasses.replace(
        load_gateway_settings(paths.gateway_toml),
        upstream=UpstreamSettings(
            mode="passthrough",
            base_url=upstream_url,
            timeout_seconds=timeout,
            connect_timeout_seconds=connect_timeout,
        ),
    )
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(
        paths,
        public_url=url_of(sock),
        settings=settings,
        env={"ANTHROPIC_API_KEY": ENTERPRISE_KEY},
    )
    gw_server = BackgroundServer(create_app(gateway), sock).start()
    key = read_private_key(paths.identity_key("agent-1"))
    proxy = create_proxy_app(agent_id="agent-1", key=key, gateway_url=gw_server.url)
    px_server = BackgroundServer(proxy, bind("127.0.0.1", 0)).start()
    try:
        yield Stack(
            paths=paths, gateway=gateway, gateway_url=gw_server.url, proxy_url=px_server.url
        )
    finally:
        px_server.stop()
        gw_server.stop()
