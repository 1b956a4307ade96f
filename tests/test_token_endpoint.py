"""POST /v1/token, discovery and bearer checks on resource routes, over real HTTP against
a real gateway on an ephemeral loopback port (PROTOCOL.md, "Tokens" and "Gateway HTTP")."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import Stack, in_ledger
from forge import b64u, b64u_decode, compact, hs256, public_pem, to_json, unsigned

from agentzt.audit import read_events
from agentzt.identity import SigningKey, make_assertion, read_private_key

AGENT = "agent-1"
ROLE = "demo-agent"
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REQUEST_ID = "x-agentzt-request-id"
MESSAGE_BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
}
# The error codes RFC 6749 section 5.2 defines for the token endpoint.
RFC6749_TOKEN_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}

# Passed as a claim value to delete that claim.
DROP: Any = object()


# --- helpers ---------------------------------------------------------------------------


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def token_form(assertion: str | None, **extra: str) -> dict[str, str]:
    fields = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    if assertion is not None:
        fields["client_assertion"] = assertion
    fields.update(extra)
    return fields


def role_scope(stack: Stack, role: str = ROLE) -> tuple[list[str], list[str]]:
    """The role's models and tools, read from policy.toml without the product's loader."""
    document = tomllib.loads(stack.paths.policy_toml.read_text("utf-8"))
    entry = document["roles"][role]
    return list(entry["models"]), list(entry["tools"])


def standing_scope(stack: Stack, role: str = ROLE) -> set[str]:
    models, tools = role_scope(stack, role)
    return {f"model:{m}" for m in models} | {f"tool:{t}" for t in tools}


@dataclass
class Ctx:
    """One test's view of the gateway: clients, keys and token factories."""

    stack: Stack
    client: httpx.Client
    agent_key: SigningKey = field(init=False)
    gateway_key: SigningKey = field(init=False)
    stranger: SigningKey = field(init=False)

    def __post_init__(self) -> None:
        self.agent_key = read_private_key(self.stack.paths.identity_key(AGENT))
        self.gateway_key = read_private_key(self.stack.paths.gateway_key)
        self.stranger = SigningKey.generate()

    @property
    def issuer(self) -> str:
        return self.stack.gateway.issuer

    @property
    def token_endpoint(self) -> str:
        return self.stack.gateway.token_endpoint

    def assertion_parts(
        self, header: dict[str, Any] | None = None, **claims: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        now = int(time.time())
        base_header = {"alg": "EdDSA", "typ": "JWT", "kid": AGENT}
        base_claims = {
            "iss": AGENT,
            "sub": AGENT,
            "aud": self.token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": b64u(hashlib.sha256(repr((now, time.perf_counter_ns())).encode()).digest()),
        }
        return changed(base_header, header or {}), changed(base_claims, claims)

    def assertion(
        self, key: SigningKey | None = None, header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        h, c = self.assertion_parts(header, **claims)
        return compact(h, c, key or self.agent_key)

    def fresh_assertion(self) -> str:
        return make_assertion(self.agent_key, AGENT, audience=self.token_endpoint, now=time.time())

    def access_parts(
        self, header: dict[str, Any] | None = None, **claims: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        now = int(time.time())
        base_header = {"alg": "EdDSA", "typ": "at+jwt", "kid": self.gateway_key.public.kid}
        base_claims = {
            "iss": self.issuer,
            "sub": AGENT,
            "aud": self.issuer,
            "client_id": AGENT,
            "role": ROLE,
            "scope": " ".join(sorted(standing_scope(self.stack))),
            "iat": now,
            "exp": now + 300,
            "jti": b64u(hashlib.sha256(repr((now, time.perf_counter_ns())).encode()).digest()),
        }
        return changed(base_header, header or {}), changed(base_claims, claims)

    def access_token(
        self, key: SigningKey | None = None, header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        h, c = self.access_parts(header, **claims)
        return compact(h, c, key or self.gateway_key)

    def post_token(self, fields: dict[str, str]) -> httpx.Response:
        return self.client.post(
            "/v1/token", content=urlencode(fields), headers={"content-type": FORM}
        )

    def issue(self, **extra: str) -> dict[str, Any]:
        response = self.post_token(token_form(self.fresh_assertion(), **extra))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def ctx(gateway_stack: Stack) -> Iterator[Ctx]:
    with gateway_stack.gw_client() as client:
        yield Ctx(stack=gateway_stack, client=client)


def audit_bytes(ctx: Ctx) -> bytes:
    return ctx.stack.paths.audit_log.read_bytes()


def assert_denied_and_audited(
    ctx: Ctx, response: httpx.Response, action: str, secrets: tuple[str, ...]
) -> None:
    """The refusal was audited under the response's request id, and leaked no secret."""
    request_id = response.headers[REQUEST_ID]
    events = read_events(ctx.stack.paths.audit_log, request_id=request_id)
    assert events, f"no audit event for {request_id}"
    assert [(e["action"], e["decision"], e["status"]) for e in events] == [
        (action, "deny", response.status_code)
    ] * len(events)
    assert_no_secrets(ctx, secrets)


def assert_no_secrets(ctx: Ctx, secrets: tuple[str, ...]) -> None:
    log = audit_bytes(ctx)
    for secret in secrets:
        if not secret:
            continue
        assert secret.encode("utf-8") not in log, "a raw token reached the audit log"
        # Nor any recognisable piece of it: the signature segment is unique per token.
        signature = secret.rsplit(".", 1)[-1]
        if len(signature) >= 20:
            assert signature.encode("ascii") not in log


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- happy path ------------------------------------------------------------------------


def test_token_issued_for_fresh_assertion(ctx: Ctx) -> None:
    assertion = ctx.fresh_assertion()
    response = ctx.post_token(token_form(assertion))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    scope = body["scope"].split(" ")
    assert len(scope) == len(set(scope))
    assert set(scope) == standing_scope(ctx.stack)

    # The token is the RFC 9068 profile of PROTOCOL.md, signed by the gateway key.
    token = body["access_token"]
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = json.loads(b64u_decode(header_b64))
    claims = json.loads(b64u_decode(payload_b64))
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": ctx.gateway_key.public.kid}
    ctx.gateway_key.public.verify(
        f"{header_b64}.{payload_b64}".encode(), b64u_decode(signature_b64)
    )
    assert claims["iss"] == claims["aud"] == ctx.issuer
    assert claims["sub"] == claims["client_id"] == AGENT
    assert claims["role"] == ROLE
    assert claims["scope"] == body["scope"]
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["iat"] - time.time()) < 30
    assert isinstance(claims["jti"], str) and claims["jti"]

    events = read_events(ctx.stack.paths.audit_log, request_id=response.headers[REQUEST_ID])
    # Audit before acting: the decision precedes the issuance it allows.
    assert [(e["action"], e["decision"], e["agent_id"], e["status"]) for e in events] == [
        ("token.issue.authorized", "allow", AGENT, 0),
        ("token.issue", "allow", AGENT, 200),
    ]
    assert_no_secrets(ctx, (assertion, token))


def test_issued_token_works_on_models(ctx: Ctx) -> None:
    token = ctx.issue()["access_token"]
    response = ctx.client.get("/v1/models", headers=bearer(token))
    assert response.status_code == 200, response.text
    models, _ = role_scope(ctx.stack)
    assert {m["id"] for m in response.json()["data"]} == set(models)
    events = read_events(ctx.stack.paths.audit_log, request_id=response.headers[REQUEST_ID])
    assert [(e["action"], e["decision"]) for e in events] == [("model.list", "allow")]
    assert_no_secrets(ctx, (token,))


def test_scope_subset_narrows_the_token(ctx: Ctx) -> None:
    body = ctx.issue(scope="model:claude-haiku-4-5 tool:kb.search")
    assert set(body["scope"].split()) == {"model:claude-haiku-4-5", "tool:kb.search"}
    token = body["access_token"]
    listed = ctx.client.get("/v1/models", headers=bearer(token))
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()["data"]] == ["claude-haiku-4-5"]
    allowed = ctx.client.post("/v1/messages", json=MESSAGE_BODY, headers=bearer(token))
    assert allowed.status_code == 200, allowed.text
    # The role allows sonnet, but this token was narrowed to haiku.
    other = {**MESSAGE_BODY, "model": "claude-sonnet-4-6"}
    refused = ctx.client.post("/v1/messages", json=other, headers=bearer(token))
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    "scope",
    [
        "model:claude-opus-4-8",
        "model:claude-haiku-4-5 tool:email.send",
        "tool:sql.write",
        "admin",
    ],
    ids=["other-roles-model", "jit-only-tool", "unknown-tool", "not-a-scope"],
)
def test_scope_outside_role_is_invalid_scope(ctx: Ctx, scope: str) -> None:
    assertion = ctx.fresh_assertion()
    response = ctx.post_token(token_form(assertion, scope=scope))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert "access_token" not in response.json()
    assert_denied_and_audited(ctx, response, "token.reject", (assertion,))


# --- discovery -------------------------------------------------------------------------


def test_authorization_server_metadata(ctx: Ctx) -> None:
    response = ctx.client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == ctx.issuer == ctx.stack.gateway_url
    assert meta["token_endpoint"] == meta["issuer"] + "/v1/token"
    assert meta["jwks_uri"] == meta["issuer"] + "/.well-known/jwks.json"
    assert "client_credentials" in meta["grant_types_supported"]
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    assert meta["token_endpoint_auth_signing_alg_values_supported"] == ["EdDSA"]


def test_jwks_has_the_gateway_key(ctx: Ctx) -> None:
    response = ctx.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    keys = response.json()["keys"]
    assert len(keys) == 1
    (key,) = keys
    assert key["kty"] == "OKP"
    assert key["crv"] == "Ed25519"
    assert key["x"] == b64u(ctx.gateway_key.public.raw)
    assert "d" not in key
    thumbprint_input = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": key["x"]}, sort_keys=True, separators=(",", ":")
    )
    assert key["kid"] == b64u(hashlib.sha256(thumbprint_input.encode()).digest())


