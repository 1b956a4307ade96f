"""DPoP (RFC 9449) with the packaged default ``dpop = "required"``: proofs at the token
endpoint and on every resource call, over real HTTP against real gateways on ephemeral
loopback ports. Malformed proofs are built by hand (tests/forge.py), not with the code
under test; joserfc checks that an independent JOSE library interoperates."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx
import pytest
from conftest import REPO, TEST_ROLES, enroll_agent, in_ledger
from cryptography.hazmat.primitives import serialization
from forge import b64u, b64u_decode, compact, hs256, unsigned
from joserfc import jwt as jose_jwt
from joserfc.jwk import OKPKey

from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import (
    SigningKey,
    enroll,
    make_assertion,
    new_jti,
    read_private_key,
)
from agentzt.identity.dpop import Prover, normalize_url
from agentzt.policy import load_policy
from agentzt.proxy import create_proxy_app
from agentzt.proxy.session import TokenSession
from agentzt.server import BackgroundServer, bind, url_of

AGENT = "agent-1"
OTHER = "agent-2"
ROLE = "demo-agent"
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REQUEST_ID = "x-agentzt-request-id"
MODELS = "/v1/models"
MESSAGES = "/v1/messages"
MESSAGE_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hello"}],
}
REQUIRED = 'dpop = "required"'

# Passed as a claim or header value to delete that member.
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


def ath_of(token: str) -> str:
    """RFC 9449 section 4.2 ``ath``, computed here rather than by the code under test."""
    return b64u(hashlib.sha256(token.encode("ascii")).digest())


def jwk_of(key: SigningKey) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": key.public.b64url}


def thumbprint(key: SigningKey) -> str:
    """RFC 7638 thumbprint, computed here from the JWK's required members."""
    canonical = json.dumps(jwk_of(key), sort_keys=True, separators=(",", ":"))
    return b64u(hashlib.sha256(canonical.encode("ascii")).digest())


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64u_decode(token.split(".")[1]))
    return claims


def private_d(paths: Paths, agent_id: str) -> str:
    """The agent's private key as a JWK ``d`` member, read from its PEM file."""
    pem = paths.identity_key(agent_id).read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return b64u(raw)


def make_paths(root: Path, mode: str) -> Paths:
    """Config from the repository unchanged (so ``dpop = "required"``) or with ``mode``."""
    config = root / "config"
    config.mkdir(parents=True)
    gateway_toml = (REPO / "config" / "gateway.toml").read_text()
    assert REQUIRED in gateway_toml, "the packaged default is expected to be dpop = required"
    # One gateway serves the whole module, so its token requests for agent-1 exceed the
    # packaged per-agent limit of 120 a minute; that limit has its own tests.
    roomy = gateway_toml.replace(
        "token_requests_per_minute = 120", "token_requests_per_minute = 100000"
    )
    assert roomy != gateway_toml
    (config / "gateway.toml").write_text(roomy.replace(REQUIRED, f'dpop = "{mode}"'))
    (config / "policy.toml").write_text((REPO / "config" / "policy.toml").read_text() + TEST_ROLES)
    paths = Paths(config_dir=config, home=root / "home")
    enroll_agent(paths, AGENT, ROLE)
    enroll_agent(paths, OTHER, ROLE)
    return paths


