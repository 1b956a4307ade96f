"""The client proxy: the agent's only door to models and tools.

It accepts the agent's calls without credentials, drops any it sends anyway, attaches
the agent's access token and a request id, and relays the gateway's answer unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentzt.errors import AgentztError, NotFoundError, UpstreamError
from agentzt.identity import SigningKey
from agentzt.proxy.session import TokenSession
from agentzt.wire import REQUEST_ID_HEADER, error_response, json_response, read_body, request_id_of

log = logging.getLogger("agentzt.proxy")
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
FORWARDED_PATHS = {
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/tools"),
}
TOOL_CALL = re.compile(r"/v1/tools/[a-z0-9][a-z0-9._-]{0,126}")
# IMPORTANT: only these request headers travel to the gateway. Credentials the agent
# sends (authorization, x-api-key, cookies) are never among them.
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "user-agent")
# Hop-by-hop and framing headers are the relay's own business, not the gateway's answer.
DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)
MAX_BODY_BYTES = 32 * 1024 * 1024


def _forwarded(path: str, method: str) -> bool:
    return (method, path) in FORWARDED_PATHS or (
        method == "POST" and bool(TOOL_CALL.fullmatch(path))
    )


def _outbound_headers(request: Request, request_id: str, token: str) -> dict[str, str]:
    headers = {
        name: request.headers[name] for name in FORWARD_REQUEST_HEADERS if name in request.headers
    }
    for name, value in request.headers.items():
        if name.startswith("anthropic-"):
            headers[name] = value
    headers[REQUEST_ID_HEADER] = request_id
    headers["authorization"] = f"Bearer {token}"
    return headers


class _Link:
    """The proxy's connection to the gateway, opened and closed with the app's lifespan."""

    http: aiohttp.ClientSession
    session: TokenSession


def create_proxy_app(*, agent_id: str, key: SigningKey, gateway_url: str) -> Starlette:
    gateway = gateway_url.rstrip("/")
    link = _Link()

    async def send(
        http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            async with http.request(method, url, headers=headers, data=body or None) as resp:
                payload = await resp.read()
                return resp.status, list(resp.headers.items()), payload
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"gateway unreachable: {type(exc).__name__}") from exc

    async def endpoint(request: Request) -> Response:
        request_id = request_id_of(request.headers)
        path, method = request.url.path, request.method
        try:
            if path == "/healthz" and method == "GET":
                return json_response({"status": "ok", "agent_id": agent_id})
            if not _forwarded(path, method):
                raise NotFoundError("the proxy does not forward this route")
            session, http = link.session, link.http
            body = await read_body(request, MAX_BODY_BYTES)
            url = f"{gateway}{path}"
            if request.url.query:
                url += f"?{request.url.query}"
            token = await session.token()
            status, headers, payload = await send(
                http, method, url, _outbound_headers(request, request_id, token), body
            )
            if status == 401:
                # The token may have been revoked or expired early: get a new one, retry once.
                token = await session.refresh(stale=token)
                status, headers, payload = await send(
                    http, method, url, _outbound_headers(request, request_id, token), body
                )
        except AgentztError as exc:
            response = error_response(exc, request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        relayed = Response(payload, status_code=status)
        for name, value in headers:
            if name.lower() not in DROP_RESPONSE_HEADERS:
                relayed.headers.append(name, value)
        return relayed

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            link.http = http
            link.session = TokenSession(agent_id=agent_id, key=key, gateway_url=gateway, http=http)
            yield

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)], lifespan=lifespan)
