"""JWT attacks, over real HTTP against one real gateway per module (PROTOCOL.md, "Tokens").

Every forged, confused or malformed token is presented both ways a token reaches the
gateway: as a client assertion at ``POST /v1/token`` and as a bearer access token on
``GET /v1/models``. Each must be refused with 400 or 401 (never 500) and a JSON body,
audited as a deny under the request's id, without the token reaching the audit log, and
without the gateway fetching anything the token names (``jku``, ``x5u``, a URL in ``kid``).

The tokens are built by hand (``forge``), each one a mutation of a baseline that
``test_baseline_tokens_are_accepted`` shows the gateway accepts, so every refusal below
is caused by the one thing the case changes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from conftest import REPO, TEST_ROLES, allow_bearer, enroll_agent, in_ledger
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from forge import b64u, b64u_decode, compact, public_pem

from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.gateway import Gateway, create_app
from agentzt.identity import SigningKey, VerifyKey, make_assertion, read_private_key
from agentzt.identity.dpop import Prover
from agentzt.identity.tokens import new_jti
from agentzt.server import MAX_HEADER_BYTES, BackgroundServer, bind, url_of

AGENT = "agent-1"
OTHER_AGENT = "agent-2"
ROLE = "demo-agent"
FORM = "application/x-www-form-urlencoded"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
REQUEST_ID = "x-agentzt-request-id"
MAX_TOKEN_CHARS = 8192  # agentzt.identity.jws: larger tokens are refused before parsing

# The two places a token is presented, and the audit action a refusal there is logged as.
ASSERTION = "assertion"
ACCESS = "access"
KINDS = (ASSERTION, ACCESS)
DENY_ACTION = {ASSERTION: "token.reject", ACCESS: "model.list"}

# Passed as a header parameter or claim value to delete it.
DROP: Any = object()


@dataclass(frozen=True)
class Raw:
    """JSON text written into a header or payload verbatim (``NaN``, ``1e400``, ...)."""

    text: str


def encode_json(value: Any) -> bytes:
    """Compact JSON like any JOSE library writes, with ``Raw`` values spliced in as is."""
    raws: list[str] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, Raw):
            raws.append(obj.text)
            return f"\x00raw{len(raws) - 1}\x00"
        raise TypeError(f"cannot encode {type(obj).__name__}")

    text = json.dumps(value, separators=(",", ":"), default=default)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{index}\x00"), raw)
    return text.encode("utf-8")


def with_duplicate(value: dict[str, Any], name: str, duplicate: Any, *, first: bool) -> bytes:
    """``value`` as JSON plus a second member ``name`` (written as is, so it may be an
    escaped spelling), before the original (``first``) or after it."""
    body = encode_json(value)[1:-1]
    extra = json.dumps(name).encode() if not name.startswith('"') else name.encode()
    pair = extra + b":" + encode_json(duplicate)
    return b"{" + (pair + b"," + body if first else body + b"," + pair) + b"}"


def changed(base: dict[str, Any], changes: dict[str, Any] | None) -> dict[str, Any]:
    result = dict(base)
    for name, value in (changes or {}).items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def signing_input(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes) -> str:
    h = header if isinstance(header, bytes) else encode_json(header)
    p = payload if isinstance(payload, bytes) else encode_json(payload)
    return f"{b64u(h)}.{b64u(p)}"


def sign(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, key: SigningKey) -> str:
    h = header if isinstance(header, bytes) else encode_json(header)
    p = payload if isinstance(payload, bytes) else encode_json(payload)
    return compact(h, p, key)


def okp_jwk(raw: bytes) -> dict[str, str]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}


# --- a loopback server that records every connection: nothing may ever reach it ---------


class FetchRecorder:
    """Serves the attacker's JWKS at every path and records each connection and request.

    ``jku``, ``x5u`` and URL-shaped ``kid`` values point here; a gateway that fetched
    any of them would find a key that verifies the forged token.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self.hits: list[str] = []
        hits = self.hits
        body = json.dumps(document).encode("utf-8")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_POST = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                hits.append(f"connection from {client_address}")
                return True

        self._server = Server(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- the shared gateway ----------------------------------------------------------------


@dataclass
class Env:
    paths: Paths
    gateway: Gateway
    client: httpx.Client
    agent: SigningKey
    other_agent: SigningKey
    gateway_key: SigningKey
    # The gateway's public key as an attacker gets it: from /.well-known/jwks.json.
    gateway_jwk: dict[str, str]
    attacker: SigningKey
    attacker_cert: bytes
    recorder: FetchRecorder
    _issued: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.gateway.issuer

    @property
    def token_endpoint(self) -> str:
        return self.gateway.token_endpoint

    def audience(self, kind: str) -> str:
        return self.token_endpoint if kind == ASSERTION else self.issuer

    def expected_iss(self, kind: str) -> str:
        return AGENT if kind == ASSERTION else self.issuer

    def max_lifetime(self, kind: str) -> int:
        tokens = self.gateway.settings.tokens
        return (
            tokens.assertion_max_age_seconds
            if kind == ASSERTION
            else tokens.access_token_ttl_seconds
        )

    def signer(self, kind: str) -> SigningKey:
        """The key a genuine token of ``kind`` is signed with."""
        return self.agent if kind == ASSERTION else self.gateway_key

    def public_raw(self, kind: str) -> bytes:
        """The public key that verifies ``kind``, as an attacker knows it."""
        if kind == ASSERTION:
            return self.agent.public.raw
        return b64u_decode(self.gateway_jwk["x"])

    def legit_kid(self, kind: str) -> str:
        return AGENT if kind == ASSERTION else self.gateway_key.public.kid

    def parts(
        self,
        kind: str,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The header and claims of a genuine token of ``kind``, then ``changes``."""
        now = int(time.time())
        if kind == ASSERTION:
            base_header = {"alg": "EdDSA", "typ": "JWT", "kid": AGENT}
            base_claims: dict[str, Any] = {"iss": AGENT, "sub": AGENT}
        else:
            base_header = {"alg": "EdDSA", "typ": "at+jwt", "kid": self.gateway_key.public.kid}
            base_claims = {
                "iss": self.issuer,
                "sub": AGENT,
                "client_id": AGENT,
                "role": ROLE,
                "scope": "model:claude-haiku-4-5 tool:kb.search",
            }
        base_claims.update(
            aud=self.audience(kind), iat=now, exp=now + self.max_lifetime(kind), jti=new_jti()
        )
        return changed(base_header, header), changed(base_claims, claims)

    def token(
        self,
        kind: str,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        h, c = self.parts(kind, header, claims)
        return sign(h, c, key or self.signer(kind))

    # Genuine tokens of each type, obtained over HTTP once per module.

    def access_token(self) -> str:
        if "access" not in self._issued:
            assertion = make_assertion(
                self.agent, AGENT, audience=self.token_endpoint, now=time.time()
            )
            response = self.client.post(
                "/v1/token",
                content=urlencode(token_form(assertion)),
                headers={"content-type": FORM},
            )
            assert response.status_code == 200, response.text
            self._issued["access"] = response.json()["access_token"]
        return self._issued["access"]

    def elevation_grant(self) -> str:
        if "grant" not in self._issued:
            response = self.client.post(
                "/v1/elevate",
                json={"kind": "tool", "name": "email.send", "reason": "security suite"},
                headers={"authorization": f"Bearer {self.access_token()}"},
            )
            assert response.status_code == 200, response.text
            self._issued["grant"] = response.json()["elevation_grant"]
        return self._issued["grant"]

    def dpop_proof(self, method: str, url: str) -> str:
        return Prover(self.agent, new_jti).proof(method, url, now=time.time())


def token_form(assertion: str | bytes) -> dict[str, str | bytes]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def self_signed_certificate(seed: bytes) -> bytes:
    """A DER certificate for the attacker's key, as an ``x5c`` header would carry it."""
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, AGENT)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, algorithm=None)
    )
    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One gateway for the module (dpop = "optional", as the ``paths`` fixture has it, so
    bearer tokens reach the token checks), with agent-1 and agent-2 enrolled."""
    root = tmp_path_factory.mktemp("security-jwt")
    config = root / "config"
    config.mkdir()
    (config / "gateway.toml").write_text(
        # Hundreds of deliberate failures from one address: past the packaged limit of 60
        # a minute they would be answered 429 (tests/security/test_rate_limits.py).
        allow_bearer((REPO / "config" / "gateway.toml").read_text()).replace(
            "token_failures_per_minute_per_address = 60",
            "token_failures_per_minute_per_address = 100000",
        )
    )
    (config / "policy.toml").write_text((REPO / "config" / "policy.toml").read_text() + TEST_ROLES)
    paths = Paths(config_dir=config, home=root / "home")
    agent = enroll_agent(paths, AGENT, ROLE)
    other_agent = enroll_agent(paths, OTHER_AGENT, ROLE)
    # The module-scoped gateway starts before the per-test guardrail fixture runs, so it
    # gets an environment without a hosted guardrail key instead.
    offline = {k: v for k, v in os.environ.items() if k != "OPENGUARDRAILS_API_KEY"}
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock), env=offline)
    server = BackgroundServer(create_app(gateway), sock).start()
    seed = secrets.token_bytes(32)
    attacker = SigningKey(seed)
    recorder = FetchRecorder(
        {"keys": [{**okp_jwk(attacker.public.raw), "kid": attacker.public.kid}]}
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            (gateway_jwk,) = client.get("/.well-known/jwks.json").json()["keys"]
            yield Env(
                paths=paths,
                gateway=gateway,
                client=client,
                agent=agent,
                other_agent=other_agent,
                gateway_key=read_private_key(paths.gateway_key),
                gateway_jwk=gateway_jwk,
                attacker=attacker,
                attacker_cert=self_signed_certificate(seed),
                recorder=recorder,
            )
    finally:
        server.stop()
        recorder.close()


# --- presenting a token and checking the refusal ---------------------------------------


def present(env: Env, kind: str, token: str | bytes) -> tuple[httpx.Response, str]:
    request_id = f"sec-jwt-{uuid.uuid4().hex}"
    if kind == ASSERTION:
        response = env.client.post(
            "/v1/token",
            content=urlencode(token_form(token)),
            headers={"content-type": FORM, REQUEST_ID: request_id},
        )
    else:
        value = token if isinstance(token, bytes) else token.encode("utf-8")
        # HTTP forbids a header value ending in a space, so an empty token is "Bearer".
        authorization = b"Bearer " + value if value else b"Bearer"
        response = env.client.get(
            "/v1/models",
            headers={
                b"authorization": authorization,
                REQUEST_ID.encode("ascii"): request_id.encode("ascii"),
            },
        )
    return response, request_id


def assert_refused(env: Env, kind: str, token: str | bytes) -> httpx.Response:
    """Present ``token`` as ``kind`` and check the refusal end to end."""
    response, request_id = present(env, kind, token)
    status = response.status_code
    assert status in (400, 401), f"{kind} answered {status}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if kind == ASSERTION:
        assert set(body) == {"error", "error_description"}, body
        assert body["error"] == ("invalid_client" if status == 401 else "invalid_request"), body
    else:
        assert body["type"] == "error", body
        assert body["request_id"] == request_id
        assert body["error"]["type"] in ("authentication_error", "invalid_request_error"), body
    assert response.headers[REQUEST_ID] == request_id

    events = read_events(env.paths.audit_log, request_id=request_id)
    assert events, f"no audit event for {request_id}"
    last = events[-1]
    assert (last["action"], last["decision"], last["status"]) == (DENY_ACTION[kind], "deny", status)
    assert all(event["decision"] == "deny" for event in events)

    # The token itself never reaches the log; its signature segment is unique to it.
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    signature = text.rsplit(".", 1)[-1]
    if len(signature) >= 20:
        assert signature.encode("utf-8") not in env.paths.audit_log.read_bytes()
    assert env.recorder.hits == [], "the gateway fetched a URL named in a token"
    return response


Maker = Callable[[Env, str], "str | bytes"]
Case = tuple[str, Maker]


def for_kinds(table: list[Case], kinds: tuple[str, ...] = KINDS) -> list[Any]:
    return [pytest.param(kind, make, id=f"{kind}-{name}") for kind in kinds for name, make in table]


def header_changes(changes: Callable[[Env, str], dict[str, Any]]) -> Maker:
    """Signed by the genuine key; only the header differs."""
    return lambda env, kind: env.token(kind, header=changes(env, kind))


def claim_changes(changes: Callable[[Env, str], dict[str, Any]]) -> Maker:
    """Signed by the genuine key; only the claims differ."""
    return lambda env, kind: env.token(kind, claims=changes(env, kind))


# --- the baseline: the builders make tokens the gateway accepts ------------------------


def test_baseline_tokens_are_accepted(env: Env) -> None:
    response, _ = present(env, ASSERTION, env.token(ASSERTION))
    assert response.status_code == 200, response.text
    access = in_ledger(env.gateway, env.token(ACCESS))
    response, _ = present(env, ACCESS, access)
    assert response.status_code == 200, response.text


# --- alg: none, case games, and HMAC keyed with the public key -------------------------


def unsigned(alg: Any, *, signed: bool) -> Maker:
    """``alg`` set to a "no signature" value, with an empty signature or with a genuine
    Ed25519 signature over the header that names ``alg``."""

    def make(env: Env, kind: str) -> str:
        header, claims = env.parts(kind, header={"alg": alg})
        if signed:
            return sign(header, claims, env.signer(kind))
        return signing_input(header, claims) + "."

    return make


def openssh(raw: bytes) -> bytes:
    public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def der(raw: bytes) -> bytes:
    public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# The forms a public key takes where an attacker finds it; a verifier that let the token
# pick HS256 would use one of them as the HMAC secret.
SECRET_FORMS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("pem", lambda raw: public_pem(VerifyKey(raw))),
    ("pem-without-trailing-newline", lambda raw: public_pem(VerifyKey(raw)).rstrip(b"\n")),
    ("raw-32-bytes", lambda raw: raw),
    ("base64url", lambda raw: b64u(raw).encode()),
    ("base64-padded", lambda raw: base64.b64encode(raw)),
    ("hex", lambda raw: raw.hex().encode()),
    ("openssh", openssh),
    ("der", der),
    ("jwk-json", lambda raw: json.dumps(okp_jwk(raw)).encode()),
]


DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def mac_token(
    env: Env, kind: str, header: dict[str, Any], secret: bytes, mac_alg: str = "HS256"
) -> str:
    """A token of ``kind`` with ``header`` changes, MAC-ed under ``secret``."""
    h, claims = env.parts(kind, header=header)
    data = signing_input(h, claims)
    return f"{data}.{b64u(hmac.new(secret, data.encode(), DIGESTS[mac_alg]).digest())}"


def hmac_signed(secret_of: Callable[[bytes], bytes], alg: str = "HS256") -> Maker:
    """MAC-ed under the verifying public key (in some form) as if it were a shared secret.
    With alg "EdDSA" the header stays honest and the MAC is HS512: 64 bytes, the length
    of an Ed25519 signature."""
    mac_alg = "HS512" if alg == "EdDSA" else alg
    return lambda env, kind: mac_token(
        env, kind, {"alg": alg}, secret_of(env.public_raw(kind)), mac_alg
    )


ALG_CASES: list[Case] = [
    ("alg-none-unsigned", unsigned("none", signed=False)),
    ("alg-None-unsigned", unsigned("None", signed=False)),
    ("alg-NONE-unsigned", unsigned("NONE", signed=False)),
    ("alg-nOnE-unsigned", unsigned("nOnE", signed=False)),
    ("alg-none-with-genuine-signature", unsigned("none", signed=True)),
    ("alg-None-with-genuine-signature", unsigned("None", signed=True)),
    ("alg-NONE-with-genuine-signature", unsigned("NONE", signed=True)),
    ("alg-missing", unsigned(DROP, signed=True)),
    ("alg-null", unsigned(None, signed=True)),
    ("alg-empty", unsigned("", signed=True)),
    ("alg-eddsa-lowercase", unsigned("eddsa", signed=True)),
    ("alg-EDDSA-uppercase", unsigned("EDDSA", signed=True)),
    ("alg-EdDSA-trailing-space", unsigned("EdDSA ", signed=True)),
    ("alg-Ed25519-fully-specified", unsigned("Ed25519", signed=True)),
    ("alg-as-list", unsigned(["EdDSA"], signed=True)),
    ("alg-RS256-with-ed25519-signature", unsigned("RS256", signed=True)),
    ("alg-ES256-with-ed25519-signature", unsigned("ES256", signed=True)),
    *[(f"hs256-keyed-with-public-key-{name}", hmac_signed(form)) for name, form in SECRET_FORMS],
    ("hs384-keyed-with-public-key-pem", hmac_signed(SECRET_FORMS[0][1], "HS384")),
    ("hs512-keyed-with-public-key-raw", hmac_signed(lambda raw: raw, "HS512")),
    ("eddsa-header-hmac-signature-64-bytes", hmac_signed(lambda raw: raw, "EdDSA")),
    ("hs256-keyed-with-empty-secret", hmac_signed(lambda raw: b"")),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(ALG_CASES))
def test_algorithm_confusion_is_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- headers that bring their own key: refused, and never fetched ----------------------


def attacker_signed(changes: Callable[[Env, str], dict[str, Any]]) -> Maker:
    return lambda env, kind: env.token(kind, header=changes(env, kind), key=env.attacker)


def std_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


KEY_HEADER_CASES: list[Case] = [
    (
        "jwk-embedded-attacker-key",
        attacker_signed(lambda env, kind: {"jwk": okp_jwk(env.attacker.public.raw)}),
    ),
    (
        "jwk-embedded-attacker-key-and-kid",
        attacker_signed(
            lambda env, kind: {
                "jwk": {**okp_jwk(env.attacker.public.raw), "kid": env.attacker.public.kid},
                "kid": env.attacker.public.kid,
            }
        ),
    ),
    (
        "jwk-embedded-genuine-key",
        header_changes(lambda env, kind: {"jwk": okp_jwk(env.public_raw(kind))}),
    ),
    (
        "jku-to-loopback-signed-by-attacker",
        attacker_signed(
            lambda env, kind: {
                "jku": f"{env.recorder.url}/.well-known/jwks.json",
                "kid": env.attacker.public.kid,
            }
        ),
    ),
    (
        "jku-to-loopback-signed-by-genuine-key",
        header_changes(lambda env, kind: {"jku": f"{env.recorder.url}/jwks.json"}),
    ),
    (
        "x5u-to-loopback-signed-by-attacker",
        attacker_signed(lambda env, kind: {"x5u": f"{env.recorder.url}/cert.pem"}),
    ),
    (
        "x5u-to-loopback-signed-by-genuine-key",
        header_changes(lambda env, kind: {"x5u": f"{env.recorder.url}/cert.pem"}),
    ),
    (
        "x5c-self-signed-attacker-certificate",
        attacker_signed(lambda env, kind: {"x5c": [std_b64(env.attacker_cert)]}),
    ),
    (
        "x5c-signed-by-genuine-key",
        header_changes(lambda env, kind: {"x5c": [std_b64(env.attacker_cert)]}),
    ),
    (
        "x5t-sha1-thumbprint",
        header_changes(
            lambda env, kind: {"x5t": b64u(hashlib.sha1(env.attacker_cert).digest())}  # noqa: S324
        ),
    ),
    (
        "x5t-S256-thumbprint",
        header_changes(
            lambda env, kind: {"x5t#S256": b64u(hashlib.sha256(env.attacker_cert).digest())}
        ),
    ),
    (
        "jwk-jku-x5u-x5c-together",
        attacker_signed(
            lambda env, kind: {
                "jwk": okp_jwk(env.attacker.public.raw),
                "jku": f"{env.recorder.url}/jwks.json",
                "x5u": f"{env.recorder.url}/cert.pem",
                "x5c": [std_b64(env.attacker_cert)],
                "kid": env.attacker.public.kid,
            }
        ),
    ),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(KEY_HEADER_CASES))
def test_key_carrying_headers_are_refused_without_fetching(
    env: Env, kind: str, make: Maker
) -> None:
    assert_refused(env, kind, make(env, kind))  # assert_refused checks the recorder too


# --- kid --------------------------------------------------------------------------------


def kid(value: Callable[[Env], Any]) -> Maker:
    return header_changes(lambda env, kind: {"kid": value(env)})


def kid_iss_sub(value: str) -> Maker:
    """An assertion whose kid, iss and sub all name ``value``, signed by agent-1."""
    return lambda env, kind: env.token(
        kind, header={"kid": value}, claims={"iss": value, "sub": value}, key=env.agent
    )


KID_CASES: list[Case] = [
    ("kid-path-traversal", kid(lambda env: "../../etc/passwd")),
    ("kid-path-traversal-encoded", kid(lambda env: "..%2F..%2Fetc%2Fpasswd")),
    ("kid-absolute-path", kid(lambda env: "/etc/passwd")),
    ("kid-key-file-path", kid(lambda env: str(env.paths.gateway_key))),
    ("kid-sql-or-true", kid(lambda env: "' OR 1=1 --")),
    ("kid-sql-union", kid(lambda env: "x' UNION SELECT 'secret' --")),
    ("kid-shell-metacharacters", kid(lambda env: "$(id);`id`|id")),
    ("kid-nul-suffix", kid(lambda env: f"{AGENT}\x00")),
    ("kid-url-to-loopback", kid(lambda env: f"{env.recorder.url}/kid")),
    ("kid-empty", kid(lambda env: "")),
    ("kid-null", kid(lambda env: None)),
    ("kid-number", kid(lambda env: 1)),
    ("kid-list", kid(lambda env: [AGENT, env.gateway_key.public.kid])),
    ("kid-object", kid(lambda env: {"kid": AGENT})),
    ("kid-5-kb", kid(lambda env: "a" * 5000)),
    ("kid-10-kb", kid(lambda env: "a" * 10 * 1024)),
    (
        # The classic: kid names an empty file, and the token is MAC-ed with its content.
        "kid-dev-null-hs256-empty-secret",
        lambda env, kind: mac_token(env, kind, {"alg": "HS256", "kid": "/dev/null"}, b""),
    ),
]

ASSERTION_KID_CASES: list[Case] = [
    ("kid-other-agent-signed-by-agent-1", kid(lambda env: OTHER_AGENT)),
    ("kid-iss-sub-other-agent-signed-by-agent-1", kid_iss_sub(OTHER_AGENT)),
    (
        "iss-sub-other-agent-no-kid-signed-by-agent-1",
        lambda env, kind: env.token(
            kind, header={"kid": DROP}, claims={"iss": OTHER_AGENT, "sub": OTHER_AGENT}
        ),
    ),
    (
        "kid-agent-1-iss-sub-other-agent",
        claim_changes(lambda env, kind: {"iss": OTHER_AGENT, "sub": OTHER_AGENT}),
    ),
    (
        "iss-agent-1-sub-other-agent-kid-other-agent",
        lambda env, kind: env.token(kind, header={"kid": OTHER_AGENT}, claims={"sub": OTHER_AGENT}),
    ),
    ("kid-iss-sub-path-traversal", kid_iss_sub("../../etc/passwd")),
    ("kid-iss-sub-sql-or-true", kid_iss_sub("' OR 1=1 --")),
    ("kid-iss-sub-uppercase-agent-id", kid_iss_sub(AGENT.upper())),
    ("kid-iss-sub-agent-id-trailing-space", kid_iss_sub(f"{AGENT} ")),
    (
        "kid-iss-sub-gateway-key-id",
        lambda env, kind: kid_iss_sub(env.gateway_key.public.kid)(env, kind),
    ),
]

ACCESS_KID_CASES: list[Case] = [
    (
        "kid-agent-id-signed-by-agent-key",
        lambda env, kind: env.token(kind, header={"kid": AGENT}, key=env.agent),
    ),
    (
        "kid-agent-key-thumbprint-signed-by-agent-key",
        lambda env, kind: env.token(kind, header={"kid": env.agent.public.kid}, key=env.agent),
    ),
    (
        "no-kid-signed-by-agent-key",
        lambda env, kind: env.token(kind, header={"kid": DROP}, key=env.agent),
    ),
    (
        "gateway-kid-signed-by-attacker",
        lambda env, kind: env.token(kind, key=env.attacker),
    ),
]


@pytest.mark.parametrize(
    ("kind", "make"),
    for_kinds(KID_CASES)
    + for_kinds(ASSERTION_KID_CASES, (ASSERTION,))
    + for_kinds(ACCESS_KID_CASES, (ACCESS,)),
)
def test_hostile_kid_is_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- exp, iat, nbf and lifetimes --------------------------------------------------------


def times(changes: Callable[[int, int], dict[str, Any]]) -> Maker:
    """Claim changes computed from now and the kind's maximum lifetime."""
    return claim_changes(lambda env, kind: changes(int(time.time()), env.max_lifetime(kind)))


