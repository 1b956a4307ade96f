"""Mutual TLS from the command line: ``agentzt tls``, ``enroll --mtls``, ``gateway``/``client``/
``up --mtls``, ``--tls-pin`` and ``demo --mtls``, run as a user runs them: subprocesses, real
files, real TLS 1.3 on loopback ephemeral ports."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from conftest import enroll_agent
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gateway_process import run_agentzt as cli
from test_cli import (
    _env,
    assert_one_line_error,
    assert_stops_cleanly,
    free_port,
    listening,
    snapshot,
)

from agentzt.audit import read_events
from agentzt.config import Paths
from agentzt.identity import load_registry, read_private_key
from agentzt.tls import TlsFiles, init_ca, issue_client_files
from agentzt.tls.pki import issue_agent_certificate

MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hello"}],
}
HEX64 = "ab" * 32

ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def files_of(paths: Paths) -> TlsFiles:
    return TlsFiles(paths.tls_dir)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_ca(paths: Paths) -> TlsFiles:
    """What ``agentzt tls init`` does, in process, for tests about what comes after it."""
    files = files_of(paths)
    init_ca(files, now=utcnow())
    return files


def state(paths: Paths) -> dict[str, tuple[int, bytes]]:
    """Every file of config and home, and whether home exists at all."""
    return snapshot(paths.config_dir, paths.home) | {
        "<home exists>": (0, str(paths.home.exists()).encode())
    }


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def der(path: Path) -> bytes:
    return cert(path).public_bytes(serialization.Encoding.DER)


def p256_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    return key


def ec_public_key(certificate: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def extension(certificate: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return certificate.extensions.get_extension_for_class(kind)


# --- agentzt tls init -----------------------------------------------------------------------


def test_tls_init_writes_ca_and_server_cert_and_prints_the_fingerprint(paths: Paths) -> None:
    result = cli(paths, "tls", "init", "--san", "gw.internal", "--san", "10.0.0.5")
    assert result.returncode == 0, result.stderr
    files = files_of(paths)
    assert sorted(p.name for p in paths.tls_dir.iterdir()) == [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
    ]
    assert mode(files.ca_key) == 0o600
    assert mode(files.server_key) == 0o600
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    # The printed fingerprint is the SHA-256 of the server certificate's DER.
    found = re.search(r"fingerprint\s+([0-9A-F:]+)", result.stdout)
    assert found is not None, result.stdout
    assert found.group(1) == colon_hex(hashlib.sha256(der(files.server_cert)).digest())
    assert found.group(1) != colon_hex(hashlib.sha256(der(files.ca_cert)).digest())

    ca, server = cert(files.ca_cert), cert(files.server_cert)
    ca_key, server_key = p256_key(files.ca_key), p256_key(files.server_key)
    assert ec_public_key(ca).public_numbers() == ca_key.public_key().public_numbers()
    assert ec_public_key(server).public_numbers() == server_key.public_key().public_numbers()

    constraints = extension(ca, x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is True
    assert extension(ca, x509.KeyUsage).value.key_cert_sign is True
    assert ca.subject == ca.issuer

    server.verify_directly_issued_by(ca)
    assert extension(server, x509.BasicConstraints).value.ca is False
    assert list(extension(server, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = extension(server, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "gw.internal"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.0.5"),
    ]


def test_tls_init_refuses_to_overwrite_without_force(paths: Paths) -> None:
    files = make_ca(paths)
    before = state(paths)
    old_ca = files.ca_cert.read_bytes()

    again = cli(paths, "tls", "init")
    assert again.returncode == 2
    line = assert_one_line_error(again)
    assert "already exists" in line
    assert "--force" in line
    assert state(paths) == before

    forced = cli(paths, "tls", "init", "--force")
    assert forced.returncode == 0, forced.stderr
    assert files.ca_cert.read_bytes() != old_ca
    assert files.ca_key.read_bytes() != before[str(files.ca_key)][1]
    assert files.server_cert.read_bytes() != before[str(files.server_cert)][1]
    cert(files.server_cert).verify_directly_issued_by(cert(files.ca_cert))
    assert mode(files.ca_key) == mode(files.server_key) == 0o600


BAD_SANS = [
    ("bad name!", False),
    ("a..b", True),
]


@pytest.mark.parametrize(("san", "existing"), BAD_SANS, ids=["space-and-bang", "empty-label-force"])
def test_tls_init_refuses_a_bad_san_and_writes_nothing(
    paths: Paths, san: str, existing: bool
) -> None:
    if existing:
        make_ca(paths)
    before = state(paths)
    result = cli(paths, "tls", "init", *(["--force"] if existing else []), "--san", san)
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert "--san" in line
    assert repr(san) in line
    assert result.stdout == ""
    assert state(paths) == before


# --- enroll --mtls and tls issue --------------------------------------------------------------


def test_enroll_mtls_without_a_ca_writes_nothing(paths: Paths) -> None:
    before = state(paths)
    result = cli(paths, "enroll", "--agent", "a1", "--role", "demo-agent", "--mtls")
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert "agentzt tls init" in line
    assert result.stdout == ""
    assert state(paths) == before
    assert not paths.agents_toml.exists()
    assert not paths.identity_key("a1").exists()


def test_enroll_mtls_issues_a_client_certificate_from_the_ca(paths: Paths) -> None:
    files = make_ca(paths)
    result = cli(paths, "enroll", "--agent", "a1", "--role", "demo-agent", "--mtls")
    assert result.returncode == 0, result.stderr
    assert str(files.client_cert("a1")) in result.stdout
    assert load_registry(paths.agents_toml)["a1"].role == "demo-agent"
    assert mode(paths.identity_key("a1")) == 0o600
    assert mode(files.client_key("a1")) == 0o600
    assert "PRIVATE KEY" not in result.stdout + result.stderr

    client, ca = cert(files.client_cert("a1")), cert(files.ca_cert)
    key = p256_key(files.client_key("a1"))
    assert ec_public_key(client).public_numbers() == key.public_key().public_numbers()
    assert [a.value for a in client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["a1"]
    sans = extension(client, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://agentzt/agent/a1"]
    assert sans.get_values_for_type(x509.DNSName) == []
    assert list(extension(client, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert extension(client, x509.BasicConstraints).value.ca is False
    assert client.issuer == ca.subject
    client.verify_directly_issued_by(ca)
    # The signature really is the CA key's: check it by hand as well.
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert client.signature_hash_algorithm is not None
    ca_public.verify(
        client.signature, client.tbs_certificate_bytes, ec.ECDSA(client.signature_hash_algorithm)
    )

    lifetime = client.not_valid_after_utc - client.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=90, minutes=6)
    assert client.not_valid_after_utc - utcnow() <= dt.timedelta(days=90, minutes=1)
    assert client.not_valid_after_utc - utcnow() >= dt.timedelta(days=89)
    assert client.not_valid_before_utc <= utcnow()


@pytest.mark.parametrize("enrolled", [True, False], ids=["enrolled-with-cert", "cert-only"])
def test_enroll_mtls_refuses_an_existing_client_cert(paths: Paths, enrolled: bool) -> None:
    files = make_ca(paths)
    issue_client_files(files, "a1", now=utcnow())
    if enrolled:
        enroll_agent(paths, "a1", "demo-agent")
    before = state(paths)
    result = cli(paths, "enroll", "--agent", "a1", "--role", "demo-agent", "--mtls")
    assert result.returncode == 1
    line = assert_one_line_error(result)
    assert str(files.client_cert("a1")) in line
    assert "--force" in line
    assert result.stdout == ""
    assert state(paths) == before


def test_tls_issue_refuses_an_agent_that_is_not_enrolled(paths: Paths) -> None:
    files = make_ca(paths)
    enroll_agent(paths, "other", "demo-agent")
    before = state(paths)
    result = cli(paths, "tls", "issue", "--agent", "a1")
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert "'a1' is not enrolled" in line
    assert state(paths) == before
    assert not files.client_cert("a1").exists()


def test_tls_issue_renews_only_with_force(paths: Paths) -> None:
    files = make_ca(paths)
    enroll_agent(paths, "a1", "demo-agent")
    issue_agent_certificate(files, paths.agents_toml, "a1", now=utcnow())
    before = state(paths)
    old = cert(files.client_cert("a1"))
    old_key = files.client_key("a1").read_bytes()

    refused = cli(paths, "tls", "issue", "--agent", "a1")
    assert refused.returncode == 2
    line = assert_one_line_error(refused)
    assert str(files.client_cert("a1")) in line
    assert "--force" in line
    assert state(paths) == before

    renewed = cli(paths, "tls", "issue", "--agent", "a1", "--force")
    assert renewed.returncode == 0, renewed.stderr
    assert str(files.client_cert("a1")) in renewed.stdout
    new = cert(files.client_cert("a1"))
    assert new.public_bytes(serialization.Encoding.DER) != old.public_bytes(
        serialization.Encoding.DER
    )
    assert new.serial_number != old.serial_number
    assert files.client_key("a1").read_bytes() != old_key
    assert mode(files.client_key("a1")) == 0o600
    assert new.subject == old.subject
    assert [a.value for a in new.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["a1"]
    new.verify_directly_issued_by(cert(files.ca_cert))
    assert ec_public_key(new).public_numbers() == (
        p256_key(files.client_key("a1")).public_key().public_numbers()
    )


# --- missing files and bad pins ----------------------------------------------------------------

MISSING_TLS = [
    (["gateway", "--mtls"], False, "ca.crt", "run 'agentzt tls init'"),
    (["client", "--agent", "a1", "--mtls"], False, "ca.crt", "run 'agentzt tls init'"),
    (["client", "--agent", "a1", "--mtls"], True, "clients/a1.crt", "agentzt tls issue --agent a1"),
]


@pytest.mark.parametrize(
    ("command", "with_ca", "missing", "hint"),
    MISSING_TLS,
    ids=["gateway-no-ca", "client-no-ca", "client-no-client-cert"],
)
def test_mtls_without_tls_files_stops_with_one_line(
    paths: Paths, command: list[str], with_ca: bool, missing: str, hint: str
) -> None:
    enroll_agent(paths, "a1", "demo-agent")
    if with_ca:
        make_ca(paths)
    port = free_port()
    result = cli(paths, *command, "--port", str(port), timeout=20)
    assert result.returncode == 2
    line = assert_one_line_error(result)
    assert f"{paths.tls_dir / missing}: not found" in line
    assert hint in line
    assert not listening(port)


BAD_PINS = [
    (["client", "--agent", "a1", "--mtls", "--tls-pin", "ZZZ"], "bad TLS pin 'ZZZ'"),
    (
        ["client", "--agent", "a1", "--gateway", "http://127.0.0.1:9", "--tls-pin", HEX64],
        "a TLS pin needs an https gateway",
    ),
    (["up", "--agent", "a1", "--tls-pin", HEX64], "--tls-pin needs --mtls"),
    # Like a missing certificate, a malformed pin is bad usage of 'up' itself: one line,
    # exit 2, before any child starts (not the client proxy dying after the gateway is up).
    (["up", "--agent", "a1", "--mtls", "--tls-pin", "ZZZ"], "bad TLS pin 'ZZZ'"),
    # A well-formed pin that is not the gateway certificate `up` is about to serve.
    (
        ["up", "--agent", "a1", "--mtls", "--tls-pin", HEX64],
        "the TLS pin does not match the gateway certificate",
    ),
    # A bind address the gateway certificate does not name: refused before starting,
    # instead of a health check that never passes.
    (
        ["up", "--agent", "a1", "--mtls", "--host", "127.0.0.2"],
        "is not valid for 127.0.0.2 (only localhost, 127.0.0.1, ::1); add it with "
        "'agentzt tls init --force --san 127.0.0.2'",
    ),
]


@pytest.mark.parametrize(
    ("command", "hint"),
    BAD_PINS,
    ids=[
        "client-malformed",
        "client-pin-on-http",
        "up-pin-no-mtls",
        "up-mtls-malformed",
        "up-pin-mismatch",
        "up-host-not-in-cert",
    ],
)
def test_bad_tls_pin_is_bad_usage(paths: Paths, command: list[str], hint: str) -> None:
    files = make_ca(paths)
    enroll_agent(paths, "a1", "demo-agent")
    issue_agent_certificate(files, paths.agents_toml, "a1", now=utcnow())
    gw_port, client_port = free_port(), free_port()
    ports = (
        ["--gateway-port", str(gw_port), "--client-port", str(client_port)]
        if command[0] == "up"
        else ["--port", str(client_port)]
    )
    result = cli(paths, *command, *ports, timeout=30)
    assert result.returncode == 2, result.stderr
    line = assert_one_line_error(result)
    assert hint in line
    assert not listening(gw_port)
    assert not listening(client_port)


# --- live servers ------------------------------------------------------------------------------


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The server processes a test starts, each in its own session; kills what is left, by pid."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start(
    paths: Paths,
    started: list[subprocess.Popen[bytes]],
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "agentzt",
                "--config", str(paths.config_dir), "--home", str(paths.home),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=paths.config_dir.parent,
            env=env or _env(),
            start_new_session=True,
        )  # fmt: skip
    started.append(proc)
    return proc


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready:\n{log.read_text()}")


def trusting(files: TlsFiles, agent: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    if agent is not None:
        context.load_cert_chain(files.client_cert(agent), files.client_key(agent))
    return context


def x5t(path: Path) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(der(path)).digest()).rstrip(b"=").decode()


def test_up_mtls_end_to_end(
    paths: Paths, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    files = make_ca(paths)
    enroll_agent(paths, "a1", "demo-agent")
    issue_agent_certificate(files, paths.agents_toml, "a1", now=utcnow())
    gw_port, client_port = free_port(), free_port()
    log = tmp_path / "up.stderr"
    proc = start(
        paths, procs, log, "up", "--agent", "a1", "--mtls",
        "--gateway-port", str(gw_port), "--client-port", str(client_port),
    )  # fmt: skip
    wait_ready(f"http://127.0.0.1:{client_port}/healthz", procs, log)

    with httpx.Client(base_url=f"http://127.0.0.1:{client_port}", timeout=10) as client:
        resp = client.post("/v1/messages", json=MESSAGE)
    assert resp.status_code == 200, resp.text
    assert resp.json()["type"] == "message"

    # The gateway port speaks only TLS, and only to a client certificate from the CA.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{gw_port}/healthz", timeout=5)
    with pytest.raises(httpx.TransportError):
        # Under TLS 1.3 the refusal may come after the client's handshake completed.
        httpx.get(f"https://127.0.0.1:{gw_port}/healthz", verify=trusting(files), timeout=5)
    health = httpx.get(
        f"https://127.0.0.1:{gw_port}/healthz", verify=trusting(files, "a1"), timeout=5
    )
    assert health.json() == {"status": "ok"}

    issued = [e for e in read_events(paths.audit_log) if e["action"] == "token.issue"]
    assert issued, read_events(paths.audit_log)
    thumbprint = x5t(files.client_cert("a1"))
    # Both bindings apply: the certificate (RFC 8705) and the agent key (DPoP, RFC 9449).
    jkt = read_private_key(paths.identity_key("a1")).public.kid
    bound = {"x5t#S256": thumbprint, "jkt": jkt}
    assert [e["meta"].get("cnf") for e in issued] == [bound] * len(issued)
    assert {e["agent_id"] for e in issued} == {"a1"}

    assert_stops_cleanly(proc, log, gw_port, client_port)


def test_client_tls_pin_refuses_another_gateway_certificate(
    paths: Paths, tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    files = make_ca(paths)
    enroll_agent(paths, "a1", "demo-agent")
    issue_agent_certificate(files, paths.agents_toml, "a1", now=utcnow())
    server_digest = hashlib.sha256(der(files.server_cert)).digest()
    # A real certificate from the same CA setup, just not the gateway's.
    wrong_digest = hashlib.sha256(der(files.ca_cert)).digest()

    gw_port, wrong_port, right_port = free_port(), free_port(), free_port()
    gateway_url = f"https://127.0.0.1:{gw_port}"
    gw_log, wrong_log, right_log = (tmp_path / f"{n}.stderr" for n in ("gw", "wrong", "right"))
    start(paths, procs, gw_log, "gateway", "--mtls", "--port", str(gw_port))
    client = ["client", "--agent", "a1", "--mtls", "--gateway", gateway_url]
    start(paths, procs, wrong_log, *client, "--port", str(wrong_port),
          "--tls-pin", wrong_digest.hex())  # fmt: skip
    # The right pin in openssl's colon form, through the environment, as 'up' passes it.
    start(paths, procs, right_log, *client, "--port", str(right_port),
          env=_env(AGENTZT_TLS_PIN=colon_hex(server_digest)))  # fmt: skip
    for port, log in ((wrong_port, wrong_log), (right_port, right_log)):
        wait_ready(f"http://127.0.0.1:{port}/healthz", procs, log)
    # The proxies answer /healthz on their own; the gateway may still be starting.
    deadline = time.monotonic() + 30
    while True:
        try:
            health = httpx.get(f"{gateway_url}/healthz", verify=trusting(files, "a1"), timeout=5)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, gw_log.read_text()
            time.sleep(0.1)
    assert health.json() == {"status": "ok"}

    before = read_events(paths.audit_log)
    refused = httpx.post(f"http://127.0.0.1:{wrong_port}/v1/messages", json=MESSAGE, timeout=15)
    assert refused.status_code == 502, refused.text
    error = refused.json()["error"]
    assert error["type"] == "api_error"
    message = error["message"]
    assert "is not the pinned one" in message
    assert server_digest.hex()[:16] in message
    assert wrong_digest.hex()[:16] in message
    # Nothing reached the gateway: not even a token request over the refused connection.
    assert read_events(paths.audit_log) == before

    allowed = httpx.post(f"http://127.0.0.1:{right_port}/v1/messages", json=MESSAGE, timeout=15)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["type"] == "message"
    issued = [e for e in read_events(paths.audit_log) if e["action"] == "token.issue"]
    jkt = read_private_key(paths.identity_key("a1")).public.kid
    assert [e["meta"].get("cnf") for e in issued] == [
        {"x5t#S256": x5t(files.client_cert("a1")), "jkt": jkt}
    ]

    # The operator reads the reason as a sentence, not as a Python tuple.
    assert message == (
        "gateway unreachable: TLS certificate refused: the gateway certificate "
        f"(sha256 {server_digest.hex()[:16]}…) is not the pinned one "
        f"(sha256 {wrong_digest.hex()[:16]}…); refusing to connect"
    ), message


# --- demo ----------------------------------------------------------------------------------------


def test_demo_mtls_binds_every_token_to_the_client_certificate(tmp_path: Path) -> None:
    paths = Paths(config_dir=tmp_path / "operator-config", home=tmp_path / "operator-home")
    result = cli(paths, "demo", "--mtls", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "mutual TLS" in out
    assert "CN=demo-agent-1, URI spiffe://agentzt/agent/demo-agent-1" in out
    bound = re.search(r"(\d+) of (\d+) access tokens bound to the client certificate", out)
    assert bound is not None, out
    assert bound.group(1) == bound.group(2) != "0"
    assert "a connection without a client certificate: refused (" in out
    assert "ANSWERED" not in out
    assert "all steps as expected" in out
    assert "NOT as expected" not in out
    assert not paths.config_dir.exists()
    assert not paths.home.exists()