@dataclass
class Gw:
    """One running gateway, its client, and the two enrolled agents' keys."""

    paths: Paths
    gateway: Gateway
    url: str
    client: httpx.Client

    @property
    def key(self) -> SigningKey:
        return read_private_key(self.paths.identity_key(AGENT))

    @property
    def other(self) -> SigningKey:
        return read_private_key(self.paths.identity_key(OTHER))

    @property
    def issuer(self) -> str:
        return self.gateway.issuer

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/v1/token"

    # --- proofs, built by hand ---

    def proof_parts(
        self,
        method: str,
        url: str,
        token: str | None = None,
        *,
        key: SigningKey | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        base_header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk_of(key or self.key)}
        base_claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
        }
        if token is not None:
            base_claims["ath"] = ath_of(token)
        return changed(base_header, header or {}), changed(base_claims, claims)

    def proof(
        self,
        method: str,
        url: str,
        token: str | None = None,
        *,
        key: SigningKey | None = None,
        header: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        h, c = self.proof_parts(method, url, token, key=key, header=header, **claims)
        return compact(h, c, key or self.key)

    def call_proof(self, token: str, *, method: str = "GET", path: str = MODELS, **kw: Any) -> str:
        """A good proof for a resource call (override anything through ``kw``)."""
        return self.proof(method, self.issuer + path, token, **kw)

    def token_proof(self, **kw: Any) -> str:
        """A good proof for a token request."""
        return self.proof("POST", self.token_endpoint, **kw)

    # --- requests ---

    def request_token(self, proofs: list[str] | str | None) -> httpx.Response:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": make_assertion(
                self.key, AGENT, audience=self.token_endpoint, now=time.time()
            ),
        }
        headers = [("content-type", FORM)]
        if isinstance(proofs, str):
            proofs = [proofs]
        headers += [("dpop", p) for p in proofs or []]
        return self.client.post("/v1/token", content=urlencode(form), headers=headers)

    def dpop_token(self) -> str:
        response = self.request_token(self.token_proof())
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "DPoP"
        token: str = body["access_token"]
        return token

    def call(
        self, headers: list[tuple[str, str]], *, method: str = "GET", path: str = MODELS
    ) -> httpx.Response:
        body = MESSAGE_BODY if method == "POST" else None
        return self.client.request(method, path, json=body, headers=headers)

    def events(self, response: httpx.Response) -> list[dict[str, Any]]:
        return read_events(self.paths.audit_log, request_id=response.headers[REQUEST_ID])

    def mint(self, **claims: Any) -> str:
        """An access token minted here with the gateway's key and put in its ledger, for
        shapes the token endpoint would not issue in this mode."""
        policy = tomllib.loads(self.paths.policy_toml.read_text("utf-8"))["roles"][ROLE]
        scope = sorted(
            [f"model:{m}" for m in policy["models"]] + [f"tool:{t}" for t in policy["tools"]]
        )
        now = int(time.time())
        gateway_key = read_private_key(self.paths.gateway_key)
        header = {"alg": "EdDSA", "typ": "at+jwt", "kid": gateway_key.public.kid}
        payload = {
            "iss": self.issuer,
            "sub": AGENT,
            "aud": self.issuer,
            "client_id": AGENT,
            "role": ROLE,
            "scope": " ".join(scope),
            "iat": now,
            "exp": now + 300,
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        return in_ledger(self.gateway, compact(header, payload, gateway_key))


def dpop_auth(token: str, *proofs: str) -> list[tuple[str, str]]:
    return [("authorization", f"DPoP {token}")] + [("dpop", p) for p in proofs]


@contextlib.contextmanager
def serving(paths: Paths) -> Iterator[Gw]:
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock))
    server = BackgroundServer(create_app(gateway), sock).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            yield Gw(paths=paths, gateway=gateway, url=server.url, client=client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    """One gateway with the packaged settings (dpop = required) for the tests that change
    nothing but the replay cache, the ledger and the audit log."""
    with serving(make_paths(tmp_path_factory.mktemp("dpop"), "required")) as gw:
        yield gw


@pytest.fixture
def gateway_in(tmp_path: Path) -> Iterator[Callable[[str], Gw]]:
    """A fresh gateway of its own in the given dpop mode."""
    with contextlib.ExitStack() as stack:

        def start(mode: str) -> Gw:
            return stack.enter_context(serving(make_paths(tmp_path / mode, mode)))

        yield start


def assert_auth_error(response: httpx.Response, error: str) -> None:
    """A 401 in the Anthropic envelope with an RFC 9449 DPoP challenge naming ``error``."""
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'algs="EdDSA"' in challenge
    assert f'error="{error}"' in challenge


def assert_denied(
    gw: Gw, response: httpx.Response, action: str, reason: str, secrets_: tuple[str, ...] = ()
) -> None:
    """Audited as a deny, with a reason naming the failure, and no raw token in the log."""
    events = gw.events(response)
    assert events, "the refusal was not audited"
    assert {(e["action"], e["decision"], e["status"]) for e in events} == {
        (action, "deny", response.status_code)
    }
    assert any(reason.lower() in (e["reason"] or "").lower() for e in events), events
    log = gw.paths.audit_log.read_bytes()
    for secret in secrets_:
        assert secret.encode() not in log
        assert secret.rsplit(".", 1)[-1].encode() not in log


# --- 1. happy path ---------------------------------------------------------------------


def test_token_endpoint_issues_key_bound_token(shared: Gw) -> None:
    response = shared.request_token(shared.token_proof())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    claims = claims_of(body["access_token"])
    assert claims["cnf"] == {"jkt": shared.key.public.kid}
    assert claims["cnf"]["jkt"] == thumbprint(shared.key)
    events = shared.events(response)
    # The decision is written before the token is handed out, then the issuance itself.
    assert [(e["action"], e["decision"], e["status"]) for e in events] == [
        ("token.issue.authorized", "allow", 0),
        ("token.issue", "allow", 200),
    ]
    assert all(e["meta"]["cnf"] == {"jkt": thumbprint(shared.key)} for e in events)


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [("GET", MODELS, "model.list"), ("POST", MESSAGES, "model.call")],
    ids=["get-models", "post-messages"],
)
def test_resource_call_with_good_proof(shared: Gw, method: str, path: str, action: str) -> None:
    token = shared.dpop_token()
    # The same token serves call after call, each with its own fresh proof.
    for _ in range(2):
        proof = shared.call_proof(token, method=method, path=path)
        response = shared.call(dpop_auth(token, proof), method=method, path=path)
        assert response.status_code == 200, response.text
        # Listing models is read-only (one event); a model call is audited before it
        # reaches the upstream, then its outcome.
        decided = [(f"{action}.authorized", "allow")] if method == "POST" else []
        assert [(e["action"], e["decision"]) for e in shared.events(response)] == [
            *decided,
            (action, "allow"),
        ]
    if method == "GET":
        assert {m["id"] for m in response.json()["data"]} == {
            "claude-sonnet-4-6",
            "claude-haiku-4-5",
        }
    else:
        assert response.json()["type"] == "message"


