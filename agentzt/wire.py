"""Wire helpers shared by the gateway and the proxy: request ids, bounded bodies, strict
JSON, and the Anthropic and OAuth error shapes."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from agentzt.errors import (
    AgentztError,
    AuthenticationError,
    InvalidRequestError,
    RateLimitedError,
    RequestTooLargeError,
    UpstreamStatusError,
)
from agentzt.identity.tokens import TASK_ID

REQUEST_ID_HEADER = "x-agentzt-request-id"
# The task a call belongs to (task-bound tokens), and the route that ends one.
TASK_HEADER = "x-agentzt-task-id"
TASK_END = re.compile(rf"/v1/tasks/({TASK_ID.pattern})/end")
# Token responses must not be cached anywhere (RFC 6749 section 5.1).
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Deeply nested JSON is refused before it can exhaust the parser's recursion.
MAX_JSON_DEPTH = 64


class EveryMethod:
    """An ASGI app that hands every HTTP request, whatever its method, to ``endpoint``.

    IMPORTANT: a Starlette route given a function answers only the methods it lists and
    sends its own plain 405 for any other (PROPFIND, TRACE…), which would skip our audit
    event and error envelope. Given an ASGI app, the route leaves the method to it.
    """

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._endpoint(Request(scope, receive, send))
        await response(scope, receive, send)


def request_id_of(headers: Headers) -> str:
    """The caller's request id when it is well-formed, else a fresh one."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return new_request_id()


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes before and while reading."""
    declared = request.headers.get("content-length")
    if declared is not None:
        # isascii first: str.isdigit() also takes superscripts such as "²", which int()
        # refuses.
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidRequestError("content-length is not a number")
        # Compare lengths first: int() refuses numbers past 4300 digits.
        if len(declared) > 15 or int(declared) > limit:
            raise RequestTooLargeError(f"content-length over {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestTooLargeError(f"body over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        # A body cut short (a bad chunk, a dropped connection) is the client's fault, and
        # is refused and audited as such.
        raise InvalidRequestError("the request body was cut short") from exc
    return b"".join(chunks)


def require_json(request: Request, body: bytes) -> None:
    """Refuse a body not declared as JSON.

    IMPORTANT: browsers send text/plain and form bodies cross-site without a CORS
    preflight; requiring application/json keeps a web page from driving an agent's
    proxy (which attaches the agent's token) or the gateway.
    """
    if not body:
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        reason = "content-type must be application/json"
        raise InvalidRequestError(reason, message=reason)


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A bounded body, declared as JSON, parsed strictly into an object."""
    body = await read_body(request, limit)
    require_json(request, body)
    return parse_json_object(body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Longer non-integer literals are refused: no JSON writer produces them, and 1e999999
# would otherwise become float infinity. Integers keep Python's own bound (4,300 digits),
# so a large id a model put in a tool call still round-trips.
MAX_FLOAT_CHARS = 64


def _parse_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_FLOAT_CHARS else math.inf
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # IMPORTANT: with a duplicate key, two parsers may read two requests from one body
    # (the first "model" or the last); refuse rather than pick.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


_STRICT = json.JSONDecoder(
    parse_constant=_reject_constant,
    parse_float=_parse_float,
    object_pairs_hook=_unique_keys,
)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def _depth_ok(body: bytes) -> bool:
    """True unless the JSON text nests deeper than MAX_JSON_DEPTH.

    Strings are blanked out first, so brackets inside them neither count nor cancel.
    """
    depth = 0
    for match in _BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        else:
            depth -= 1
    return True


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded nesting, an object at the top.

    Code after this point may walk the value recursively and write any string in it
    to the audit log as UTF-8, so both depth and encodability are settled here.
    """
    if not _depth_ok(body):
        raise InvalidRequestError("JSON nested too deeply", message="JSON nested too deeply")
    try:
        value = _STRICT.decode(body.decode("utf-8"))
        if b"\\u" in body:
            # Escapes can produce lone surrogates, which no UTF-8 writer accepts.
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"body is not valid JSON: {exc}"[:200],
            message="body is not strict JSON (UTF-8, unique keys, finite numbers)",
        ) from exc
    if not isinstance(value, dict):
        raise InvalidRequestError("body must be a JSON object")
    return value


def json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(exc: AgentztError, request_id: str) -> Response:
    """The Anthropic error envelope with the fixed public message of ``exc``."""
    headers = {}
    if isinstance(exc, RateLimitedError):
        headers["retry-after"] = str(exc.retry_after)
    if isinstance(exc, RequestTooLargeError):
        # Whatever of the body is still coming is not read; the connection must go.
        headers["connection"] = "close"
    if isinstance(exc, UpstreamStatusError) and exc.retry_after:
        headers["retry-after"] = exc.retry_after
    payload = {
        "type": "error",
        "error": {"type": exc.error_type, "message": exc.message},
        "request_id": request_id,
    }
    return json_response(payload, exc.status, headers)


def oauth_error_response(exc: AgentztError) -> Response:
    """RFC 6749 section 5.2 error body for the token endpoint."""
    # PROTOCOL.md: the token endpoint answers 400 or 401 (429 and 5xx keep their
    # meaning for clients that back off or retry).
    status = exc.status if exc.status in (401, 429) or exc.status >= 500 else 400
    status = exc.oauth_status or status
    headers = {"cache-control": "no-store"}
    if isinstance(exc, RateLimitedError):
        headers["retry-after"] = str(exc.retry_after)
    if isinstance(exc, RequestTooLargeError):
        headers["connection"] = "close"
    # IMPORTANT: every authentication failure reads the same, so the token endpoint
    # never tells a caller whether an agent id is enrolled; the audit log has the detail.
    description = AuthenticationError.message if status == 401 else exc.message
    payload = {"error": exc.oauth_error, "error_description": description}
    return json_response(payload, status, headers)
