"""The OAuth side of the gateway: issuing tokens (RFC 6749 with RFC 7523 assertions and
RFC 9449 proofs), revoking them (RFC 7009, and ending a task), introspecting them
(RFC 7662)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from agentzt.errors import (
    AuthenticationError,
    InvalidRequestError,
    InvalidScopeError,
    PermissionDeniedError,
    TaskEndedError,
    TokenError,
    UnsupportedGrantTypeError,
)
from agentzt.gateway.call import Call
from agentzt.gateway.identifiers import credential_shaped
from agentzt.gateway.routes import Handler
from agentzt.gateway.service import Gateway
from agentzt.identity import CLIENT_ASSERTION_TYPE, TASK_ID, AccessClaims
from agentzt.wire import NO_STORE, json_response, read_body

TOKEN_BODY_LIMIT = 16 * 1024


def _form(body: bytes, request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        reason = "request must be application/x-www-form-urlencoded"
        raise InvalidRequestError(reason, message=reason)
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("request body is not a valid form") from exc
    if any(len(values) != 1 for values in fields.values()):
        raise InvalidRequestError("a form parameter is repeated")
    return {name: values[0] for name, values in fields.items()}


def _task_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not TASK_ID.fullmatch(value):
        reason = "task_id must be 1-128 letters, digits, '.', '_', ':' or '-'"
        raise InvalidRequestError(reason, message=reason)
    if credential_shaped(value):
        reason = "task_id looks like a credential; task ids are logged"
        raise InvalidRequestError(reason, message=reason)
    return value


def failures_limited(handler: Handler) -> Handler:
    """Count the OAuth requests that fail (a bad assertion or credential, a malformed
    form) against the client's address; past the limit a failure is answered 429.

    Only failures count, so every agent and the operator on one host (all loopback) are
    never locked out by a flood of garbage from a neighbour: a request that verifies
    still succeeds. IMPORTANT: the address is the TCP peer, never a forwarded-for header.
    """

    async def limited(gw: Gateway, request: Request, call: Call) -> Response:
        try:
            return await handler(gw, request, call)
        except (AuthenticationError, InvalidRequestError):
            address = request.client.host if request.client is not None else "unknown"
            gw.oauth_limiter.hit(
                f"failures\x00{address}", gw.limits.token_failures_per_minute_per_address
            )
            raise

    return limited


def _throttle_agent(gw: Gateway, agent_id: str) -> None:
    gw.oauth_limiter.hit(f"agent\x00{agent_id}", gw.limits.token_requests_per_minute)


@failures_limited
async def token(gw: Gateway, request: Request, call: Call) -> Response:
    """RFC 6749 client_credentials with an RFC 7523 private_key_jwt assertion."""
    form = _form(await read_body(request, TOKEN_BODY_LIMIT), request)
    if form.get("grant_type") != "client_credentials":
        raise UnsupportedGrantTypeError("grant_type is not client_credentials")
    if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise InvalidRequestError("client_assertion_type is not jwt-bearer")
    agent_id = gw.assertions.verify(form.get("client_assertion"))
    record = gw.registry.active(agent_id)
    call.agent_id, call.role = agent_id, record.role
    _throttle_agent(gw, agent_id)
    role = gw.policy.roles.get(record.role)
    if role is None:
        raise InvalidScopeError(f"role {record.role} is not in the live policy")
    granted = role.scope
    if "scope" in form:
        wanted = form["scope"].split()
        if not set(wanted) <= set(granted):
            raise InvalidScopeError("requested scope exceeds the role's standing scope")
        granted = [s for s in granted if s in wanted]
    if "client_id" in form and form["client_id"] != agent_id:
        reason = "client_id does not match the assertion's subject"
        raise InvalidRequestError(reason, message=reason)
    task = _task_id(form.get("task_id"))
    if task is not None:
        call.meta["task"] = task
        if gw.ledger.task_ended(agent_id, task):
            raise TaskEndedError(f"task {task} was ended")
    x5t = gw.senders.certificate(request, call, record)
    jkt = gw.senders.key(request, record)
    access_token, claims = gw.issuer_of_tokens.issue(
        agent_id, role.name, granted, x5t=x5t, jkt=jkt, task=task
    )
    call.reason = f"issued to {agent_id} for role {role.name}"
    call.meta.update({"jti": claims.jti, "exp": claims.exp, "scope": " ".join(granted)})
    call.meta["token_hmac"] = gw.correlate(access_token)
    if claims.cnf:
        call.meta["cnf"] = claims.cnf
    await gw.record_decision(call)
    # IMPORTANT: recorded before it is handed out; a token the ledger does not hold is
    # refused on every call, so a failed write here costs only this request.
    gw.ledger.record(
        jti=claims.jti,
        agent_id=agent_id,
        role=role.name,
        task_id=task,
        scope=" ".join(granted),
        binding=claims.binding,
        issued_at=claims.iat,
        expires_at=claims.exp,
    )
    return json_response(
        {
            "access_token": access_token,
            "token_type": "DPoP" if jkt is not None else "Bearer",
            "expires_in": claims.exp - claims.iat,
            "scope": " ".join(granted),
        },
        headers=NO_STORE,
    )


def _operator(gw: Gateway, request: Request) -> bool:
    """Whether the caller presented the operator credential (and nothing else)."""
    headers = request.headers.getlist("authorization")
    if not headers:
        return False
    scheme, _, secret = headers[0].partition(" ")
    if len(headers) != 1 or scheme.lower() != "bearer" or not gw.operator.matches(secret.strip()):
        raise AuthenticationError("the operator credential does not match")
    return True


def _claims_of(gw: Gateway, value: str | None) -> AccessClaims | None:
    """The claims of a token this gateway issued and that has not expired, else None."""
    if value is None:
        raise InvalidRequestError("the token parameter is missing")
    try:
        return gw.verifier.verify(value)
    except TokenError:
        return None


@failures_limited
async def revoke(gw: Gateway, request: Request, call: Call) -> Response:
    """RFC 7009. The operator may revoke any token; an agent (authenticated with its
    client assertion, as at the token endpoint) only its own."""
    form = _form(await read_body(request, TOKEN_BODY_LIMIT), request)
    if not _operator(gw, request):
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise AuthenticationError("no operator credential and no client assertion")
        call.agent_id = gw.assertions.verify(form.get("client_assertion"))
        gw.registry.active(call.agent_id)
        _throttle_agent(gw, call.agent_id)
    else:
        call.meta["by"] = "operator"
    value = form.get("token")
    if value is not None:
        call.meta["token_hmac"] = gw.correlate(value)
    claims = _claims_of(gw, value)
    # RFC 7009 section 2.2: an invalid or expired token is no error; there is nothing
    # left to revoke.
    if claims is None:
        call.reason = "not a live token of this gateway; nothing to revoke"
        return Response(status_code=200, headers=NO_STORE)
    call.meta["jti"] = claims.jti
    call.resource = f"token:{claims.jti}"
    if call.agent_id is not None and claims.agent_id != call.agent_id:
        raise PermissionDeniedError(
            f"agent {call.agent_id} asked to revoke a token of {claims.agent_id}",
            message="a client may revoke only its own tokens",
        )
    by = "the operator" if call.agent_id is None else "its agent"
    call.reason = f"revoke token {claims.jti}"
    await gw.record_decision(call)
    revoked = gw.ledger.revoke(now=gw.clock(), reason=f"revoked by {by}", jti=claims.jti)
    call.reason = f"token {claims.jti} revoked" if revoked else "nothing to revoke: already revoked"
    return Response(status_code=200, headers=NO_STORE)


@failures_limited
async def introspect(gw: Gateway, request: Request, call: Call) -> Response:
    """RFC 7662, for the operator and resource servers holding the operator credential."""
    if not _operator(gw, request):
        raise AuthenticationError("introspection needs the operator credential")
    form = _form(await read_body(request, TOKEN_BODY_LIMIT), request)
    value = form.get("token")
    if value is None:
        raise InvalidRequestError("the token parameter is missing")
    call.meta["token_hmac"] = gw.correlate(value)
    try:
        # The very check a call makes (bar the request's own proof and channel), so
        # introspection never calls live a token the gateway would refuse.
        claims, _ = gw.live(value)
    except AuthenticationError as exc:
        call.meta["inactive"] = exc.detail
        answer: dict[str, Any] = {"active": False}
    else:
        call.meta["jti"] = claims.jti
        answer = {
            "active": True,
            "iss": gw.issuer,
            "aud": gw.issuer,
            "sub": claims.agent_id,
            "client_id": claims.agent_id,
            "role": claims.role,
            "scope": " ".join(sorted(claims.scope)),
            "iat": claims.iat,
            "exp": claims.exp,
            "jti": claims.jti,
            "token_type": "DPoP" if claims.jkt is not None else "Bearer",
        }
        if claims.task is not None:
            answer["task_id"] = claims.task
        cnf = claims.cnf
        if cnf:
            answer["cnf"] = cnf
    call.reason = f"introspected: {'active' if answer['active'] else 'inactive'}"
    return json_response(answer, headers=NO_STORE)


async def end_task(gw: Gateway, request: Request, call: Call, task: str) -> Response:
    """The agent ends one of its tasks: every token for it is revoked at once, and no
    new one is issued for that task id."""
    claims, _ = gw.admit(request, call)
    call.resource = f"task:{task}"
    if claims.task not in (None, task):
        raise PermissionDeniedError(
            "a task token may end only its own task",
            message="a task token may end only its own task",
        )
    call.reason = f"end task {task}"
    await gw.record_decision(call)
    revoked = gw.ledger.end_task(
        claims.agent_id, task, now=gw.clock(), reason="task ended by its agent"
    )
    call.reason = f"task {task} ended; {revoked} token(s) revoked"
    call.meta["revoked"] = revoked
    return json_response({"task_id": task, "ended": True, "revoked": revoked})
