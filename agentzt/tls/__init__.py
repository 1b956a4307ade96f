"""Mutual TLS for the proxy↔gateway link: the internal CA, TLS contexts, peer identity."""

from agentzt.tls.context import client_context, parse_pin, server_context
from agentzt.tls.peer import PEER_SCOPE_KEY, PeerCert, peer_from_ssl
from agentzt.tls.pki import TlsFiles, fingerprint, init_ca, issue_client_files, load_ca

__all__ = [
    "PEER_SCOPE_KEY",
    "PeerCert",
    "TlsFiles",
    "client_context",
    "fingerprint",
    "init_ca",
    "issue_client_files",
    "load_ca",
    "parse_pin",
    "peer_from_ssl",
    "server_context",
]