TIME_CASES: list[Case] = [
    ("exp-missing", times(lambda now, life: {"exp": DROP})),
    ("iat-missing", times(lambda now, life: {"iat": DROP})),
    ("exp-numeric-string", times(lambda now, life: {"exp": str(now + 30)})),
    ("exp-word", times(lambda now, life: {"exp": "tomorrow"})),
    ("iat-numeric-string", times(lambda now, life: {"iat": str(now)})),
    ("exp-1e20", times(lambda now, life: {"exp": 10**20})),
    ("exp-2-pow-64", times(lambda now, life: {"exp": 2**64})),
    ("exp-2-pow-53-plus-1", times(lambda now, life: {"exp": 2**53 + 1})),
    ("exp-5000-digits", times(lambda now, life: {"exp": Raw("9" * 5000)})),
    ("exp-1e400-float-overflow", times(lambda now, life: {"exp": Raw("1e400")})),
    ("exp-NaN", times(lambda now, life: {"exp": Raw("NaN")})),
    ("exp-Infinity", times(lambda now, life: {"exp": Raw("Infinity")})),
    ("exp-minus-Infinity", times(lambda now, life: {"exp": Raw("-Infinity")})),
    ("iat-NaN", times(lambda now, life: {"iat": Raw("NaN")})),
    ("iat-minus-1e400", times(lambda now, life: {"iat": Raw("-1e400")})),
    ("nbf-NaN", times(lambda now, life: {"nbf": Raw("NaN")})),
    ("exp-negative", times(lambda now, life: {"exp": -1})),
    ("exp-and-iat-negative", times(lambda now, life: {"iat": -100, "exp": -50})),
    ("exp-true", times(lambda now, life: {"exp": True})),
    ("exp-null", times(lambda now, life: {"exp": None})),
    ("exp-list", times(lambda now, life: {"exp": [now + 30]})),
    ("exp-object", times(lambda now, life: {"exp": {"seconds": now + 30}})),
    ("expired-beyond-leeway", times(lambda now, life: {"iat": now - life - 60, "exp": now - 60})),
    ("exp-equals-iat", times(lambda now, life: {"exp": now})),
    ("exp-before-iat", times(lambda now, life: {"exp": now - 1})),
    ("iat-in-future", times(lambda now, life: {"iat": now + 120, "exp": now + 120 + life // 2})),
    ("nbf-in-future", times(lambda now, life: {"nbf": now + 120})),
    ("nbf-numeric-string", times(lambda now, life: {"nbf": str(now)})),
    ("lifetime-max-plus-1", times(lambda now, life: {"exp": now + life + 1})),
    ("lifetime-one-year", times(lambda now, life: {"exp": now + 365 * 86_400})),
    ("iat-epoch-zero", times(lambda now, life: {"iat": 0, "exp": now + 10})),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(TIME_CASES))
def test_bad_time_claims_are_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- aud and iss ------------------------------------------------------------------------


def aud(value: Callable[[Env, str], Any]) -> Maker:
    return claim_changes(lambda env, kind: {"aud": value(env, kind)})


def iss(value: Callable[[str], Any]) -> Maker:
    return claim_changes(lambda env, kind: {"iss": value(env.expected_iss(kind))})


def _other_gateway(env: Env, kind: str) -> str:
    other = "http://127.0.0.1:1"
    return f"{other}/v1/token" if kind == ASSERTION else other


AUDIENCE_CASES: list[Case] = [
    ("aud-list-with-the-right-audience", aud(lambda env, kind: [env.audience(kind)])),
    (
        "aud-list-right-and-other",
        aud(lambda env, kind: [env.audience(kind), "https://evil.example"]),
    ),
    ("aud-empty-list", aud(lambda env, kind: [])),
    ("aud-another-gateway", aud(_other_gateway)),
    ("aud-prefix", aud(lambda env, kind: env.audience(kind)[:-1])),
    ("aud-suffix", aud(lambda env, kind: env.audience(kind) + "x")),
    ("aud-subdomain-suffix", aud(lambda env, kind: env.audience(kind) + ".evil.example")),
    ("aud-trailing-slash", aud(lambda env, kind: env.audience(kind) + "/")),
    ("aud-uppercase", aud(lambda env, kind: env.audience(kind).upper())),
    ("aud-scheme-uppercase", aud(lambda env, kind: "HTTP" + env.audience(kind)[4:])),
    ("aud-https-scheme", aud(lambda env, kind: "https" + env.audience(kind)[4:])),
    (
        "aud-localhost-alias",
        aud(lambda env, kind: env.audience(kind).replace("127.0.0.1", "localhost")),
    ),
    ("aud-with-query", aud(lambda env, kind: env.audience(kind) + "?aud=x")),
    ("aud-with-fragment", aud(lambda env, kind: env.audience(kind) + "#")),
    ("aud-trailing-space", aud(lambda env, kind: env.audience(kind) + " ")),
    ("aud-trailing-nul", aud(lambda env, kind: env.audience(kind) + "\x00")),
    ("aud-empty-string", aud(lambda env, kind: "")),
    ("aud-null", aud(lambda env, kind: None)),
    ("aud-object", aud(lambda env, kind: {"aud": env.audience(kind)})),
    ("aud-missing", aud(lambda env, kind: DROP)),
    (
        "aud-of-the-other-token-type",
        aud(lambda env, kind: env.issuer if kind == ASSERTION else env.token_endpoint),
    ),
    ("aud-over-256-chars", aud(lambda env, kind: env.audience(kind) + "/" + "a" * 300)),
    ("iss-another-issuer", iss(lambda expected: "https://evil.example")),
    ("iss-as-list", iss(lambda expected: [expected])),
    ("iss-trailing-slash", iss(lambda expected: expected + "/")),
    ("iss-uppercase", iss(lambda expected: expected.upper())),
    ("iss-missing", iss(lambda expected: DROP)),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(AUDIENCE_CASES))
def test_wrong_audience_or_issuer_is_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- one token type in another's place --------------------------------------------------

CONFUSION_CASES: list[tuple[str, str, Maker]] = [
    (
        ACCESS,
        "client-assertion-as-access-token",
        lambda env, kind: make_assertion(
            env.agent, AGENT, audience=env.token_endpoint, now=time.time()
        ),
    ),
    (
        ACCESS,
        "client-assertion-claims-typed-at+jwt-signed-by-agent",
        lambda env, kind: env.token(ASSERTION, header={"typ": "at+jwt"}),
    ),
    (ACCESS, "elevation-grant-as-access-token", lambda env, kind: env.elevation_grant()),
    (
        ACCESS,
        "dpop-proof-as-access-token",
        lambda env, kind: env.dpop_proof("GET", f"{env.issuer}/v1/models"),
    ),
    (
        ACCESS,
        "gateway-signed-token-typed-jwt",
        lambda env, kind: env.token(ACCESS, header={"typ": "JWT"}),
    ),
    (
        ACCESS,
        "gateway-signed-token-typed-elevation+jwt",
        lambda env, kind: env.token(ACCESS, header={"typ": "elevation+jwt"}),
    ),
    (
        ACCESS,
        "gateway-signed-token-without-typ",
        lambda env, kind: env.token(ACCESS, header={"typ": DROP}),
    ),
    (ASSERTION, "access-token-as-client-assertion", lambda env, kind: env.access_token()),
    (ASSERTION, "elevation-grant-as-client-assertion", lambda env, kind: env.elevation_grant()),
    (
        ASSERTION,
        "dpop-proof-as-client-assertion",
        lambda env, kind: env.dpop_proof("POST", env.token_endpoint),
    ),
    (
        ASSERTION,
        "assertion-typed-at+jwt",
        lambda env, kind: env.token(ASSERTION, header={"typ": "at+jwt"}),
    ),
    (
        ASSERTION,
        "assertion-typed-dpop+jwt",
        lambda env, kind: env.token(ASSERTION, header={"typ": "dpop+jwt"}),
    ),
    (
        ASSERTION,
        "assertion-typed-elevation+jwt",
        lambda env, kind: env.token(ASSERTION, header={"typ": "elevation+jwt"}),
    ),
    (
        ASSERTION,
        "assertion-signed-by-gateway-key",
        lambda env, kind: env.token(ASSERTION, key=env.gateway_key),
    ),
]


@pytest.mark.parametrize(
    ("kind", "make"),
    [pytest.param(kind, make, id=f"{kind}-{name}") for kind, name, make in CONFUSION_CASES],
)
def test_token_in_another_tokens_place_is_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


def test_dpop_proof_as_its_own_bound_token_is_refused(env: Env) -> None:
    """A proof offered as the token under the DPoP scheme, with itself as the proof."""
    proof = env.dpop_proof("GET", f"{env.issuer}/v1/models")
    request_id = f"sec-jwt-{uuid.uuid4().hex}"
    response = env.client.get(
        "/v1/models",
        headers={"authorization": f"DPoP {proof}", "dpop": proof, REQUEST_ID: request_id},
    )
    assert response.status_code == 401, response.text
    events = read_events(env.paths.audit_log, request_id=request_id)
    assert events and events[-1]["decision"] == "deny"


# --- crit and other header extensions ---------------------------------------------------

CRIT_CASES: list[Case] = [
    (
        "crit-unknown-extension",
        header_changes(
            lambda env, kind: {"crit": ["urn:agentzt:unknown"], "urn:agentzt:unknown": True}
        ),
    ),
    (
        "crit-exp-header-parameter",
        header_changes(lambda env, kind: {"crit": ["exp"], "exp": int(time.time()) + 60}),
    ),
    ("crit-naming-alg", header_changes(lambda env, kind: {"crit": ["alg"]})),
    ("crit-empty-list", header_changes(lambda env, kind: {"crit": []})),
    ("crit-not-a-list", header_changes(lambda env, kind: {"crit": "exp"})),
    ("crit-null", header_changes(lambda env, kind: {"crit": None})),
    ("crit-b64-false", header_changes(lambda env, kind: {"crit": ["b64"], "b64": False})),
    ("b64-false-without-crit", header_changes(lambda env, kind: {"b64": False})),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(CRIT_CASES))
def test_critical_extensions_are_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- duplicate JSON members (hand-built bytes) ------------------------------------------


def duplicate_in_header(name: str, value: Callable[[Env, str], Any], *, first: bool) -> Maker:
    def make(env: Env, kind: str) -> str:
        header, claims = env.parts(kind)
        return sign(
            with_duplicate(header, name, value(env, kind), first=first), claims, env.signer(kind)
        )

    return make


def duplicate_in_payload(name: str, value: Callable[[Env, str], Any], *, first: bool) -> Maker:
    def make(env: Env, kind: str) -> str:
        header, claims = env.parts(kind)
        return sign(
            header, with_duplicate(claims, name, value(env, kind), first=first), env.signer(kind)
        )

    return make


DUPLICATE_CASES: list[Case] = [
    ("header-alg-none-before-EdDSA", duplicate_in_header("alg", lambda e, k: "none", first=True)),
    ("header-alg-none-after-EdDSA", duplicate_in_header("alg", lambda e, k: "none", first=False)),
    ("header-alg-HS256-after-EdDSA", duplicate_in_header("alg", lambda e, k: "HS256", first=False)),
    ("header-alg-identical-twice", duplicate_in_header("alg", lambda e, k: "EdDSA", first=False)),
    (
        "header-alg-escaped-spelling",
        duplicate_in_header('"\\u0061lg"', lambda e, k: "none", first=False),
    ),
    (
        "header-kid-traversal-after",
        duplicate_in_header("kid", lambda e, k: "../../etc/passwd", first=False),
    ),
    ("header-typ-twice", duplicate_in_header("typ", lambda e, k: "dpop+jwt", first=True)),
    (
        "payload-sub-other-agent-after",
        duplicate_in_payload("sub", lambda e, k: OTHER_AGENT, first=False),
    ),
    (
        "payload-sub-other-agent-before",
        duplicate_in_payload("sub", lambda e, k: OTHER_AGENT, first=True),
    ),
    ("payload-sub-identical-twice", duplicate_in_payload("sub", lambda e, k: AGENT, first=False)),
    (
        "payload-sub-escaped-spelling",
        duplicate_in_payload('"\\u0073ub"', lambda e, k: OTHER_AGENT, first=False),
    ),
    ("payload-exp-far-future-after", duplicate_in_payload("exp", lambda e, k: 2**40, first=False)),
    (
        "payload-aud-other-after",
        duplicate_in_payload("aud", lambda e, k: "https://evil.example", first=False),
    ),
    (
        "payload-iss-other-before",
        duplicate_in_payload("iss", lambda e, k: "https://evil.example", first=True),
    ),
    ("payload-jti-twice", duplicate_in_payload("jti", lambda e, k: new_jti(), first=False)),
    (
        "payload-duplicate-inside-nested-object",
        claim_changes(lambda env, kind: {"ext": Raw('{"a":1,"a":2}')}),
    ),
]

ACCESS_DUPLICATE_CASES: list[Case] = [
    (
        "payload-role-other-after",
        duplicate_in_payload("role", lambda e, k: "ops-agent", first=False),
    ),
    (
        "payload-scope-wider-after",
        duplicate_in_payload("scope", lambda e, k: "tool:email.send tool:db.query", first=False),
    ),
    (
        # Bound to the agent's key under a first-wins parser, to nothing under last-wins.
        "payload-cnf-jkt-twice",
        claim_changes(
            lambda env, kind: {
                "cnf": Raw(f'{{"jkt":"{env.agent.public.kid}","jkt":"{b64u(bytes(32))}"}}')
            }
        ),
    ),
]


@pytest.mark.parametrize(
    ("kind", "make"),
    for_kinds(DUPLICATE_CASES) + for_kinds(ACCESS_DUPLICATE_CASES, (ACCESS,)),
)
def test_duplicate_json_members_are_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- what the segments hold: non-objects, bad encodings, bad JSON ------------------------


def payload_bytes(payload: Callable[[Env, str], bytes]) -> Maker:
    """A genuine header and signature over a payload that is not a claims object."""

    def make(env: Env, kind: str) -> str:
        header, _ = env.parts(kind)
        return sign(header, payload(env, kind), env.signer(kind))

    return make


def header_bytes(header: Callable[[Env, str], bytes]) -> Maker:
    def make(env: Env, kind: str) -> str:
        _, claims = env.parts(kind)
        return sign(header(env, kind), claims, env.signer(kind))

    return make


def claims_json(env: Env, kind: str) -> bytes:
    return encode_json(env.parts(kind)[1])


def header_json(env: Env, kind: str) -> bytes:
    return encode_json(env.parts(kind)[0])


def non_ascii_subject(env: Env, kind: str) -> str:
    subject = "agént-1"
    if kind == ASSERTION:
        return env.token(kind, header={"kid": subject}, claims={"iss": subject, "sub": subject})
    return env.token(kind, claims={"sub": subject, "client_id": subject})


CONTENT_CASES: list[Case] = [
    ("payload-array", payload_bytes(lambda env, kind: encode_json([env.parts(kind)[1]]))),
    ("payload-string", payload_bytes(lambda env, kind: b'"agent-1"')),
    ("payload-number", payload_bytes(lambda env, kind: b"1")),
    ("payload-null", payload_bytes(lambda env, kind: b"null")),
    ("payload-true", payload_bytes(lambda env, kind: b"true")),
    ("payload-empty-object", payload_bytes(lambda env, kind: b"{}")),
    ("payload-whitespace", payload_bytes(lambda env, kind: b" ")),
    ("header-array", header_bytes(lambda env, kind: encode_json([env.parts(kind)[0]]))),
    ("header-string", header_bytes(lambda env, kind: b'"EdDSA"')),
    ("header-null", header_bytes(lambda env, kind: b"null")),
    ("payload-invalid-utf8", payload_bytes(lambda env, kind: b"\xff\xfe\xfd")),
    (
        "payload-invalid-utf8-inside-a-claim",
        payload_bytes(lambda env, kind: claims_json(env, kind)[:-1] + b',"x":"\xff"}'),
    ),
    (
        "payload-overlong-utf8",
        payload_bytes(lambda env, kind: claims_json(env, kind)[:-1] + b',"x":"\xc0\xaf"}'),
    ),
    (
        "payload-latin1-encoded",
        payload_bytes(
            lambda env, kind: claims_json(env, kind)[:-1] + ',"x":"agént"}'.encode("latin-1")
        ),
    ),
    ("payload-utf8-bom", payload_bytes(lambda env, kind: b"\xef\xbb\xbf" + claims_json(env, kind))),
    (
        "payload-utf16",
        payload_bytes(lambda env, kind: claims_json(env, kind).decode().encode("utf-16")),
    ),
    (
        "header-invalid-utf8",
        header_bytes(lambda env, kind: header_json(env, kind)[:-1] + b',"x":"\xff"}'),
    ),
    ("header-utf8-bom", header_bytes(lambda env, kind: b"\xef\xbb\xbf" + header_json(env, kind))),
    ("payload-trailing-garbage", payload_bytes(lambda env, kind: claims_json(env, kind) + b"x")),
    ("payload-two-objects", payload_bytes(lambda env, kind: claims_json(env, kind) + b"{}")),
    (
        "payload-trailing-comma",
        payload_bytes(lambda env, kind: claims_json(env, kind)[:-1] + b",}"),
    ),
    (
        "payload-single-quoted",
        payload_bytes(lambda env, kind: claims_json(env, kind).replace(b'"', b"'")),
    ),
    (
        "payload-nested-2500-deep",
        claim_changes(lambda env, kind: {"x": Raw("[" * 2500 + "]" * 2500)}),
    ),
    (
        "header-nested-2500-deep",
        header_bytes(
            lambda env, kind: (
                header_json(env, kind)[:-1] + b',"x":' + b"[" * 2500 + b"]" * 2500 + b"}"
            )
        ),
    ),
    ("payload-non-ascii-subject", non_ascii_subject),
]

ASSERTION_CONTENT_CASES: list[Case] = [
    (
        "payload-lone-surrogate-subject",
        lambda env, kind: env.token(
            kind, header={"kid": "\ud800"}, claims={"iss": "\ud800", "sub": "\ud800"}
        ),
    ),
]


@pytest.mark.parametrize(
    ("kind", "make"),
    for_kinds(CONTENT_CASES) + for_kinds(ASSERTION_CONTENT_CASES, (ASSERTION,)),
)
def test_malformed_segments_are_refused(env: Env, kind: str, make: Maker) -> None:
    assert_refused(env, kind, make(env, kind))


# --- the compact form: segments, base64url, size ---------------------------------------


def reshaped(change: Callable[[str], str | bytes]) -> Maker:
    """A genuine token, then ``change`` applied to its compact form."""
    return lambda env, kind: change(env.token(kind))


def pad_segments(token: str) -> str:
    return ".".join(s + "=" * (-len(s) % 4) for s in token.split("."))


def standard_alphabet(env: Env, kind: str) -> str:
    """A genuine token containing '-' or '_', spelled in the standard base64 alphabet."""
    for _ in range(100):
        token = env.token(kind)
        if "-" in token or "_" in token:
            return token.replace("-", "+").replace("_", "/")
    raise AssertionError("no token with a '-' or '_' in 100 tries")


def non_canonical_header(token: str) -> str:
    """The header segment with unused low bits set in its last character."""
    header, rest = token.split(".", 1)
    assert len(header) % 4 in (2, 3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(header[-1])
    return f"{header[:-1]}{alphabet[last | 1]}.{rest}"


def length_one_mod_four(token: str) -> str:
    header, payload, signature = token.split(".")
    payload += "A" * ((1 - len(payload)) % 4)
    return f"{header}.{payload}.{signature}"


def jwe_shaped(env: Env, kind: str) -> str:
    header = b64u(encode_json({"alg": "dir", "enc": "A256GCM", "kid": env.legit_kid(kind)}))
    return f"{header}..{b64u(os.urandom(12))}.{b64u(os.urandom(64))}.{b64u(os.urandom(16))}"


def just_over_limit(env: Env, kind: str) -> str:
    """A genuine token padded with an extra claim to just over MAX_TOKEN_CHARS."""
    size = 5000
    token = env.token(kind, claims={"pad": "a" * size})
    size += (MAX_TOKEN_CHARS + 1 - len(token)) * 3 // 4
    while len(token := env.token(kind, claims={"pad": "a" * size})) <= MAX_TOKEN_CHARS:
        size += 1
    assert MAX_TOKEN_CHARS < len(token) <= MAX_TOKEN_CHARS + 4
    return token


SHAPE_CASES: list[Case] = [
    ("empty", lambda env, kind: ""),
    ("one-segment", reshaped(lambda t: t.split(".")[0])),
    ("two-segments", reshaped(lambda t: t.rsplit(".", 1)[0])),
    ("empty-signature", reshaped(lambda t: t.rsplit(".", 1)[0] + ".")),
    ("four-segments", reshaped(lambda t: t + "." + t.rsplit(".", 1)[1])),
    ("five-segments-jwe-shaped", jwe_shaped),
    ("only-dots", lambda env, kind: ".."),
    ("leading-dot", reshaped(lambda t: "." + t)),
    ("trailing-dot", reshaped(lambda t: t + ".")),
    ("padding-on-every-segment", reshaped(pad_segments)),
    ("single-trailing-equals", reshaped(lambda t: t + "=")),
    ("standard-base64-alphabet", standard_alphabet),
    ("non-canonical-base64-header", reshaped(non_canonical_header)),
    ("segment-length-1-mod-4", reshaped(length_one_mod_four)),
    ("space-inside", reshaped(lambda t: t.replace(".", ". ", 1))),
    ("non-ascii-character-inside", reshaped(lambda t: t[:10] + "é" + t[10:])),
    ("invalid-utf8-byte-inside", reshaped(lambda t: t[:10].encode() + b"\xff" + t[10:].encode())),
    ("signature-truncated-one-char", reshaped(lambda t: t[:-1])),
    (
        "signature-one-char-changed",
        reshaped(lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1]),
    ),
    ("signature-all-zero", reshaped(lambda t: t.rsplit(".", 1)[0] + "." + b64u(bytes(64)))),
    ("signature-66-bytes", reshaped(lambda t: t + "AA")),
    (
        "signature-of-another-token",
        lambda env, kind: (
            env.token(kind).rsplit(".", 1)[0] + "." + env.token(kind).rsplit(".", 1)[1]
        ),
    ),
    ("just-over-8192-chars", just_over_limit),
    (
        "one-megabyte",
        lambda env, kind: env.token(kind, claims={"pad": "a" * (1024 * 1024)}),
    ),
]


@pytest.mark.parametrize(("kind", "make"), for_kinds(SHAPE_CASES))
def test_malformed_compact_form_is_refused(env: Env, kind: str, make: Maker) -> None:
    token = make(env, kind)
    if kind != ASSERTION and len(token) > MAX_HEADER_BYTES:
        # Past the request-head limit the HTTP parser itself refuses the request (a plain
        # 400 and a closed connection) before the app, so nothing reads or logs the token.
        size = env.paths.audit_log.stat().st_size
        response, _ = present(env, kind, token)
        assert response.status_code == 400
        assert env.paths.audit_log.stat().st_size == size
        return
    assert_refused(env, kind, token)


# --- after everything: still nothing fetched -------------------------------------------


def test_no_outbound_fetch_happened_at_all(env: Env) -> None:
    """Runs after the tables: a fetch started in the background would show up here."""
    time.sleep(0.2)
    assert env.recorder.hits == []
    # The recorder itself works: a direct request is seen.
    httpx.get(f"{env.recorder.url}/probe", timeout=5)
    assert env.recorder.hits[-1] == "GET /probe"
    env.recorder.hits.clear()