# --- token endpoint refusals -----------------------------------------------------------


@dataclass
class Presented:
    """A token request as sent: body, content type and the secrets inside it."""

    content: bytes | Iterator[bytes]
    content_type: str = FORM
    secrets: tuple[str, ...] = ()


def form_with(assertion: str | None, **extra: str) -> Presented:
    return Presented(
        content=urlencode(token_form(assertion, **extra)).encode(),
        secrets=(assertion,) if assertion else (),
    )


def _replayed(ctx: Ctx) -> Presented:
    assertion = ctx.fresh_assertion()
    first = ctx.post_token(token_form(assertion))
    assert first.status_code == 200, first.text
    presented = form_with(assertion)
    presented.secrets += (first.json()["access_token"],)
    return presented


def _hs256_assertion(ctx: Ctx, secret: bytes) -> Presented:
    header, claims = ctx.assertion_parts({"alg": "HS256"})
    return form_with(hs256(header, claims, secret))


def _alg_none(ctx: Ctx) -> Presented:
    header, claims = ctx.assertion_parts({"alg": "none"})
    return form_with(unsigned(header, claims))


def _unknown_agent(ctx: Ctx) -> Presented:
    ghost = SigningKey.generate()
    return form_with(
        ctx.assertion(ghost, {"kid": "ghost-agent"}, iss="ghost-agent", sub="ghost-agent")
    )