def test_proxy_prover_proofs_are_accepted(shared: Gw) -> None:
    prover = Prover(shared.key, new_jti)
    response = shared.request_token(prover.proof("POST", shared.token_endpoint, now=time.time()))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    proof = prover.proof("GET", shared.issuer + MODELS, now=time.time(), access_token=token)
    assert shared.call(dpop_auth(token, proof)).status_code == 200


def test_calls_through_the_proxy_are_dpop_bound(shared: Gw) -> None:
    app = create_proxy_app(agent_id=AGENT, key=shared.key, gateway_url=shared.url)
    server = BackgroundServer(app, bind("127.0.0.1", 0)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            response = client.post(MESSAGES, json=MESSAGE_BODY)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    events = shared.events(response)
    assert [(e["action"], e["decision"]) for e in events] == [
        ("model.call.authorized", "allow"),
        ("model.call", "allow"),
    ]
    issued = read_events(shared.paths.audit_log, agent_id=AGENT)
    jti = events[-1]["meta"]["jti"]
    assert events[0]["meta"]["jti"] == jti
    [issue] = [e for e in issued if e["action"] == "token.issue" and e["meta"]["jti"] == jti]
    assert issue["meta"]["cnf"] == {"jkt": thumbprint(shared.key)}


# --- 2. resource-call proof failures ----------------------------------------------------

Headers = Callable[[Gw, str], list[tuple[str, str]]]


def with_proof(**kw: Any) -> Headers:
    """``DPoP <token>`` with one proof for GET /v1/models, changed by ``kw``."""
    return lambda g, t: dpop_auth(t, g.call_proof(t, **kw))


def with_parts(sign: Callable[[Gw, dict[str, Any], dict[str, Any]], str], **kw: Any) -> Headers:
    def build(g: Gw, t: str) -> list[tuple[str, str]]:
        h, c = g.proof_parts("GET", g.issuer + MODELS, t, **kw)
        return dpop_auth(t, sign(g, h, c))

    return build


def other_port(g: Gw) -> str:
    host, port = g.issuer.rsplit(":", 1)
    return f"{host}:{int(port) % 65535 + 1}{MODELS}"


PROOF_FAILURES: list[tuple[str, Headers, str]] = [
    ("missing-proof", lambda g, t: dpop_auth(t), "no DPoP proof"),
    (
        "two-proofs",
        lambda g, t: dpop_auth(t, g.call_proof(t), g.call_proof(t)),
        "more than one DPoP proof",
    ),
    (
        "other-agents-key",
        lambda g, t: dpop_auth(t, g.call_proof(t, key=g.other)),
        "another key than the bound one",
    ),
    (
        "unenrolled-key",
        lambda g, t: dpop_auth(t, g.call_proof(t, key=SigningKey.generate())),
        "another key than the bound one",
    ),
    (
        "right-jwk-signed-by-other-key",
        lambda g, t: dpop_auth(t, g.call_proof(t, key=g.other, header={"jwk": jwk_of(g.key)})),
        "signature does not verify",
    ),
    ("htm-post", with_proof(htm="POST"), "htm"),
    ("htm-lowercase", with_proof(htm="get"), "htm"),
    ("htu-path", lambda g, t: dpop_auth(t, g.call_proof(t, htu=g.issuer + MESSAGES)), "htu"),
    (
        "htu-host",
        lambda g, t: dpop_auth(
            t, g.call_proof(t, htu=g.issuer.replace("127.0.0.1", "localhost") + MODELS)
        ),
        "htu",
    ),
    (
        "htu-scheme",
        lambda g, t: dpop_auth(
            t, g.call_proof(t, htu=g.issuer.replace("http:", "https:") + MODELS)
        ),
        "htu",
    ),
    ("htu-port", lambda g, t: dpop_auth(t, g.call_proof(t, htu=other_port(g))), "htu"),
    ("htu-relative", with_proof(htu=MODELS), "htu"),
    ("htu-not-a-string", with_proof(htu=["x"]), "htu"),
    ("iat-stale", lambda g, t: dpop_auth(t, g.call_proof(t, iat=int(time.time()) - 200)), "old"),
    (
        "iat-future",
        lambda g, t: dpop_auth(t, g.call_proof(t, iat=int(time.time()) + 120)),
        "future",
    ),
    ("iat-string", with_proof(iat="now"), "iat"),
    ("ath-wrong", with_proof(ath=ath_of("another.token.value")), "ath"),
    ("ath-missing", with_proof(ath=DROP), "ath"),
    ("ath-is-the-token", lambda g, t: dpop_auth(t, g.call_proof(t, ath=t)), "ath"),
    (
        "jwk-with-d",
        lambda g, t: dpop_auth(
            t, g.call_proof(t, header={"jwk": {**jwk_of(g.key), "d": private_d(g.paths, AGENT)}})
        ),
        "private key",
    ),
    (
        "jwk-unknown-member",
        lambda g, t: dpop_auth(t, g.call_proof(t, header={"jwk": {**jwk_of(g.key), "ext": True}})),
        "members",
    ),
    ("jwk-missing", with_proof(header={"jwk": DROP}), "jwk"),
    (
        "jwk-not-okp",
        lambda g, t: dpop_auth(
            t, g.call_proof(t, header={"jwk": {**jwk_of(g.key), "crv": "Ed448"}})
        ),
        "jwk",
    ),
    (
        "jku-header",
        with_proof(header={"jku": "http://127.0.0.1:9/jwks.json"}),
        "key material",
    ),
    (
        "alg-hs256-public-key-secret",
        with_parts(
            lambda g, h, c: hs256({**h, "alg": "HS256"}, c, g.key.public.raw),
        ),
        "alg",
    ),
    ("alg-none", with_parts(lambda g, h, c: unsigned({**h, "alg": "none"}, c)), "alg"),
    ("typ-jwt", with_proof(header={"typ": "JWT"}), "typ"),
    ("typ-missing", with_proof(header={"typ": DROP}), "typ"),
    ("typ-access-token", with_proof(header={"typ": "at+jwt"}), "typ"),
    ("jti-missing", with_proof(jti=DROP), "jti"),
    ("jti-empty", with_proof(jti=""), "jti"),
    ("htm-missing", with_proof(htm=DROP), "htm"),
    ("htu-missing", with_proof(htu=DROP), "htu"),
    ("iat-missing", with_proof(iat=DROP), "iat"),
    ("larger-than-8kib", with_proof(pad="p" * 8192), "too large"),
    ("not-a-jws", lambda g, t: dpop_auth(t, "not.a.jws"), "DPoP proof"),
    (
        "bound-token-as-bearer",
        lambda g, t: [("authorization", f"Bearer {t}"), ("dpop", g.call_proof(t))],
        "presented as a bearer token",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason"),
    [(build, reason) for _, build, reason in PROOF_FAILURES],
    ids=[name for name, _, _ in PROOF_FAILURES],
)
def test_resource_call_proof_failure_is_401(shared: Gw, build: Headers, reason: str) -> None:
    token = shared.dpop_token()
    response = shared.call(build(shared, token))
    assert_auth_error(response, "invalid_dpop_proof")
    assert "data" not in response.json()
    assert_denied(shared, response, "model.list", reason, (token,))
    # The refusal did not spend the token: a proper proof still gets through.
    again = shared.call(dpop_auth(token, shared.call_proof(token)))
    assert again.status_code == 200, again.text


def test_replayed_proof_is_401(shared: Gw) -> None:
    token = shared.dpop_token()
    proof = shared.call_proof(token)
    first = shared.call(dpop_auth(token, proof))
    assert first.status_code == 200, first.text
    second = shared.call(dpop_auth(token, proof))
    assert_auth_error(second, "invalid_dpop_proof")
    assert_denied(shared, second, "model.list", "already", (token, proof))


def test_replayed_proof_on_post_is_401(shared: Gw) -> None:
    token = shared.dpop_token()
    proof = shared.call_proof(token, method="POST", path=MESSAGES)
    first = shared.call(dpop_auth(token, proof), method="POST", path=MESSAGES)
    assert first.status_code == 200, first.text
    second = shared.call(dpop_auth(token, proof), method="POST", path=MESSAGES)
    assert_auth_error(second, "invalid_dpop_proof")
    assert "content" not in second.json()


def test_token_bound_to_another_key_is_401(shared: Gw) -> None:
    """A token for agent-1 whose ``jkt`` is agent-2's key: refused with either key's proof."""
    token = shared.mint(cnf={"jkt": shared.other.public.kid})
    for key in (shared.key, shared.other):
        response = shared.call(dpop_auth(token, shared.call_proof(token, key=key)))
        assert_auth_error(response, "invalid_token")
        assert_denied(shared, response, "model.list", "no longer registered")


def test_bearer_token_refused_when_dpop_required(shared: Gw) -> None:
    token = shared.mint()
    as_bearer = shared.call([("authorization", f"Bearer {token}")])
    assert_auth_error(as_bearer, "invalid_dpop_proof")
    assert_denied(shared, as_bearer, "model.list", "dpop = required", (token,))
    # Nor does a proof make an unbound token usable.
    as_dpop = shared.call(dpop_auth(token, shared.call_proof(token)))
    assert_auth_error(as_dpop, "invalid_token")
    # Control: the same shape with a cnf.jkt for the agent's key is accepted.
    bound = shared.mint(cnf={"jkt": shared.key.public.kid})
    assert shared.call(dpop_auth(bound, shared.call_proof(bound))).status_code == 200


# --- 3. accepted normalizations ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://EXAMPLE.com:80/a%7eb?x#y", "http://example.com/a~b"),
        ("HTTPS://Example.COM:443/p", "https://example.com/p"),
        ("https://example.com:8443/p", "https://example.com:8443/p"),
        ("http://example.com:443/p", "http://example.com:443/p"),
        ("https://example.com:80/p", "https://example.com:80/p"),
        ("http://example.com/a%2fb", "http://example.com/a%2Fb"),
        ("http://example.com/%41%5a%2d%5F%2E", "http://example.com/AZ-_."),
        ("http://example.com/a%20b", "http://example.com/a%20b"),
        ("http://example.com", "http://example.com/"),
        ("http://example.com?q=1", "http://example.com/"),
        ("http://[::1]:80/x", "http://[::1]/x"),
        ("http://127.0.0.1:8700/v1/models", "http://127.0.0.1:8700/v1/models"),
    ],
    ids=[
        "case-default-port-tilde-query-fragment",
        "https-default-port",
        "https-other-port-kept",
        "http-on-443-kept",
        "https-on-80-kept",
        "encoded-slash-stays-upper-cased",
        "unreserved-decoded",
        "space-stays-encoded",
        "empty-path",
        "query-without-path",
        "ipv6",
        "loopback-port",
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@example.com/a",
        "http://user@example.com/a",
        "ftp://example.com/a",
        "ws://example.com/a",
        "/v1/models",
        "http:///v1/models",
        "http://exämple.com/a",
        "http://example.com/" + "a" * 2100,
    ],
    ids=[
        "userinfo",
        "user-only",
        "ftp",
        "websocket",
        "relative",
        "no-host",
        "non-ascii",
        "too-long",
    ],
)
def test_normalize_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_url(url)


