"""The bare pass-through chain: a fixed-answer upstream and a proxy with no security, on
the same server stack as agentzt, with a choice of HTTP client for the proxy's hop.

    python -m agentzt.bench.bare upstream --port P          (answers stream: true with SSE)
    python -m agentzt.bench.bare proxy --port P --upstream URL --client aiohttp|httpx
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentzt.gateway.mock_upstream import stream_events
from agentzt.server import bind, serve_forever
from agentzt.sse import encode

ANSWER = (
    b'{"id":"msg_bare","type":"message","role":"assistant","model":"claude-sonnet-4-6",'
    b'"content":[{"type":"text","text":"bare"}],"stop_reason":"end_turn",'
    b'"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}'
)


def upstream_app() -> Starlette:
    stream = b"".join(
        encode(name, data) for name, data in stream_events(json.loads(ANSWER.decode()))
    )

    async def messages(request: Request) -> Response:
        body = await request.body()
        if b'"stream":true' in body.replace(b" ", b""):
            return Response(stream, media_type="text/event-stream")
        return Response(ANSWER, media_type="application/json")

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


def proxy_app(upstream: str, client: str) -> Starlette:
    state: dict[str, Any] = {}

    async def via_aiohttp(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with state["http"].post(f"{upstream}/v1/messages", data=body, headers=headers) as r:
            return r.status, await r.read()

    async def via_httpx(body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        r = await state["http"].post(f"{upstream}/v1/messages", content=body, headers=headers)
        return r.status_code, r.content

    send = via_aiohttp if client == "aiohttp" else via_httpx

    async def messages(request: Request) -> Response:
        body = await request.body()
        status, payload = await send(body, {"content-type": "application/json"})
        return Response(payload, status_code=status, media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client == "aiohttp":
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
                state["http"] = http
                yield
        else:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
            async with httpx.AsyncClient(limits=limits) as http:
                state["http"] = http
                yield

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["upstream", "proxy"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp")
    args = parser.parse_args()
    app = upstream_app() if args.role == "upstream" else proxy_app(args.upstream, args.client)
    serve_forever(app, bind("127.0.0.1", args.port))


if __name__ == "__main__":
    main()