def _repeated_parameter(ctx: Ctx) -> Presented:
    assertion = ctx.fresh_assertion()
    fields = [*token_form(assertion).items(), ("grant_type", "client_credentials")]
    return Presented(content=urlencode(fields).encode(), secrets=(assertion,))


def _repeated_assertion(ctx: Ctx) -> Presented:
    first, second = ctx.fresh_assertion(), ctx.fresh_assertion()
    fields = [*token_form(first).items(), ("client_assertion", second)]
    return Presented(content=urlencode(fields).encode(), secrets=(first, second))


def _json_body(ctx: Ctx) -> Presented:
    assertion = ctx.fresh_assertion()
    return Presented(
        content=to_json(token_form(assertion)),
        content_type="application/json",
        secrets=(assertion,),
    )


def _oversized(ctx: Ctx) -> Presented:
    assertion = ctx.fresh_assertion()
    return Presented(
        content=urlencode(token_form(assertion, pad="a" * (17 * 1024))).encode(),
        secrets=(assertion,),
    )


def _oversized_chunked(ctx: Ctx) -> Presented:
    assertion = ctx.fresh_assertion()
    body = urlencode(token_form(assertion, pad="a" * (17 * 1024))).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    return Presented(content=chunks(), secrets=(assertion,))


# (id, request builder, accepted statuses, RFC 6749 error code)
TokenCase = tuple[str, Callable[[Ctx], Presented], tuple[int, ...], str]

