"""The client proxy: the agent's only door to models and tools.

It accepts the agent's calls without credentials, drops any it sends anyway, attaches
the agent's access token and a request id, and relays the gateway's answer unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentzt.errors import (
    AgentztError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
)
from agentzt.identity import TASK_ID, SigningKey
from agentzt.proxy.session import Token, TokenSession, unreachable
from agentzt.sse import error_frame
from agentzt.wire import (
    REQUEST_ID_HEADER,
    TASK_END,
    TASK_HEADER,
    EveryMethod,
    error_response,
    json_response,
    read_body,
    request_id_of,
    require_json,
)

log = logging.getLogger("agentzt.proxy")
FORWARDED_PATHS = {
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/tools"),
}
TOOL_CALL = re.compile(r"/v1/tools/[a-z0-9][a-z0-9._-]{0,126}")
# ``x-agentzt-elevate: tool:NAME`` asks the proxy to get a JIT grant before the call.
ELEVATE_HEADER = "x-agentzt-elevate"
ELEVATE_REASON_HEADER = "x-agentzt-elevate-reason"
ELEVATE_VALUE = re.compile(r"(tool|model):([a-z0-9][a-z0-9._-]{0,126})")
ELEVATION_HEADER = "x-agentzt-elevation"
# IMPORTANT: only these request headers travel to the gateway. Credentials the agent
# sends (authorization, x-api-key, cookies) are never among them. A grant the agent
# holds (from ``agentzt elevate``) may be presented as is.
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "user-agent", ELEVATION_HEADER)
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
        method == "POST" and bool(TOOL_CALL.fullmatch(path) or TASK_END.fullmatch(path))
    )


def _task_of(request: Request) -> str | None:
    """The task the agent names for this call, if any; a task's end uses no task token."""
    named = request.headers.getlist(TASK_HEADER)
    if not named or TASK_END.fullmatch(request.url.path):
        return None
    task = named[0].strip()
    if len(named) > 1 or not TASK_ID.fullmatch(task):
        raise InvalidRequestError(
            "bad x-agentzt-task-id header",
            message="x-agentzt-task-id must be one task id: 1-128 letters, digits, "
            "'.', '_', ':' or '-'",
        )
    return task


def _outbound_headers(request: Request, request_id: str) -> dict[str, str]:
    headers = {
        name: request.headers[name] for name in FORWARD_REQUEST_HEADERS if name in request.headers
    }
    for name, value in request.headers.items():
        if name.startswith("anthropic-"):
            headers[name] = value
    headers[REQUEST_ID_HEADER] = request_id
    return headers


@dataclass
class Answer:
    """The gateway's answer: read whole, or (a 200 event stream) still arriving."""

    status: int
    headers: list[tuple[str, str]]
    payload: bytes
    stream: aiohttp.ClientResponse | None = None


