"""Who is on the other end of a mutual-TLS connection, read once when it is made.

The gateway's server glue (``agentzt.server``) puts two things in every request's ASGI
scope under ``extensions``: ``"tls"``, shaped as the ASGI TLS extension describes, for
any ASGI code; and ``"agentzt.peer"``, a ``PeerCert`` with what the gateway checks:
the RFC 8705 thumbprint and the agent the certificate names.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from agentzt.identity.registry import AGENT_ID
from agentzt.tls.pki import SPIFFE_AGENT_PREFIX, thumbprint_of

PEER_SCOPE_KEY = "agentzt.peer"
TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


@dataclass(frozen=True, slots=True)
class PeerCert:
    """The verified client certificate of one TLS connection."""

    # RFC 8705 x5t#S256: base64url SHA-256 of the DER certificate.
    thumbprint: str
    # The agent the certificate names, or None when it names none unambiguously.
    agent_id: str | None
    common_name: str


def _attributes(cert: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, v) for rdn in cert.get("subject", ()) for (k, v) in rdn]


def _agent_of(cert: dict[str, Any], common_name: str) -> str | None:
    """The agent id of an agentzt client certificate: its one SPIFFE agent URI, which the
    common name must repeat. Anything else names no agent."""
    uris = [v for kind, v in cert.get("subjectAltName", ()) if kind == "URI"]
    agents = [u[len(SPIFFE_AGENT_PREFIX) :] for u in uris if u.startswith(SPIFFE_AGENT_PREFIX)]
    if len(agents) != 1 or agents[0] != common_name or not AGENT_ID.fullmatch(agents[0]):
        return None
    agent_id: str = agents[0]
    return agent_id


def peer_from_ssl(
    ssl_object: ssl.SSLObject | ssl.SSLSocket,
) -> tuple[PeerCert, dict[str, Any]] | None:
    """The peer certificate and the ASGI ``tls`` extension, or None without a client cert."""
    der = ssl_object.getpeercert(binary_form=True)
    cert = ssl_object.getpeercert()
    if not der or not cert:
        return None
    attributes = _attributes(cert)
    common_names = [v for k, v in attributes if k == "commonName"]
    common_name = common_names[0] if len(common_names) == 1 else ""
    peer = PeerCert(
        thumbprint=thumbprint_of(der),
        agent_id=_agent_of(cert, common_name),
        common_name=common_name,
    )
    extension = {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)],
        "client_cert_name": x509.load_der_x509_certificate(der).subject.rfc4514_string(),
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        # Python's ssl module names the cipher suite but does not give its IANA number.
        "cipher_suite": None,
    }
    return peer, extension