TOKEN_REFUSALS: list[TokenCase] = [
    ("replayed", _replayed, (401,), "invalid_client"),
    ("forged", lambda c: form_with(c.assertion(c.stranger)), (401,), "invalid_client"),
    (
        "signed-by-gateway-key",
        lambda c: form_with(c.assertion(c.gateway_key)),
        (401,),
        "invalid_client",
    ),
    (
        "expired",
        lambda c: form_with(c.assertion(iat=int(time.time()) - 200, exp=int(time.time()) - 150)),
        (401,),
        "invalid_client",
    ),
    (
        "lifetime-over-max-age",
        lambda c: form_with(c.assertion(exp=int(time.time()) + 3600)),
        (401,),
        "invalid_client",
    ),
    (
        "issued-in-future",
        lambda c: form_with(c.assertion(iat=int(time.time()) + 120, exp=int(time.time()) + 150)),
        (401,),
        "invalid_client",
    ),
    ("wrong-audience", lambda c: form_with(c.assertion(aud=c.issuer)), (401,), "invalid_client"),
    (
        "audience-of-another-gateway",
        lambda c: form_with(c.assertion(aud="http://127.0.0.1:1/v1/token")),
        (401,),
        "invalid_client",
    ),
    ("alg-none", _alg_none, (401,), "invalid_client"),
    (
        "hs256-raw-public-key",
        lambda c: _hs256_assertion(c, c.agent_key.public.raw),
        (401,),
        "invalid_client",
    ),
    (
        "hs256-pem-public-key",
        lambda c: _hs256_assertion(c, public_pem(c.agent_key.public)),
        (401,),
        "invalid_client",
    ),
    ("missing-exp", lambda c: form_with(c.assertion(exp=DROP)), (401,), "invalid_client"),
    ("missing-jti", lambda c: form_with(c.assertion(jti=DROP)), (401,), "invalid_client"),
    ("iss-not-sub", lambda c: form_with(c.assertion(iss="agent-2")), (401,), "invalid_client"),
    ("unknown-agent", _unknown_agent, (401,), "invalid_client"),
    (
        "access-token-as-assertion",
        lambda c: form_with(c.issue()["access_token"]),
        (401,),
        "invalid_client",
    ),
    ("missing-assertion", lambda c: form_with(None), (401,), "invalid_client"),
    ("garbage-assertion", lambda c: form_with("not.a.jwt"), (401,), "invalid_client"),
    (
        "wrong-grant-type",
        lambda c: form_with(c.fresh_assertion(), grant_type="password"),
        (400,),
        "unsupported_grant_type",
    ),
    (
        "wrong-client-assertion-type",
        lambda c: form_with(
            c.fresh_assertion(),
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        ),
        (400,),
        "invalid_request",
    ),
    (
        "client-id-mismatch",
        lambda c: form_with(c.fresh_assertion(), client_id="agent-2"),
        (400,),
        "invalid_request",
    ),
    ("json-body", _json_body, (400,), "invalid_request"),
    ("repeated-grant-type", _repeated_parameter, (400,), "invalid_request"),
    ("repeated-assertion", _repeated_assertion, (400,), "invalid_request"),
    ("not-a-form", lambda c: Presented(content=b"%%%&&&==="), (400,), "invalid_request"),
    ("not-utf8", lambda c: Presented(content=b"grant_type=\xff\xfe"), (400,), "invalid_request"),
    # An RFC 6749 body with a 4xx: 400 as the RFC has it, or 413 like other routes.
    ("body-over-16-kib", _oversized, (400, 413), "invalid_request"),
    ("body-over-16-kib-chunked", _oversized_chunked, (400, 413), "invalid_request"),
]


@pytest.mark.parametrize(
    ("present", "status", "error"),
    [case[1:] for case in TOKEN_REFUSALS],
    ids=[case[0] for case in TOKEN_REFUSALS],
)
def test_token_request_refused(
    ctx: Ctx, present: Callable[[Ctx], Presented], status: tuple[int, ...], error: str
) -> None:
    presented = present(ctx)
    response = ctx.client.post(
        "/v1/token", content=presented.content, headers={"content-type": presented.content_type}
    )
    assert response.status_code < 500, response.text
    assert response.status_code in status, response.text
    assert response.json().get("error") == error
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] in RFC6749_TOKEN_ERRORS
    assert response.headers["cache-control"] == "no-store"
    assert_denied_and_audited(ctx, response, "token.reject", presented.secrets)


