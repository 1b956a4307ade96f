"""The gateway's ASGI application: one dispatcher, so every request, routed or not,
allowed or denied, goes through the same audit path."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentzt.errors import AgentztError, AuditWriteError, InvalidDpopProofError, NotFoundError
from agentzt.gateway import routes, token_routes
from agentzt.gateway.call import Call
from agentzt.gateway.identifiers import credential_shaped
from agentzt.gateway.service import Gateway
from agentzt.gateway.streaming import UpstreamStream
from agentzt.policy.load import RESOURCE_NAME
from agentzt.wire import (
    REQUEST_ID_HEADER,
    TASK_END,
    EveryMethod,
    error_response,
    new_request_id,
    oauth_error_response,
    request_id_of,
)

log = logging.getLogger("agentzt.gateway")

# (method, path) -> (audit action, handler)
ROUTES: dict[tuple[str, str], tuple[str, routes.Handler]] = {
    ("GET", "/healthz"): ("health.check", routes.healthz),
    ("GET", "/.well-known/jwks.json"): ("discovery.jwks", routes.jwks),
    ("GET", "/.well-known/oauth-authorization-server"): ("discovery.metadata", routes.metadata),
    ("POST", "/v1/token"): ("token.issue", token_routes.token),
    ("POST", "/v1/revoke"): ("token.revoke", token_routes.revoke),
    ("POST", "/v1/introspect"): ("token.introspect", token_routes.introspect),
    ("POST", "/v1/messages"): ("model.call", routes.messages),
    ("POST", "/v1/messages/count_tokens"): ("model.count_tokens", routes.count_tokens),
    ("GET", "/v1/models"): ("model.list", routes.models),
    ("GET", "/v1/tools"): ("tool.list", routes.tools),
    ("POST", "/v1/elevate"): ("elevation.grant", routes.elevate),
}
# The action recorded when a request on that route is denied.
DENIED_ACTION = {"token.issue": "token.reject", "elevation.grant": "elevation.reject"}
TOOL_PREFIX = "/v1/tools/"
KNOWN_PATHS = {path for _, path in ROUTES}


async def _not_found(gw: Gateway, request: Request, call: Call) -> Response:
    raise NotFoundError("no such route")


async def _wrong_method(gw: Gateway, request: Request, call: Call) -> Response:
    raise NotFoundError("method not allowed on this route", message="no such route for this method")


def resolve(method: str, path: str) -> tuple[str, routes.Handler]:
    found = ROUTES.get((method, path))
    if found is not None:
        return found
    if path.startswith(TOOL_PREFIX):
        name = path[len(TOOL_PREFIX) :]
        if method == "POST" and RESOURCE_NAME.fullmatch(name):
            return "tool.call", routes.tool_call(name)
        return "tool.call", _not_found if method == "POST" else _wrong_method
    if path.startswith("/v1/tasks/"):
        match = TASK_END.fullmatch(path)
        if match is None:
            return "task.end", _not_found
        if method != "POST":
            return "task.end", _wrong_method
        return "task.end", functools.partial(token_routes.end_task, task=match[1])
    if path in KNOWN_PATHS:
        return "route.unknown", _wrong_method
    return "route.unknown", _not_found


def create_app(gw: Gateway) -> Starlette:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        request_id = request_id_of(request.headers)
        if credential_shaped(request_id):
            # The caller's id would be logged as it is; it gets one of ours instead.
            request_id = new_request_id()
        action, handler = resolve(request.method, request.url.path)
        call = Call(request_id=request_id, action=action, started=started)
        decision = "allow"
        try:
            response = await handler(gw, request, call)
        except AgentztError as exc:
            decision, call.reason = "deny", exc.detail
            response = _deny(exc, action, request_id)
            # The OAuth endpoints authenticate clients, not tokens: no token challenge.
            if response.status_code == 401 and not action.startswith("token."):
                response.headers["www-authenticate"] = _challenge(gw, exc)
        except Exception as exc:  # fail closed, and audit it like any other deny
            log.exception("unexpected error handling %s", action)
            decision, call.reason = "deny", f"internal error: {type(exc).__name__}"
            response = _deny(AgentztError(), action, request_id)
        if decision == "deny" and action in DENIED_ACTION:
            call.action = action = DENIED_ACTION[action]
        try:
            await gw.record_outcome(call, action, decision, response.status_code)
        except AuditWriteError as exc:
            # IMPORTANT: a decision that cannot be recorded is not delivered.
            log.debug("audit write failed: %s", exc.detail)
            if isinstance(response, UpstreamStream):
                await response.discard()
            response = _deny(exc, action, request_id)
            await _record_refusal(gw, call, response.status_code)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gw.aclose()

    return Starlette(
        routes=[Route("/{path:path}", EveryMethod(endpoint))],
        lifespan=lifespan,
    )


async def _record_refusal(gw: Gateway, call: Call, status: int) -> None:
    """Try once more with a minimal event of fixed fields, so that a request whose full
    event could not be written still leaves a trace when the log itself is writable."""
    call.resource = None
    reason = "the full audit event could not be written; request refused"
    with contextlib.suppress(AuditWriteError):
        await gw.audit.record(gw.draft(call, call.action, "deny", reason, status, {}))


def _challenge(gw: Gateway, exc: AgentztError) -> str:
    """RFC 6750 / RFC 9449 section 7.1: how to authenticate, and what went wrong."""
    error = "invalid_dpop_proof" if isinstance(exc, InvalidDpopProofError) else "invalid_token"
    if gw.senders.dpop == "off":
        return f'Bearer error="{error}"'
    return f'DPoP algs="EdDSA", error="{error}"'


def _deny(exc: AgentztError, action: str, request_id: str) -> Response:
    if action.startswith("token."):
        return oauth_error_response(exc)
    return error_response(exc, request_id)
