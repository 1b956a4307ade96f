"""The gateway's endpoints. Each takes the Gateway, the request and the Call record,
returns a Response on success and raises an AgentztError to deny."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from agentzt.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from agentzt.gateway.call import Call
from agentzt.gateway.model_request import COUNT_FIELDS, check_fields
from agentzt.gateway.service import Gateway
from agentzt.gateway.streaming import open_stream
from agentzt.guardrails.conversation import Turn, argument_turns, message_turns
from agentzt.identity import Grant
from agentzt.policy import Resource, Role
from agentzt.policy.load import RESOURCE_NAME
from agentzt.wire import NO_STORE, json_response, read_json_object

Handler = Callable[[Gateway, Request, Call], Awaitable[Response]]
ELEVATE_BODY_LIMIT = 16 * 1024
MAX_REASON_CHARS = 500
MODEL_CREATED_AT = "2025-01-01T00:00:00Z"


async def healthz(gw: Gateway, request: Request, call: Call) -> Response:
    call.reason = "health check"
    return json_response({"status": "ok"})


async def jwks(gw: Gateway, request: Request, call: Call) -> Response:
    call.reason = "public keys"
    return json_response({"keys": [gw.public_key.jwk()]})


async def metadata(gw: Gateway, request: Request, call: Call) -> Response:
    call.reason = "server metadata"
    return json_response(
        {
            "issuer": gw.issuer,
            "token_endpoint": gw.token_endpoint,
            "jwks_uri": f"{gw.issuer}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": [],
            # RFC 8705 section 3.3: tokens issued over mutual TLS are bound to the cert.
            "tls_client_certificate_bound_access_tokens": gw.mtls,
            "revocation_endpoint": f"{gw.issuer}/v1/revoke",
            "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
            "introspection_endpoint": f"{gw.issuer}/v1/introspect",
            **(
                {"dpop_signing_alg_values_supported": ["EdDSA"]} if gw.senders.dpop != "off" else {}
            ),
        }
    )


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError("max_tokens must be a positive integer")
    return value


def _check_messages(body: dict[str, Any]) -> None:
    """The request's shape, so the guardrail reads what the model would read."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequestError("each message needs role 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str) and not _objects(content):
            raise InvalidRequestError("each message needs content: a string or a list of blocks")
    system = body.get("system")
    if system is not None and not isinstance(system, str) and not _objects(system):
        raise InvalidRequestError("system must be a string or a list of blocks")
    tools = body.get("tools")
    if tools is not None and not _objects(tools):
        raise InvalidRequestError("tools must be a list of tool definitions")