def test_unknown_agent_is_indistinguishable_from_bad_signature(ctx: Ctx) -> None:
    """Security: the token endpoint must not reveal whether an agent id is enrolled."""
    known = ctx.post_token(token_form(ctx.assertion(ctx.stranger)))
    unknown = ctx.post_token(token_form(_unknown_agent(ctx).secrets[0]))
    assert known.status_code == unknown.status_code == 401
    fields = ("error", "error_description")
    assert [known.json()[f] for f in fields] == [unknown.json()[f] for f in fields]


def test_disabled_agent_is_refused_like_unknown(ctx: Ctx) -> None:
    registry = ctx.stack.paths.agents_toml
    text = registry.read_text("utf-8")
    assert 'status = "active"' in text
    registry.write_text(text.replace('status = "active"', 'status = "disabled"'), "utf-8")
    response = ctx.post_token(token_form(ctx.fresh_assertion()))
    unknown = ctx.post_token(token_form(_unknown_agent(ctx).secrets[0]))
    assert response.status_code == 401
    assert response.json() == unknown.json()


def test_concurrent_replay_issues_exactly_one_token(ctx: Ctx) -> None:
    assertion = ctx.fresh_assertion()
    body = urlencode(token_form(assertion))
    presenters = 50
    barrier = threading.Barrier(presenters)

    def present(_: int) -> tuple[int, str | None]:
        with ctx.stack.gw_client() as client:
            barrier.wait(timeout=30)
            response = client.post("/v1/token", content=body, headers={"content-type": FORM})
            return response.status_code, response.json().get("error")

    with ThreadPoolExecutor(max_workers=presenters) as pool:
        results = list(pool.map(present, range(presenters)))
    assert sorted(results, key=str) == sorted(
        [(200, None)] + [(401, "invalid_client")] * (presenters - 1), key=str
    )
    events = read_events(ctx.stack.paths.audit_log)
    issued = [e for e in events if e["action"] == "token.issue"]
    rejected = [e for e in events if e["action"] == "token.reject"]
    assert len(issued) == 1
    assert len(rejected) == presenters - 1
    assert_no_secrets(ctx, (assertion,))


# --- resource routes with bad access tokens --------------------------------------------

RESOURCE_ROUTES = [
    ("GET", "/v1/models", "model.list"),
    ("POST", "/v1/messages", "model.call"),
]


def _hs256_access(ctx: Ctx, secret: bytes) -> tuple[dict[str, str], str]:
    header, claims = ctx.access_parts({"alg": "HS256"})
    token = hs256(header, claims, secret)
    return bearer(token), token


def _alg_none_access(ctx: Ctx) -> tuple[dict[str, str], str]:
    header, claims = ctx.access_parts({"alg": "none"})
    token = unsigned(header, claims)
    return bearer(token), token


def _with(token: str) -> tuple[dict[str, str], str]:
    return bearer(token), token


BadToken = tuple[str, Callable[[Ctx], tuple[dict[str, str], str]]]

BAD_ACCESS_TOKENS: list[BadToken] = [
    ("no-authorization", lambda c: ({}, "")),
    ("bearer-without-token", lambda c: ({"authorization": "Bearer"}, "")),
    (
        "basic-scheme",
        lambda c: ({"authorization": "Basic " + b64u(b"agent-1:secret")}, ""),
    ),
    (
        "valid-token-under-basic-scheme",
        lambda c: (
            {"authorization": "Basic " + (t := c.issue()["access_token"])},
            t,
        ),
    ),
    ("x-api-key-only", lambda c: ({"x-api-key": "sk-ant-whatever"}, "")),
    ("forged-with-agent-key", lambda c: _with(c.access_token(c.agent_key))),
    (
        "expired",
        lambda c: _with(c.access_token(iat=int(time.time()) - 400, exp=int(time.time()) - 100)),
    ),
    ("wrong-audience", lambda c: _with(c.access_token(aud=c.token_endpoint))),
    ("wrong-issuer", lambda c: _with(c.access_token(iss="http://evil.test"))),
    ("missing-exp", lambda c: _with(c.access_token(exp=DROP))),
    ("alg-none", _alg_none_access),
    ("hs256-raw-gateway-public-key", lambda c: _hs256_access(c, c.gateway_key.public.raw)),
    ("hs256-pem-gateway-public-key", lambda c: _hs256_access(c, public_pem(c.gateway_key.public))),
    ("client-assertion-as-access-token", lambda c: _with(c.fresh_assertion())),
    (
        "assertion-typ-signed-by-gateway",
        lambda c: _with(c.access_token(header={"typ": "JWT"})),
    ),
    (
        "lifetime-over-ttl",
        lambda c: _with(c.access_token(exp=int(time.time()) + 3600)),
    ),
    ("truncated", lambda c: _with(c.issue()["access_token"][:-10])),
]