@pytest.mark.parametrize(
    ("htu", "request_path"),
    [
        (lambda issuer: issuer.upper() + MODELS, MODELS),
        (lambda issuer: issuer + MODELS + "?q=1#frag", MODELS),
        (lambda issuer: issuer + MODELS, MODELS + "?q=1"),
        (lambda issuer: issuer + "/v1/%6dodels", MODELS),
    ],
    ids=["upper-case-scheme-and-host", "htu-with-query", "request-with-query", "percent-encoded"],
)
def test_htu_normalizations_accepted(
    shared: Gw, htu: Callable[[str], str], request_path: str
) -> None:
    token = shared.dpop_token()
    proof = shared.call_proof(token, htu=htu(shared.issuer))
    response = shared.call(dpop_auth(token, proof), path=request_path)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "extra",
    [
        {"kid": "agent-1-key"},
        {"alg": "EdDSA", "use": "sig"},
        {"key_ops": ["verify"]},
    ],
    ids=["kid", "alg-and-use", "key-ops"],
)
def test_jwk_with_optional_public_members_is_accepted(shared: Gw, extra: dict[str, Any]) -> None:
    token = shared.dpop_token()
    proof = shared.call_proof(token, header={"jwk": {**jwk_of(shared.key), **extra}})
    response = shared.call(dpop_auth(token, proof))
    assert response.status_code == 200, response.text


