"""The agentzt internal PKI: one CA, the gateway's server certificate, one client
certificate per agent. Built with ``cryptography``; nothing shells out to openssl.

Every key is ECDSA P-256. agentzt signs its tokens with Ed25519, but a certificate is
about interoperability: every TLS stack an operator may point at the gateway (OpenSSL,
BoringSSL, Go, rustls, Java, the macOS and Windows system stacks, curl builds on any of
them) accepts P-256 certificates, while Ed25519 certificates are still refused by several
of them and by most KMS- and HSM-backed CAs an enterprise would move this CA into.

Validity: the CA lives 5 years, the gateway certificate 1 year, agent certificates 90
days (renewed with ``agentzt tls issue --agent ID --force``). Every certificate starts 5
minutes in the past so that a peer whose clock is a little behind still accepts it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentzt.errors import ConfigError, UsageError
from agentzt.files import write_atomically
from agentzt.identity.keys import b64url
from agentzt.identity.registry import record_certificate

CA_DAYS = 5 * 365
SERVER_DAYS = 365
CLIENT_DAYS = 90
BACKDATE = dt.timedelta(minutes=5)
SPIFFE_AGENT_PREFIX = "spiffe://agentzt/agent/"
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
CA_NAME = "agentzt internal CA"

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    """Where ``agentzt tls init`` and ``enroll --mtls`` keep certificates (``<home>/tls``)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def client_cert(self, agent_id: str) -> Path:
        return self.directory / "clients" / f"{agent_id}.crt"

    def client_key(self, agent_id: str) -> Path:
        return self.directory / "clients" / f"{agent_id}.key"


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: PrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as colon-separated upper-case hex (openssl's form)."""
    digest = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def thumbprint_of(der: bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the DER certificate, no padding."""
    return b64url(hashlib.sha256(der).digest())


def thumbprint(certificate: x509.Certificate) -> str:
    return thumbprint_of(certificate.public_bytes(serialization.Encoding.DER))


def alt_names(certificate: x509.Certificate) -> list[str]:
    """The subject alternative names, as text."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in extension.value]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agentzt"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: PrivateKey, now: dt.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf_usage(builder: x509.CertificateBuilder, ca: Issued) -> x509.CertificateBuilder:
    return (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )


def make_ca(now: dt.datetime, days: int = CA_DAYS) -> Issued:
    key = new_key()
    name = _name(CA_NAME)
    certificate = (
        _builder(name, name, key, now, days)
        # path_length 0: the CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate, key)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server(
    ca: Issued, now: dt.datetime, names: tuple[str, ...], days: int = SERVER_DAYS
) -> Issued:
    """The gateway's certificate, valid for ``names`` (DNS names or IP addresses)."""
    key = new_key()
    certificate = (
        _leaf_usage(_builder(_name("agentzt gateway"), ca.certificate.subject, key, now, days), ca)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def issue_client(ca: Issued, agent_id: str, now: dt.datetime, days: int = CLIENT_DAYS) -> Issued:
    """An agent's certificate: CN = agent id, URI SAN ``spiffe://agentzt/agent/<id>``."""
    key = new_key()
    certificate = (
        _leaf_usage(_builder(_name(agent_id), ca.certificate.subject, key, now, days), ca)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(SPIFFE_AGENT_PREFIX + agent_id)]
            ),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(certificate, key)


def write_issued(issued: Issued, cert_path: Path, key_path: Path) -> None:
    """The key (PKCS#8 PEM, 0600) first, then the certificate. Each file is replaced
    atomically; a crash between the two leaves a key that does not match its certificate,
    which every loader refuses with a clear error, and issuing again repairs."""
    key_pem = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(key_path, key_pem, 0o600)
    write_atomically(cert_path, issued.certificate.public_bytes(serialization.Encoding.PEM), 0o644)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found; run 'agentzt tls init'") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a PEM certificate ({exc})") from exc


def load_ca(files: TlsFiles) -> Issued:
    """The CA certificate and key, or a UsageError telling the user to run ``tls init``."""
    for path in (files.ca_cert, files.ca_key):
        if not path.exists():
            raise UsageError(
                f"no agentzt CA: {path} is missing; run 'agentzt tls init' "
                "(with --force if some of its files remain)"
            )
    try:
        certificate = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{files.directory}: cannot read the agentzt CA ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{files.ca_key}: not an EC private key")
    if key.public_key() != certificate.public_key():
        raise ConfigError(f"{files.ca_key} is not the key of {files.ca_cert}")
    return Issued(certificate, key)


def init_ca(
    files: TlsFiles, *, now: dt.datetime, force: bool = False, extra_names: tuple[str, ...] = ()
) -> tuple[Issued, Issued]:
    """Create the CA and the gateway certificate; refuse to overwrite without ``force``."""
    existing = [
        p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key) if p.exists()
    ]
    if existing and not force:
        raise UsageError(
            f"{existing[0]} already exists; use --force to replace the CA "
            "(every client certificate it signed stops working)"
        )
    for name in extra_names:
        check_server_name(name)
    names = tuple(dict.fromkeys((*DEFAULT_SERVER_NAMES, *extra_names)))
    ca = make_ca(now)
    server = issue_server(ca, now, names)
    write_issued(ca, files.ca_cert, files.ca_key)
    write_issued(server, files.server_cert, files.server_key)
    return ca, server


def issue_client_files(
    files: TlsFiles, agent_id: str, *, now: dt.datetime, force: bool = False
) -> Issued:
    """Issue and write a client certificate; ``issue_agent_certificate`` also registers it."""
    ca = load_ca(files)
    if files.client_cert(agent_id).exists() and not force:
        raise UsageError(f"{files.client_cert(agent_id)} already exists; use --force to replace it")
    issued = issue_client(ca, agent_id, now)
    write_issued(issued, files.client_cert(agent_id), files.client_key(agent_id))
    return issued


def issue_agent_certificate(
    files: TlsFiles, registry_path: Path, agent_id: str, *, now: dt.datetime, force: bool = False
) -> Issued:
    """Issue an enrolled agent's client certificate and register it as the only one the
    gateway accepts for the agent; a certificate issued before stops working at once."""
    issued = issue_client_files(files, agent_id, now=now, force=force)
    record_certificate(registry_path, agent_id, thumbprint(issued.certificate))
    return issued


def check_server_name(name: str) -> None:
    """A DNS name or an IP address a gateway certificate may carry."""
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_dns_label(label) for label in labels):
        raise UsageError(f"--san {name[:80]!r} is neither a DNS name nor an IP address")


def _dns_label(label: str) -> bool:
    return (
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
    )