@pytest.mark.parametrize(
    ("method", "path", "action"),
    RESOURCE_ROUTES,
    ids=[path for _, path, _ in RESOURCE_ROUTES],
)
@pytest.mark.parametrize(
    "make", [case[1] for case in BAD_ACCESS_TOKENS], ids=[case[0] for case in BAD_ACCESS_TOKENS]
)
def test_bad_access_token_is_401(
    ctx: Ctx,
    make: Callable[[Ctx], tuple[dict[str, str], str]],
    method: str,
    path: str,
    action: str,
) -> None:
    headers, token = make(ctx)
    body = MESSAGE_BODY if method == "POST" else None
    response = ctx.client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401, response.text
    request_id = response.headers[REQUEST_ID]
    payload = response.json()
    assert set(payload) == {"type", "error", "request_id"}
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "authentication_error"
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert payload["request_id"] == request_id
    if token:
        assert token not in response.text
    assert_denied_and_audited(ctx, response, action, (token,))


def test_request_id_is_echoed_on_refusal(ctx: Ctx) -> None:
    response = ctx.client.get("/v1/models", headers={REQUEST_ID: "req-test-0001"})
    assert response.status_code == 401
    assert response.headers[REQUEST_ID] == "req-test-0001"
    assert response.json()["request_id"] == "req-test-0001"
    events = read_events(ctx.stack.paths.audit_log, request_id="req-test-0001")
    assert [(e["action"], e["decision"]) for e in events] == [("model.list", "deny")]


def test_token_scope_beyond_live_role_is_403(ctx: Ctx) -> None:
    """A gateway-signed token naming a model the role does not allow: live policy wins."""
    outside = "claude-opus-4-8"
    models, _ = role_scope(ctx.stack)
    assert outside not in models
    scope = " ".join(sorted(standing_scope(ctx.stack) | {f"model:{outside}"}))
    token = in_ledger(ctx.stack.gateway, ctx.access_token(scope=scope))

    response = ctx.client.post(
        "/v1/messages", json={**MESSAGE_BODY, "model": outside}, headers=bearer(token)
    )
    assert response.status_code == 403, response.text
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "permission_error"
    assert payload["request_id"] == response.headers[REQUEST_ID]
    assert_denied_and_audited(ctx, response, "model.call", (token,))
    (event,) = read_events(ctx.stack.paths.audit_log, request_id=response.headers[REQUEST_ID])
    assert event["resource"] == f"model:{outside}"
    assert event["agent_id"] == AGENT

    # The model list follows the live role too, not the token.
    listed = ctx.client.get("/v1/models", headers=bearer(token))
    assert listed.status_code == 200
    assert {m["id"] for m in listed.json()["data"]} == set(models)


def test_audit_never_holds_a_raw_token(ctx: Ctx) -> None:
    """A full session, allowed and denied, leaves no token or assertion in the log."""
    secrets: list[str] = []
    assertion = ctx.fresh_assertion()
    secrets.append(assertion)
    issued = ctx.post_token(token_form(assertion))
    assert issued.status_code == 200
    token = issued.json()["access_token"]
    secrets.append(token)
    assert ctx.client.get("/v1/models", headers=bearer(token)).status_code == 200
    assert (
        ctx.client.post("/v1/messages", json=MESSAGE_BODY, headers=bearer(token)).status_code == 200
    )
    assert ctx.post_token(token_form(assertion)).status_code == 401  # replay
    forged = ctx.access_token(ctx.agent_key)
    secrets.append(forged)
    assert ctx.client.get("/v1/models", headers=bearer(forged)).status_code == 401
    # Issuance and the model call each add a decision event: 5 outcomes + 2 decisions.
    assert len(read_events(ctx.stack.paths.audit_log)) == 7
    assert_no_secrets(ctx, tuple(secrets))