class RelayedStream(StreamingResponse):
    """The gateway's event stream, passed on chunk by chunk as it arrives.

    Sending waits for the agent to read (backpressure), and however the relay ends,
    the gateway connection is closed, so an agent that leaves stops the gateway's stream
    and, through it, the upstream's.
    """

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        # No media type of its own: the gateway's content-type is relayed with the rest.
        super().__init__(self._chunks(upstream))
        self._upstream = upstream

    @staticmethod
    async def _chunks(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("the gateway's stream broke: %s", type(exc).__name__)
            yield error_frame("api_error", "the connection to the gateway broke mid-stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._upstream.close()


class _Link:
    """The proxy's connection to the gateway, opened and closed with the app's lifespan."""

    http: aiohttp.ClientSession
    session: TokenSession


def create_proxy_app(
    *, agent_id: str, key: SigningKey, gateway_url: str, tls: ssl.SSLContext | None = None
) -> Starlette:
    """The proxy for ``agent_id``; with ``tls`` (from ``agentzt.tls.client_context``) it
    speaks mutual TLS to an https gateway."""
    gateway = gateway_url.rstrip("/")
    if gateway.startswith("https://") and tls is None:
        # IMPORTANT: never fall back to the system trust store for the gateway.
        raise ConfigError(
            f"gateway {gateway} is https: the proxy needs the agentzt CA and the agent's "
            "client certificate (run with --mtls)"
        )
    link = _Link()

    async def send(
        http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> Answer:
        try:
            # IMPORTANT: no redirects; the gateway's answer, whatever it is, is relayed as is,
            # and the request (body, grant) goes to the gateway and nowhere else.
            resp = await http.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(exc, tls=tls is not None) from exc
        answer_headers = list(resp.headers.items())
        if resp.status == 200 and resp.content_type == "text/event-stream":
            # Relayed as it arrives; the endpoint closes it.
            return Answer(resp.status, answer_headers, b"", resp)
        try:
            payload = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise unreachable(exc, tls=tls is not None) from exc
        finally:
            resp.release()
        return Answer(resp.status, answer_headers, payload)

    async def exchange(
        request: Request,
        request_id: str,
        method: str,
        path: str,
        body: bytes,
        extra: dict[str, str | None],
    ) -> Answer:
        """One call to the gateway with a current token; on 401 get a new token, retry once.

        ``extra`` adds headers; a None value removes one the agent sent.
        """
        session, http = link.session, link.http
        task = _task_of(request)
        url = f"{gateway}{path}"
        if request.url.query and path == request.url.path:
            url += f"?{request.url.query}"

        def headers_with(token: Token) -> dict[str, str]:
            headers = _outbound_headers(request, request_id)
            # A fresh DPoP proof per attempt: each is single-use.
            headers.update(session.authorization(token, method, path))
            if task is not None:
                headers[TASK_HEADER] = task
            for name, value in extra.items():
                if value is None:
                    headers.pop(name, None)
                else:
                    headers[name] = value
            return headers

        token = await session.token(task)
        answer = await send(http, method, url, headers_with(token), body)
        if answer.status == 401:
            # The token may have been revoked or expired early: get a new one, retry once.
            token = await session.refresh(stale=token, task=task)
            answer = await send(http, method, url, headers_with(token), body)
        return answer

    async def elevation_for(request: Request, request_id: str) -> dict[str, str | None] | Answer:
        """The grant header for an ``x-agentzt-elevate`` call, or the gateway's refusal."""
        wanted = request.headers.getlist(ELEVATE_HEADER)
        if not wanted:
            return {}
        match = ELEVATE_VALUE.fullmatch(wanted[0].strip()) if len(wanted) == 1 else None
        if match is None:
            raise InvalidRequestError(
                "bad x-agentzt-elevate header",
                message="x-agentzt-elevate must be 'tool:NAME' or 'model:NAME'",
            )
        reason = request.headers.get(ELEVATE_REASON_HEADER, "").strip() or (
            f"requested by agent {agent_id} through its client proxy for "
            f"{request.method} {request.url.path}"
        )
        body = json.dumps({"kind": match[1], "name": match[2], "reason": reason}).encode()
        answer = await exchange(
            request,
            request_id,
            "POST",
            "/v1/elevate",
            body,
            {"content-type": "application/json", ELEVATION_HEADER: None},
        )
        if answer.status != 200 or answer.stream is not None:
            return answer
        try:
            grant = json.loads(answer.payload)["elevation_grant"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError("gateway sent a malformed elevation answer") from exc
        if not isinstance(grant, str):
            raise UpstreamError("gateway sent a malformed elevation answer")
        return {ELEVATION_HEADER: grant}

    async def endpoint(request: Request) -> Response:
        request_id = request_id_of(request.headers)
        path, method = request.url.path, request.method
        try:
            if path == "/healthz" and method == "GET":
                healthy = json_response({"status": "ok", "agent_id": agent_id})
                healthy.headers[REQUEST_ID_HEADER] = request_id
                return healthy
            if not _forwarded(path, method):
                raise NotFoundError("the proxy does not forward this route")
            body = await read_body(request, MAX_BODY_BYTES)
            require_json(request, body)
            extra = await elevation_for(request, request_id)
            if isinstance(extra, Answer):
                answer = extra
            else:
                answer = await exchange(request, request_id, method, path, body, extra)
            ended = TASK_END.fullmatch(path)
            if ended is not None and answer.status == 200:
                link.session.forget(ended[1])
        except AgentztError as exc:
            response = error_response(exc, request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        relayed: Response
        if answer.stream is not None:
            relayed = RelayedStream(answer.stream)
        else:
            relayed = Response(answer.payload, status_code=answer.status)
        for name, value in answer.headers:
            if name.lower() not in DROP_RESPONSE_HEADERS:
                relayed.headers.append(name, value)
        return relayed

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300, ssl=tls or True)
        # Longer than the gateway's longest upstream timeout (3600 s), so the gateway's
        # own 504 is what an agent sees.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=3700)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            link.http = http
            link.session = TokenSession(agent_id=agent_id, key=key, gateway_url=gateway, http=http)
            app.state.token_session = link.session
            yield

    return Starlette(routes=[Route("/{path:path}", EveryMethod(endpoint))], lifespan=lifespan)