def test_scheme_is_case_insensitive(shared: Gw) -> None:
    token = shared.dpop_token()
    response = shared.call([("authorization", f"dpop {token}"), ("dpop", shared.call_proof(token))])
    assert response.status_code == 200, response.text


def test_iat_within_leeway_is_accepted(shared: Gw) -> None:
    token = shared.dpop_token()
    for iat in (int(time.time()) - 75, int(time.time()) + 20):
        response = shared.call(dpop_auth(token, shared.call_proof(token, iat=iat)))
        assert response.status_code == 200, (iat, response.text)


# --- 4. token endpoint --------------------------------------------------------------------

TokenProofs = Callable[[Gw], list[str]]


def changed_alg(
    parts: tuple[dict[str, Any], dict[str, Any]], alg: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims = parts
    return {**header, "alg": alg}, claims


TOKEN_FAILURES: list[tuple[str, TokenProofs]] = [
    ("no-proof", lambda g: []),
    ("other-agents-key", lambda g: [g.token_proof(key=g.other)]),
    ("unenrolled-key", lambda g: [g.token_proof(key=SigningKey.generate())]),
    ("htu-resource", lambda g: [g.token_proof(htu=g.issuer + MODELS)]),
    ("htm-get", lambda g: [g.token_proof(htm="GET")]),
    ("iat-stale", lambda g: [g.token_proof(iat=int(time.time()) - 200)]),
    ("typ-jwt", lambda g: [g.token_proof(header={"typ": "JWT"})]),
    ("jwk-with-d", lambda g: [g.token_proof(header={"jwk": {**jwk_of(g.key), "d": "x"}})]),
    (
        "alg-none",
        lambda g: [unsigned(*changed_alg(g.proof_parts("POST", g.token_endpoint), "none"))],
    ),
    ("two-proofs", lambda g: [g.token_proof(), g.token_proof()]),
]


@pytest.mark.parametrize(
    "proofs", [p for _, p in TOKEN_FAILURES], ids=[name for name, _ in TOKEN_FAILURES]
)
def test_token_request_proof_failure_is_400(shared: Gw, proofs: TokenProofs) -> None:
    response = shared.request_token(proofs(shared))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_dpop_proof"
    assert "access_token" not in body
    assert response.headers["cache-control"] == "no-store"
    assert_denied(shared, response, "token.reject", "DPoP")


def test_replayed_token_request_proof_is_400(shared: Gw) -> None:
    proof = shared.token_proof()
    first = shared.request_token(proof)
    assert first.status_code == 200, first.text
    # A new client assertion, the same proof.
    second = shared.request_token(proof)
    assert second.status_code == 400, second.text
    assert second.json()["error"] == "invalid_dpop_proof"
    assert_denied(shared, second, "token.reject", "already")


def test_metadata_advertises_dpop(shared: Gw) -> None:
    meta = shared.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["dpop_signing_alg_values_supported"] == ["EdDSA"]
    assert meta["revocation_endpoint"] == shared.issuer + "/v1/revoke"
    assert meta["introspection_endpoint"] == shared.issuer + "/v1/introspect"


def test_optional_mode(gateway_in: Callable[[str], Gw]) -> None:
    gw = gateway_in("optional")
    meta = gw.client.get("/.well-known/oauth-authorization-server").json()
    assert meta["dpop_signing_alg_values_supported"] == ["EdDSA"]

    # No proof: a bearer token, good with the Bearer scheme only.
    response = gw.request_token(None)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    token = response.json()["access_token"]
    assert "cnf" not in claims_of(token)
    assert gw.call([("authorization", f"Bearer {token}")]).status_code == 200
    refused = gw.call(dpop_auth(token, gw.call_proof(token)))
    assert_auth_error(refused, "invalid_token")
    assert_denied(gw, refused, "model.list", "not key-bound", (token,))

    # With a proof: a DPoP token, which still never passes as a bearer token.
    bound = gw.dpop_token()
    assert claims_of(bound)["cnf"] == {"jkt": thumbprint(gw.key)}
    assert gw.call(dpop_auth(bound, gw.call_proof(bound))).status_code == 200
    as_bearer = gw.call([("authorization", f"Bearer {bound}")])
    assert_auth_error(as_bearer, "invalid_dpop_proof")
    assert_auth_error(gw.call(dpop_auth(bound)), "invalid_dpop_proof")
    # A bad proof is refused rather than silently downgraded to a bearer token.
    bad = gw.request_token(gw.token_proof(key=gw.other))
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_dpop_proof"


def test_off_mode(gateway_in: Callable[[str], Gw]) -> None:
    gw = gateway_in("off")
    meta = gw.client.get("/.well-known/oauth-authorization-server").json()
    assert "dpop_signing_alg_values_supported" not in meta
    assert meta["revocation_endpoint"] == gw.issuer + "/v1/revoke"
    assert meta["introspection_endpoint"] == gw.issuer + "/v1/introspect"

    # The DPoP header is ignored, good or bad: every token is a bearer token.
    for proofs in ([gw.token_proof()], ["garbage"], [gw.token_proof(), gw.token_proof()]):
        response = gw.request_token(proofs)
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "Bearer"
        token = response.json()["access_token"]
        assert "cnf" not in claims_of(token)
        assert gw.call([("authorization", f"Bearer {token}")]).status_code == 200
    refused = gw.call(dpop_auth(token, gw.call_proof(token)))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer ")


# --- 5. a token stolen from the proxy's memory ---------------------------------------------


def proxy_session_token(gw: Gw) -> tuple[str, dict[str, str]]:
    """What the proxy holds in memory: a TokenSession's token, fetched exactly as the
    proxy fetches it, and the headers the proxy would send with it."""

    async def fetch() -> tuple[str, bool, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            session = TokenSession(agent_id=AGENT, key=gw.key, gateway_url=gw.url, http=http)
            token = await session.token()
            return token.value, token.dpop, session.authorization(token, "GET", MODELS)

    value, dpop, headers = asyncio.run(fetch())
    assert dpop
    return value, headers


def test_stolen_token_is_useless_without_the_key(shared: Gw) -> None:
    stolen, proxy_headers = proxy_session_token(shared)
    assert claims_of(stolen)["cnf"] == {"jkt": thumbprint(shared.key)}
    attempts = {
        "dpop-without-proof": dpop_auth(stolen),
        "as-bearer": [("authorization", f"Bearer {stolen}")],
        "proof-by-other-agent": dpop_auth(stolen, shared.call_proof(stolen, key=shared.other)),
        "proof-by-thiefs-key": dpop_auth(
            stolen, shared.call_proof(stolen, key=SigningKey.generate())
        ),
    }
    for name, headers in attempts.items():
        response = shared.call(headers)
        assert response.status_code == 401, name
        assert "data" not in response.json(), name
        assert_denied(shared, response, "model.list", "DPoP", (stolen,))
    # The holder of the key gets through: with the proxy's own headers, and with a proof
    # made here.
    assert shared.call(list(proxy_headers.items())).status_code == 200
    assert shared.call(dpop_auth(stolen, shared.call_proof(stolen))).status_code == 200


# --- 6. re-enrollment retires tokens bound to the old key -----------------------------------


def test_reenrolled_agent_old_tokens_refused(gateway_in: Callable[[str], Gw]) -> None:
    gw = gateway_in("required")
    old_key = gw.key
    old_token = gw.dpop_token()
    assert gw.call(dpop_auth(old_token, gw.call_proof(old_token, key=old_key))).status_code == 200

    enroll(
        registry_path=gw.paths.agents_toml,
        key_path=gw.paths.identity_key(AGENT),
        agent_id=AGENT,
        role=ROLE,
        known_roles=load_policy(gw.paths.policy_toml).roles,
        description="re-keyed after a suspected compromise",
        force=True,
    )
    new_key = gw.key
    assert new_key.public.kid != old_key.public.kid

    for key in (old_key, new_key):
        response = gw.call(dpop_auth(old_token, gw.call_proof(old_token, key=key)))
        assert_auth_error(response, "invalid_token")
        assert_denied(gw, response, "model.list", "no longer registered", (old_token,))
    # Nor can the old key get a new token.
    refused = gw.request_token(gw.token_proof(key=old_key))
    assert refused.status_code in (400, 401)
    assert "access_token" not in refused.json()
    # The new key works end to end.
    new_token = gw.dpop_token()
    assert claims_of(new_token)["cnf"] == {"jkt": thumbprint(new_key)}
    assert gw.call(dpop_auth(new_token, gw.call_proof(new_token))).status_code == 200


# --- 7. interop: proofs made with joserfc ---------------------------------------------------


def joserfc_proof(key: OKPKey, method: str, url: str, token: str | None = None) -> str:
    public = key.as_dict(private=False)
    assert "d" not in public
    jwk = {name: public[name] for name in ("kty", "crv", "x")}
    claims: dict[str, Any] = {
        "jti": secrets.token_urlsafe(16),
        "htm": method,
        "htu": url,
        "iat": int(time.time()),
    }
    if token is not None:
        claims["ath"] = ath_of(token)
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}
    with warnings.catch_warnings():
        # joserfc 1.x flags "EdDSA" as superseded by RFC 9864's "Ed25519", which RFC 9449
        # deployments (and this gateway) still name EdDSA.
        warnings.simplefilter("ignore")
        return jose_jwt.encode(header, claims, key, algorithms=["EdDSA"])


def test_joserfc_proofs_interoperate(shared: Gw) -> None:
    key = OKPKey.import_key(shared.paths.identity_key(AGENT).read_bytes())
    assert key.as_dict(private=False)["x"] == shared.key.public.b64url

    response = shared.request_token(joserfc_proof(key, "POST", shared.token_endpoint))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    token = response.json()["access_token"]
    # joserfc's RFC 7638 thumbprint is the token's binding.
    assert claims_of(token)["cnf"]["jkt"] == key.thumbprint()

    for method, path in (("GET", MODELS), ("POST", MESSAGES)):
        proof = joserfc_proof(key, method, shared.issuer + path, token)
        call = shared.call(dpop_auth(token, proof), method=method, path=path)
        assert call.status_code == 200, call.text

    # Control: a joserfc proof by agent-2's key does not pass for agent-1's token.
    other = OKPKey.import_key(shared.paths.identity_key(OTHER).read_bytes())
    refused = shared.call(
        dpop_auth(token, joserfc_proof(other, "GET", shared.issuer + MODELS, token))
    )
    assert_auth_error(refused, "invalid_dpop_proof")


# --- 8. the challenge on 401 ----------------------------------------------------------------


def test_www_authenticate_challenge(shared: Gw) -> None:
    token = shared.dpop_token()
    proof_failure = shared.call(dpop_auth(token, shared.call_proof(token, htm="POST")))
    assert proof_failure.status_code == 401
    challenge = proof_failure.headers["www-authenticate"]
    assert challenge.startswith("DPoP")
    assert 'error="invalid_dpop_proof"' in challenge
    assert 'algs="EdDSA"' in challenge

    # A bad token (not the proof) is invalid_token, still with the DPoP challenge.
    garbage = shared.call(dpop_auth("not-a-token", shared.call_proof("not-a-token")))
    assert garbage.status_code == 401
    assert garbage.headers["www-authenticate"].startswith("DPoP")
    assert 'error="invalid_token"' in garbage.headers["www-authenticate"]
    nothing = shared.call([])
    assert nothing.status_code == 401
    assert nothing.headers["www-authenticate"].startswith("DPoP")
