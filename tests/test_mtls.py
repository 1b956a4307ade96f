"""Mutual TLS and certificate-bound tokens, over real TLS sockets on loopback.

Every certificate here is real (issued by the project's own PKI or, for the attacks, by
a foreign CA built the same way); every connection is a real TLS 1.3 handshake with a
gateway served by uvicorn.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from conftest import enroll_agent, in_ledger
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from forge import compact
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentzt.audit import read_events
from agentzt.config import GatewaySettings, Paths, TlsSettings, TokenSettings
from agentzt.errors import ConfigError, UsageError
from agentzt.gateway import Gateway, create_app
from agentzt.identity import CLIENT_ASSERTION_TYPE, SigningKey, make_assertion, read_private_key
from agentzt.proxy import create_proxy_app
from agentzt.server import BackgroundServer, bind, running, url_of
from agentzt.tls import (
    PEER_SCOPE_KEY,
    PeerCert,
    TlsFiles,
    client_context,
    init_ca,
    issue_client_files,
    parse_pin,
    server_context,
)
from agentzt.tls.pki import (
    Issued,
    issue_agent_certificate,
    issue_client,
    issue_server,
    load_ca,
    make_ca,
    new_key,
    write_issued,
)

NOW = dt.datetime.now(dt.UTC)
MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hello"}],
}


def thumbprint(cert_path: Path) -> str:
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def sha256_of(cert_path: Path) -> bytes:
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    return hashlib.sha256(der).digest()


def save(issued: Issued, directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    write_issued(issued, cert, key)
    return cert, key


def tls_client(
    files: TlsFiles, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client context trusting the agentzt CA, with ``cert`` as its certificate if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=files.ca_cert)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def self_signed_client(agent_id: str) -> Issued:
    """A client certificate for ``agent_id`` that signs itself (no CA at all)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agent_id)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://agentzt/agent/{agent_id}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def client_with_names(ca: Issued, common_name: str, uris: list[str]) -> Issued:
    """A CA-signed client certificate with an arbitrary CN and URI SANs."""
    issued = issue_client(ca, "placeholder", NOW)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(issued.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(issued.key.public_key()), critical=False
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    return Issued(builder.sign(ca.key, hashes.SHA256()), issued.key)


def attempt(url: str, context: ssl.SSLContext) -> bytes | Exception:
    """GET /healthz over a fresh TLS connection: the bytes answered, or the failure."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as conn,
        ):
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
            return data
    except (ssl.SSLError, OSError) as exc:
        return exc


def answered(result: bytes | Exception) -> bool:
    return isinstance(result, bytes) and result.startswith(b"HTTP/1.1 200")


@dataclasses.dataclass
class MtlsStack:
    paths: Paths
    files: TlsFiles
    gateway: Gateway
    url: str

    def context_for(self, agent_id: str) -> ssl.SSLContext:
        return tls_client(
            self.files, self.files.client_cert(agent_id), self.files.client_key(agent_id)
        )

    def client(self, context: ssl.SSLContext) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

    def token(self, agent_id: str, context: ssl.SSLContext) -> httpx.Response:
        key = read_private_key(self.paths.identity_key(agent_id))
        assertion = make_assertion(
            key, agent_id, audience=self.gateway.token_endpoint, now=self.gateway.clock()
        )
        with self.client(context) as http:
            return http.post(
                "/v1/token",
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": CLIENT_ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )


def mtls_settings() -> GatewaySettings:
    return dataclasses.replace(
        GatewaySettings(), tls=TlsSettings(mode="mtls"), tokens=TokenSettings(dpop="optional")
    )


@pytest.fixture
def mtls(paths: Paths) -> Iterator[MtlsStack]:
    """A gateway requiring client certificates; agent-1 and agent-2 enrolled with certs."""
    files = TlsFiles(paths.tls_dir)
    init_ca(files, now=NOW)
    for agent_id in ("agent-1", "agent-2"):
        enroll_agent(paths, agent_id, "demo-agent")
        issue_agent_certificate(files, paths.agents_toml, agent_id, now=NOW)
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock, "https"), settings=mtls_settings())
    with running(create_app(gateway), sock, server_context(files)) as server:
        yield MtlsStack(paths=paths, files=files, gateway=gateway, url=server.url)


# --- the handshake: only certificates the agentzt CA issued get in --------------------


def test_a_client_certificate_from_the_agentzt_ca_gets_an_answer(mtls: MtlsStack) -> None:
    assert answered(attempt(mtls.url, mtls.context_for("agent-1")))


def _no_cert(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    return tls_client(stack.files)


def _foreign_ca(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    foreign = make_ca(NOW)
    return tls_client(stack.files, *save(issue_client(foreign, "agent-1", NOW), tmp, "foreign"))


def _expired(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    ca = load_ca(stack.files)
    old = issue_client(ca, "agent-1", NOW - dt.timedelta(days=120), days=30)
    return tls_client(stack.files, *save(old, tmp, "expired"))


def _not_yet_valid(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    ca = load_ca(stack.files)
    future = issue_client(ca, "agent-1", NOW + dt.timedelta(days=2), days=30)
    return tls_client(stack.files, *save(future, tmp, "future"))


def _ca_as_client(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    return tls_client(stack.files, stack.files.ca_cert, stack.files.ca_key)


def _self_signed(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    return tls_client(stack.files, *save(self_signed_client("agent-1"), tmp, "self"))


def _server_cert_as_client(stack: MtlsStack, tmp: Path) -> ssl.SSLContext:
    # Signed by the right CA, but for serverAuth only.
    return tls_client(stack.files, stack.files.server_cert, stack.files.server_key)


@pytest.mark.parametrize(
    "make_context",
    [_no_cert, _foreign_ca, _expired, _not_yet_valid, _ca_as_client, _self_signed,
     _server_cert_as_client],
    ids=["no-client-cert", "foreign-ca", "expired", "not-yet-valid", "ca-cert-as-client",
         "self-signed", "server-cert-as-client"],
)  # fmt: skip
def test_the_handshake_refuses_a_certificate_the_agentzt_ca_did_not_issue_for_a_client(
    mtls: MtlsStack, tmp_path: Path, make_context: Any
) -> None:
    before = len(read_events(mtls.paths.audit_log)) if mtls.paths.audit_log.exists() else 0
    result = attempt(mtls.url, make_context(mtls, tmp_path))
    assert not answered(result), result
    assert not (isinstance(result, bytes) and b"HTTP/" in result)
    # Nothing reached the application: no request, so no audit event.
    after = len(read_events(mtls.paths.audit_log)) if mtls.paths.audit_log.exists() else 0
    assert after == before


def test_plain_http_to_the_mtls_gateway_gets_no_answer(mtls: MtlsStack) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(mtls.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_the_server_speaks_tls_1_3_only(mtls: MtlsStack) -> None:
    context = mtls.context_for("agent-1")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert not answered(attempt(mtls.url, context))


# --- the app sees the peer certificate ----------------------------------------------


def test_the_server_exposes_the_verified_client_certificate_to_the_app(
    paths: Paths, tmp_path: Path
) -> None:
    files = TlsFiles(paths.tls_dir)
    init_ca(files, now=NOW)
    issue_client_files(files, "agent-7", now=NOW)
    seen: list[dict[str, Any]] = []

    async def echo(request: Request) -> JSONResponse:
        extensions = request.scope.get("extensions", {})
        seen.append(extensions)
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/", echo)])
    sock = bind("127.0.0.1", 0)
    with (
        running(app, sock, server_context(files)) as server,
        httpx.Client(
            base_url=server.url,
            verify=tls_client(files, files.client_cert("agent-7"), files.client_key("agent-7")),
        ) as http,
    ):
        assert http.get("/").status_code == 200
        assert http.get("/").status_code == 200  # the same connection, a second request
    assert len(seen) == 2
    tls, peer = seen[0]["tls"], seen[0][PEER_SCOPE_KEY]
    pem = files.client_cert("agent-7").read_text()
    assert tls["client_cert_chain"] == [ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(pem))]
    assert tls["client_cert_name"] == "CN=agent-7,O=agentzt"
    assert tls["tls_version"] == 0x0304
    assert isinstance(peer, PeerCert)
    assert peer.agent_id == "agent-7"
    assert peer.thumbprint == thumbprint(files.client_cert("agent-7"))
    assert seen[1][PEER_SCOPE_KEY] == peer


def test_a_plain_http_server_puts_no_peer_in_the_scope(paths: Paths) -> None:
    seen: list[dict[str, Any]] = []

    async def echo(request: Request) -> JSONResponse:
        seen.append(request.scope.get("extensions", {}))
        return JSONResponse({})

    sock = bind("127.0.0.1", 0)
    with running(Starlette(routes=[Route("/", echo)]), sock) as server:
        httpx.get(server.url + "/")
    assert PEER_SCOPE_KEY not in seen[0]
    assert "tls" not in seen[0]


# --- tokens bound to the certificate (RFC 8705) ---------------------------------------


def test_a_token_issued_over_mtls_carries_the_certificate_thumbprint(mtls: MtlsStack) -> None:
    resp = mtls.token("agent-1", mtls.context_for("agent-1"))
    assert resp.status_code == 200, resp.text
    payload = json.loads(base64.urlsafe_b64decode(resp.json()["access_token"].split(".")[1] + "=="))
    assert payload["cnf"] == {"x5t#S256": thumbprint(mtls.files.client_cert("agent-1"))}
    issued = [e for e in read_events(mtls.paths.audit_log) if e["action"] == "token.issue"]
    assert issued[-1]["meta"]["cnf"] == payload["cnf"]


def test_a_matched_certificate_and_token_get_200(mtls: MtlsStack) -> None:
    context = mtls.context_for("agent-1")
    token = mtls.token("agent-1", context).json()["access_token"]
    with mtls.client(context) as http:
        resp = http.post("/v1/messages", json=MESSAGE, headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text


def _call(stack: MtlsStack, context: ssl.SSLContext, token: str) -> httpx.Response:
    with stack.client(context) as http:
        return http.get("/v1/models", headers={"authorization": f"Bearer {token}"})


def test_agent_a_token_over_a_channel_authenticated_as_agent_b_is_401(mtls: MtlsStack) -> None:
    token = mtls.token("agent-1", mtls.context_for("agent-1")).json()["access_token"]
    resp = _call(mtls, mtls.context_for("agent-2"), token)
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "authentication_error"
    assert "channel binding" in resp.json()["error"]["message"]
    event = read_events(mtls.paths.audit_log)[-1]
    assert (event["action"], event["decision"], event["status"]) == ("model.list", "deny", 401)
    assert event["reason"] == "the token is bound to another client certificate"


def test_a_second_certificate_with_the_same_cn_cannot_reuse_the_token(
    mtls: MtlsStack, tmp_path: Path
) -> None:
    token = mtls.token("agent-1", mtls.context_for("agent-1")).json()["access_token"]
    # A second, perfectly valid certificate for agent-1 from the same CA.
    twin = issue_client(load_ca(mtls.files), "agent-1", NOW)
    twin_context = tls_client(mtls.files, *save(twin, tmp_path, "twin"))
    assert answered(attempt(mtls.url, twin_context))  # the twin itself is accepted…
    resp = _call(mtls, twin_context, token)  # …but the token is not, over it
    assert resp.status_code == 401
    assert "channel binding" in resp.json()["error"]["message"]
    assert _call(mtls, mtls.context_for("agent-1"), token).status_code == 200


def test_the_token_endpoint_refuses_an_assertion_for_another_agent_than_the_cert(
    mtls: MtlsStack,
) -> None:
    resp = mtls.token("agent-1", mtls.context_for("agent-2"))
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    event = read_events(mtls.paths.audit_log)[-1]
    assert (event["action"], event["decision"]) == ("token.reject", "deny")


@pytest.mark.parametrize(
    ("common_name", "uris"),
    [
        ("agent-1", []),
        ("agent-1", ["spiffe://agentzt/agent/agent-2"]),
        ("agent-2", ["spiffe://agentzt/agent/agent-1"]),
        ("agent-1", ["spiffe://agentzt/agent/agent-1", "spiffe://agentzt/agent/agent-2"]),
        ("agent-1", ["spiffe://other/agent/agent-1"]),
        ("agent-1", ["spiffe://agentzt/agent/agent-1/../agent-1"]),
    ],
    ids=["no-uri", "uri-names-other", "cn-names-other", "two-agents", "other-trust-domain",
         "path-trick"],
)  # fmt: skip
def test_a_ca_signed_certificate_that_does_not_name_the_agent_unambiguously_gets_no_token(
    mtls: MtlsStack, tmp_path: Path, common_name: str, uris: list[str]
) -> None:
    odd = client_with_names(load_ca(mtls.files), common_name, uris)
    context = tls_client(mtls.files, *save(odd, tmp_path, "odd"))
    assert answered(attempt(mtls.url, context))
    assert mtls.token("agent-1", context).status_code == 401


def test_an_unbound_token_is_refused_over_mtls(mtls: MtlsStack) -> None:
    token, claims = mtls.gateway.issuer_of_tokens.issue(
        "agent-1", "demo-agent", ["model:claude-sonnet-4-6"]
    )
    assert claims.x5t is None
    in_ledger(mtls.gateway, token)
    resp = _call(mtls, mtls.context_for("agent-1"), token)
    assert resp.status_code == 401
    assert "channel binding" in resp.json()["error"]["message"]


def test_a_bound_token_is_refused_by_a_gateway_without_mtls(paths: Paths) -> None:
    enroll_agent(paths, "agent-1", "demo-agent")
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock))
    token, _ = gateway.issuer_of_tokens.issue(
        "agent-1", "demo-agent", ["model:claude-sonnet-4-6"], x5t="A" * 43
    )
    in_ledger(gateway, token)
    with running(create_app(gateway), sock) as server:
        resp = httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 401
    assert "channel binding" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    "cnf",
    [{"jkt": "A" * 43}, {"x5t#S256": 5}, {"x5t#S256": "short"}, "x5t", [],
     {"x5t#S256": "A" * 43, "jkt": "B" * 43}, None],
    ids=["unknown-member", "not-a-string", "wrong-length", "string", "list", "extra-member",
         "null"],
)  # fmt: skip
def test_a_cnf_the_gateway_cannot_check_is_refused(mtls: MtlsStack, cnf: object) -> None:
    signing_key = read_private_key(mtls.paths.gateway_key)
    now = int(mtls.gateway.clock())
    claims = {
        "iss": mtls.gateway.issuer, "sub": "agent-1", "aud": mtls.gateway.issuer,
        "client_id": "agent-1", "role": "demo-agent", "scope": "model:claude-sonnet-4-6",
        "iat": now, "exp": now + 60, "jti": f"forged-{hash(repr(cnf))}", "cnf": cnf,
    }  # fmt: skip
    token = compact(
        {"alg": "EdDSA", "typ": "at+jwt", "kid": signing_key.public.kid}, claims, signing_key
    )
    resp = _call(mtls, mtls.context_for("agent-1"), token)
    assert resp.status_code == 401, resp.text


# --- the proxy: trusts only the agentzt CA, pins the leaf when asked ------------------


def _proxy(mtls: MtlsStack, context: ssl.SSLContext) -> BackgroundServer:
    key = read_private_key(mtls.paths.identity_key("agent-1"))
    app = create_proxy_app(agent_id="agent-1", key=key, gateway_url=mtls.url, tls=context)
    return BackgroundServer(app, bind("127.0.0.1", 0)).start()


def test_the_proxy_speaks_mtls_and_its_tokens_are_bound(mtls: MtlsStack) -> None:
    proxy = _proxy(mtls, client_context(mtls.files, "agent-1"))
    try:
        resp = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)
    finally:
        proxy.stop()
    assert resp.status_code == 200, resp.text
    issued = [e for e in read_events(mtls.paths.audit_log) if e["action"] == "token.issue"]
    assert issued[-1]["meta"]["cnf"]["x5t#S256"] == thumbprint(mtls.files.client_cert("agent-1"))


def test_the_proxy_with_the_right_pin_connects(mtls: MtlsStack) -> None:
    pin = sha256_of(mtls.files.server_cert)
    proxy = _proxy(mtls, client_context(mtls.files, "agent-1", pin=pin))
    try:
        resp = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)
    finally:
        proxy.stop()
    assert resp.status_code == 200, resp.text


def test_a_pin_mismatch_makes_the_proxy_refuse_before_sending_anything(
    mtls: MtlsStack,
) -> None:
    before = read_events(mtls.paths.audit_log) if mtls.paths.audit_log.exists() else []
    proxy = _proxy(mtls, client_context(mtls.files, "agent-1", pin=b"\x01" * 32))
    try:
        resp = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)
    finally:
        proxy.stop()
    assert resp.status_code == 502
    assert resp.json()["error"]["type"] == "api_error"
    assert "not the pinned one" in resp.json()["error"]["message"]
    # Not even the metadata discovery reached the gateway.
    after = read_events(mtls.paths.audit_log) if mtls.paths.audit_log.exists() else []
    assert after == before


def test_the_proxy_refuses_a_gateway_certificate_from_another_ca(
    mtls: MtlsStack, tmp_path: Path
) -> None:
    # An impostor gateway on loopback with a certificate valid for 127.0.0.1, but from a
    # CA the proxy does not trust (as a public CA would be).
    foreign_ca = make_ca(NOW)
    impostor_files = TlsFiles(tmp_path / "impostor")
    write_issued(foreign_ca, impostor_files.ca_cert, impostor_files.ca_key)
    write_issued(
        issue_server(foreign_ca, NOW, ("127.0.0.1",)),
        impostor_files.server_cert,
        impostor_files.server_key,
    )
    hits: list[str] = []

    async def anything(request: Request) -> JSONResponse:
        hits.append(request.url.path)
        return JSONResponse({"token_endpoint": "https://127.0.0.1/v1/token"})

    impostor_app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
    sock = bind("127.0.0.1", 0)
    with running(impostor_app, sock, server_context(impostor_files)) as impostor:
        key = read_private_key(mtls.paths.identity_key("agent-1"))
        app = create_proxy_app(
            agent_id="agent-1",
            key=key,
            gateway_url=impostor.url,
            tls=client_context(mtls.files, "agent-1"),
        )
        with running(app, bind("127.0.0.1", 0)) as proxy:
            resp = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)
    assert resp.status_code == 502
    assert "TLS certificate refused" in resp.json()["error"]["message"]
    assert hits == []


def test_the_proxy_refuses_an_https_gateway_without_the_agentzt_ca(paths: Paths) -> None:
    key = SigningKey.generate()
    with pytest.raises(ConfigError, match="agentzt CA"):
        create_proxy_app(agent_id="agent-1", key=key, gateway_url="https://127.0.0.1:1")


def test_the_client_context_trusts_no_system_root(mtls: MtlsStack) -> None:
    context = client_context(mtls.files, "agent-1")
    roots = context.get_ca_certs()
    assert len(roots) == 1
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", roots[0]["subject"])
    assert dict(x[0] for x in subject)["commonName"] == "agentzt internal CA"
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.check_hostname


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("AB:" * 31 + "AB", True),
        ("ab" * 32, True),
        ("  " + "0f" * 32 + " ", True),
        ("ab" * 31, False),
        ("zz" * 32, False),
        ("ab" * 33, False),
        ("", False),
        ("sha256/" + "ab" * 32, False),
        ("sha256 Fingerprint=" + "AB:" * 31 + "AB", True),
    ],
    ids=["openssl-colons", "plain-hex", "padded", "short", "not-hex", "long", "empty",
         "prefixed", "openssl-output"],
)  # fmt: skip
def test_parse_pin(text: str, ok: bool) -> None:
    if ok:
        assert len(parse_pin(text)) == 32
    else:
        with pytest.raises(UsageError):
            parse_pin(text)


def test_missing_tls_files_are_a_clear_config_error(paths: Paths) -> None:
    files = TlsFiles(paths.tls_dir)
    with pytest.raises(ConfigError, match="agentzt tls init"):
        server_context(files)
    init_ca(files, now=NOW)
    with pytest.raises(ConfigError, match="tls issue --agent agent-9"):
        client_context(files, "agent-9")


def test_a_gateway_in_mtls_mode_served_without_tls_issues_nothing(paths: Paths) -> None:
    """Misconfigured (mTLS on, but no TLS in front): fail closed rather than issue bearer tokens."""
    key = enroll_agent(paths, "agent-1", "demo-agent")
    sock = bind("127.0.0.1", 0)
    gateway = Gateway(paths, public_url=url_of(sock), settings=mtls_settings())
    with running(create_app(gateway), sock) as server:
        assertion = make_assertion(
            key, "agent-1", audience=gateway.token_endpoint, now=gateway.clock()
        )
        resp = httpx.post(
            f"{server.url}/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


def test_the_h11_fallback_also_exposes_the_peer(
    paths: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agentzt.server

    monkeypatch.setattr(agentzt.server, "HAS_HTTPTOOLS", False)
    files = TlsFiles(paths.tls_dir)
    init_ca(files, now=NOW)
    issue_client_files(files, "agent-3", now=NOW)
    seen: list[object] = []

    async def echo(request: Request) -> JSONResponse:
        seen.append(request.scope.get("extensions", {}).get(PEER_SCOPE_KEY))
        return JSONResponse({})

    sock = bind("127.0.0.1", 0)
    context = tls_client(files, files.client_cert("agent-3"), files.client_key("agent-3"))
    with running(Starlette(routes=[Route("/", echo)]), sock, server_context(files)) as server:
        assert httpx.get(server.url + "/", verify=context).status_code == 200
    assert isinstance(seen[0], PeerCert)
    assert seen[0].agent_id == "agent-3"


# --- review findings: rotation, resumption, diagnosis --------------------------------


def test_renewing_a_certificate_retires_the_old_one_and_its_tokens_at_once(
    mtls: MtlsStack, tmp_path: Path
) -> None:
    old_context = mtls.context_for("agent-1")
    old_token = mtls.token("agent-1", old_context).json()["access_token"]
    assert _call(mtls, old_context, old_token).status_code == 200
    # Keep the old certificate and key aside, then renew.
    old_cert, old_key = tmp_path / "old.crt", tmp_path / "old.key"
    old_cert.write_bytes(mtls.files.client_cert("agent-1").read_bytes())
    old_key.write_bytes(mtls.files.client_key("agent-1").read_bytes())
    issue_agent_certificate(mtls.files, mtls.paths.agents_toml, "agent-1", now=NOW, force=True)
    old_context = tls_client(mtls.files, old_cert, old_key)

    resp = _call(mtls, old_context, old_token)
    assert resp.status_code == 401
    # The token's own binding is checked before the connection's: it names a
    # certificate that is no longer the agent's.
    assert read_events(mtls.paths.audit_log)[-1]["reason"] == (
        "the token is bound to a certificate that is not the agent's registered one"
    )
    assert mtls.token("agent-1", old_context).status_code == 401
    new_context = mtls.context_for("agent-1")
    new_token = mtls.token("agent-1", new_context).json()["access_token"]
    assert _call(mtls, new_context, new_token).status_code == 200


def test_a_ca_signed_certificate_that_is_not_registered_gets_no_token(
    mtls: MtlsStack, tmp_path: Path
) -> None:
    stray = issue_client(load_ca(mtls.files), "agent-1", NOW)  # right CA, right name
    context = tls_client(mtls.files, *save(stray, tmp_path, "stray"))
    resp = mtls.token("agent-1", context)
    assert resp.status_code == 401
    event = read_events(mtls.paths.audit_log)[-1]
    assert event["action"] == "token.reject"
    assert event["meta"]["peer"]["agent"] == "agent-1"
    assert event["meta"]["peer"]["x5t#S256"] == thumbprint(tmp_path / "stray.crt")


def test_a_binding_failure_records_the_presenting_certificate(mtls: MtlsStack) -> None:
    token = mtls.token("agent-1", mtls.context_for("agent-1")).json()["access_token"]
    assert _call(mtls, mtls.context_for("agent-2"), token).status_code == 401
    event = read_events(mtls.paths.audit_log)[-1]
    assert event["agent_id"] == "agent-1"
    assert event["meta"]["peer"] == {
        "agent": "agent-2",
        "x5t#S256": thumbprint(mtls.files.client_cert("agent-2")),
    }


def test_the_metadata_says_tokens_are_certificate_bound(mtls: MtlsStack) -> None:
    with mtls.client(mtls.context_for("agent-1")) as http:
        metadata = http.get("/.well-known/oauth-authorization-server").json()
    assert metadata["tls_client_certificate_bound_access_tokens"] is True


def test_the_gateway_resumes_no_tls_session(mtls: MtlsStack) -> None:
    host, port = mtls.url.removeprefix("https://").rsplit(":", 1)
    context = mtls.context_for("agent-1")

    def connect(session: ssl.SSLSession | None) -> ssl.SSLSocket:
        raw = socket.create_connection((host, int(port)), timeout=5)
        conn = context.wrap_socket(raw, server_hostname=host, session=session)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        conn.recv(4096)  # tickets, if any, arrive with the first answer
        return conn

    first = connect(None)
    session = first.session
    first.close()
    second = connect(session)
    assert not second.session_reused
    second.close()


def test_the_client_context_refuses_an_expired_certificate_with_one_clear_line(
    mtls: MtlsStack,
) -> None:
    later = NOW + dt.timedelta(days=91)
    with pytest.raises(ConfigError, match=r"expired on .*tls issue --agent agent-1 --force"):
        client_context(mtls.files, "agent-1", now=later)


def test_the_client_context_warns_before_expiry(
    mtls: MtlsStack, caplog: pytest.LogCaptureFixture
) -> None:
    client_context(mtls.files, "agent-1", now=NOW + dt.timedelta(days=80))
    assert "agent-1.crt expires on" in caplog.text


def test_a_refused_client_certificate_is_named_by_the_proxy(
    mtls: MtlsStack, tmp_path: Path
) -> None:
    # The agent's files hold a certificate from another CA: the gateway drops the
    # connection after the handshake, and the agent must learn why, not "upstream failed".
    files = TlsFiles(tmp_path / "agent-tls")
    files.directory.mkdir()
    files.ca_cert.write_bytes(mtls.files.ca_cert.read_bytes())
    save(issue_client(make_ca(NOW), "agent-1", NOW), files.directory / "clients", "agent-1")
    proxy = _proxy(mtls, client_context(files, "agent-1"))
    try:
        resp = httpx.post(f"{proxy.url}/v1/messages", json=MESSAGE, timeout=10)
    finally:
        proxy.stop()
    assert resp.status_code == 502
    assert "closed the TLS connection" in resp.json()["error"]["message"]