def _objects(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


async def _model_request(
    gw: Gateway, request: Request, call: Call
) -> tuple[dict[str, Any], Role, Grant | None]:
    """Steps 1-2 for model routes: authenticate and count, read, authorize the model."""
    claims, role = gw.admit(request, call)
    body = await read_json_object(request, gw.max_body_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not RESOURCE_NAME.fullmatch(model):
        # IMPORTANT: only well-formed names reach the policy and the audit log, so a
        # request cannot write attacker-sized or unencodable text into the chain.
        call.resource = "model:<invalid>"
        raise InvalidRequestError("model is missing or not a valid model name")
    grant = gw.authorize(request, call, claims, role, Resource("model", model))
    _check_messages(body)
    check_fields(body)
    return body, role, grant


async def _screen(
    gw: Gateway, call: Call, role: Role, grant: Grant | None, turns: list[Turn]
) -> None:
    """Steps 5-6 and the JIT use: input guardrail, ABAC on hours and risk, grant counted.

    The hours come first although ABAC is step 6: they depend on nothing the guardrail
    finds, and a call that will be denied anyway must not send its conversation out to a
    guardrail provider.
    """
    gw.check_hours(call, role)
    risk = await gw.guard.screen(
        call, turns, risk_needed=role.abac.deny_above_risk_level is not None
    )
    gw.check_risk(call, role, risk)
    gw.use_grant(call, grant, role)


async def messages(gw: Gateway, request: Request, call: Call) -> Response:
    body, role, grant = await _model_request(gw, request, call)
    limit = role.limits.max_output_tokens
    max_tokens = _max_tokens(body)
    if max_tokens > limit:
        raise InvalidRequestError(
            f"max_tokens {max_tokens} over the role limit {limit}",
            message=f"max_tokens is above this agent's limit of {limit}",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequestError("stream must be true or false")
    if stream and gw.guard.reviews_output:
        # IMPORTANT: a stream cannot be withheld once sent, so with an output review
        # configured, streaming would let an agent skip it.
        raise InvalidRequestError(
            "stream with output review on",
            message="stream=true is unavailable while the output guardrail review is on",
        )
    turns = message_turns(body)
    await _screen(gw, call, role, grant, turns)
    await gw.record_decision(call)
    if stream:
        return await open_stream(gw, request, call, body)
    result = await gw.upstream.message(body, request.headers)
    call.meta["usage"] = result.get("usage")
    return json_response(await gw.guard.release_answer(call, turns, result))


async def count_tokens(gw: Gateway, request: Request, call: Call) -> Response:
    body, role, grant = await _model_request(gw, request, call)
    # Counting tokens runs nothing, so it does not spend a use of a JIT grant.
    await _screen(gw, call, role, None, message_turns(body))
    if grant is not None:
        call.meta["via"] = "jit"
    # Clients often count the very body they will send; the fields counting does not
    # take (max_tokens, sampling) are dropped rather than refused.
    counted = {k: v for k, v in body.items() if k in COUNT_FIELDS}
    await gw.record_decision(call)
    return json_response(await gw.upstream.count_tokens(counted, request.headers))


async def models(gw: Gateway, request: Request, call: Call) -> Response:
    claims, role = gw.admit(request, call)
    gw.check_hours(call, role)
    names = gw.allowed_for(claims, role, "model")
    call.reason = f"listed {len(names)} allowed models"
    data = [
        {"type": "model", "id": n, "display_name": n, "created_at": MODEL_CREATED_AT} for n in names
    ]
    return json_response(
        {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    )


async def tools(gw: Gateway, request: Request, call: Call) -> Response:
    claims, role = gw.admit(request, call)
    gw.check_hours(call, role)
    known = gw.toolbox.names()
    names = [n for n in gw.allowed_for(claims, role, "tool") if n in known]
    call.reason = f"listed {len(names)} allowed tools"
    return json_response({"tools": [gw.toolbox.describe(n) for n in names]})


def tool_call(name: str) -> Handler:
    async def handler(gw: Gateway, request: Request, call: Call) -> Response:
        claims, role = gw.admit(request, call)
        call.resource = f"tool:{name}"
        # Authenticated callers only learn which tools exist.
        if name not in gw.toolbox.names():
            raise NotFoundError("unknown tool", message="unknown tool")
        grant = gw.authorize(request, call, claims, role, Resource("tool", name))
        body = await read_json_object(request, gw.max_body_bytes)
        if set(body) - {"arguments"}:
            raise InvalidRequestError(
                "unknown field in tool call body; only 'arguments' is accepted"
            )
        arguments = gw.toolbox.validate(name, body.get("arguments", {}))
        await _screen(gw, call, role, grant, argument_turns(arguments))
        await gw.record_decision(call)
        # Tools are synchronous and may use a bounded amount of CPU (a database query);
        # a worker thread keeps the event loop serving other agents meanwhile.
        output = await run_in_threadpool(gw.toolbox.run, name, arguments)
        released = await gw.guard.release_tool_output(
            call, name, output, gw.toolbox.untrusted_fields(name)
        )
        return json_response({"ok": True, "output": released})

    return handler


def _elevation_request(body: dict[str, Any]) -> tuple[Resource, str, int | None]:
    unknown = set(body) - {"kind", "name", "reason", "ttl_seconds"}
    if unknown:
        reason = "unknown field in elevation request; accepted: kind, name, reason, ttl_seconds"
        raise InvalidRequestError(reason, message=reason)
    kind, name, why, ttl = body.get("kind"), body.get("name"), body.get("reason"), None
    if kind not in ("tool", "model"):
        raise InvalidRequestError("kind must be 'tool' or 'model'")
    if not isinstance(name, str) or not RESOURCE_NAME.fullmatch(name):
        raise InvalidRequestError("name must be a valid tool or model name")
    if not isinstance(why, str) or not why.strip():
        raise InvalidRequestError("a reason is required")
    why = " ".join(why.split())
    if len(why) > MAX_REASON_CHARS or not why.isprintable():
        raise InvalidRequestError(
            f"reason must be printable text of at most {MAX_REASON_CHARS} characters"
        )
    if "ttl_seconds" in body:
        ttl = body["ttl_seconds"]
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise InvalidRequestError("ttl_seconds must be a positive integer")
    return Resource("tool" if kind == "tool" else "model", name), why, ttl


async def elevate(gw: Gateway, request: Request, call: Call) -> Response:
    """Issue a JIT grant for exactly one resource the role lists as elevatable."""
    claims, role = gw.admit(request, call)
    body = await read_json_object(request, ELEVATE_BODY_LIMIT)
    resource, reason, ttl = _elevation_request(body)
    call.resource = resource.scope
    # The reason is the agent's own text: it goes into the audit log and the grant, so
    # it passes the secret redaction first.
    redacted = gw.guard.redact(call, reason)
    reason = redacted if isinstance(redacted, str) else "[REDACTED]"
    call.meta["reason"] = reason
    if resource.name not in role.jit.elevatable(resource.kind):
        raise PermissionDeniedError(
            f"{resource.scope} is not elevatable for role {role.name}",
            message=f"{resource.kind} '{resource.name}' is not elevatable for this agent's role",
        )
    gw.check_hours(call, role)
    cap = role.jit.max_ttl_seconds
    ttl = min(ttl or cap, cap)
    await gw.record_decision(call)
    grant_token, grant = gw.elevations.issue(
        claims.agent_id,
        kind=resource.kind,
        name=resource.name,
        reason=reason,
        ttl=ttl,
        task=claims.task,
    )
    call.reason = f"JIT grant for {resource.scope} to {claims.agent_id} for {ttl} s"
    call.meta.update(grant={"jti": grant.jti, "exp": grant.exp}, max_uses=role.jit.max_uses)
    return json_response(
        {
            "elevation_grant": grant_token,
            "expires_in": ttl,
            "resource": {"kind": resource.kind, "name": resource.name},
        },
        headers=NO_STORE,
    )
