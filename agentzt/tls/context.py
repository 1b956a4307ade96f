"""TLS contexts for the two ends of the proxy↔gateway link.

Both ends are agentzt, so both speak TLS 1.3 only: no renegotiation, forward secrecy
always, and the client certificate travels encrypted, so a network observer cannot
read which agent is talking.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import ssl
from pathlib import Path
from typing import Any

from agentzt.errors import ConfigError, UsageError
from agentzt.tls.pki import TlsFiles, read_certificate

log = logging.getLogger("agentzt.tls")
# Warn this long before a certificate expires: an agent certificate lives 90 days.
EXPIRY_WARNING = dt.timedelta(days=14)
RENEW_CA = "renew with 'agentzt tls init --force' (then re-issue the agents' certificates)"

PIN_HELP = (
    "the SHA-256 fingerprint of the gateway certificate: 64 hex digits, colons allowed "
    "('agentzt tls init' prints it)"
)


def _need(paths: list[Path], hint: str) -> None:
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: not found; {hint}")


def _check_dates(path: Path, renew: str, now: dt.datetime | None) -> None:
    """Refuse to start with a certificate the peer will refuse, with one line that says
    so, instead of failing every call later with a dropped connection."""
    certificate = read_certificate(path)
    now = now or dt.datetime.now(dt.UTC)
    until = certificate.not_valid_after_utc
    if now > until:
        raise ConfigError(f"{path}: the certificate expired on {until:%Y-%m-%d}; {renew}")
    if now < certificate.not_valid_before_utc:
        raise ConfigError(
            f"{path}: the certificate is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)"
        )
    if until - now < EXPIRY_WARNING:
        log.warning("%s expires on %s; %s", path, f"{until:%Y-%m-%d}", renew)


def _base(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _load(context: ssl.SSLContext, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    try:
        # IMPORTANT: the agentzt CA is the only trust anchor; system roots are never loaded.
        context.load_verify_locations(cafile=ca)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{cert.parent}: cannot load the TLS files ({exc})") from exc
    return context


def server_context(files: TlsFiles, *, now: dt.datetime | None = None) -> ssl.SSLContext:
    """The gateway's: its own certificate, and a client certificate from the CA required."""
    _need([files.ca_cert, files.server_cert, files.server_key], "run 'agentzt tls init'")
    _check_dates(files.ca_cert, RENEW_CA, now)
    _check_dates(files.server_cert, RENEW_CA, now)
    context = _base(ssl.PROTOCOL_TLS_SERVER)
    # No session tickets: a resumed session skips the certificate checks (expiry, the
    # chain) and lets a ticket stand in for the client's key.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return _load(context, files.ca_cert, files.server_cert, files.server_key)


def client_context(
    files: TlsFiles, agent_id: str, *, pin: bytes | None = None, now: dt.datetime | None = None
) -> ssl.SSLContext:
    """The proxy's: the agent's certificate, the gateway checked against the CA (and ``pin``)."""
    _need([files.ca_cert], "run 'agentzt tls init'")
    _need(
        [files.client_cert(agent_id), files.client_key(agent_id)],
        f"run 'agentzt tls issue --agent {agent_id}' (or enroll it with --mtls)",
    )
    _check_dates(files.ca_cert, RENEW_CA, now)
    _check_dates(
        files.client_cert(agent_id),
        f"renew with 'agentzt tls issue --agent {agent_id} --force'",
        now,
    )
    context = _load(
        _base(ssl.PROTOCOL_TLS_CLIENT),
        files.ca_cert,
        files.client_cert(agent_id),
        files.client_key(agent_id),
    )
    if pin is not None:
        context.sslobject_class = _pinned(ssl.SSLObject, pin)
        context.sslsocket_class = _pinned(ssl.SSLSocket, pin)
    return context


def parse_pin(text: str) -> bytes:
    """A SHA-256 fingerprint: as ``agentzt tls init`` or ``openssl x509 -fingerprint
    -sha256`` print it (``sha256 Fingerprint=`` prefix allowed), or plain hex."""
    digits = text.strip()
    if digits.lower().startswith("sha256 fingerprint="):
        digits = digits.split("=", 1)[1]
    digits = digits.replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise UsageError(f"bad TLS pin {text[:80]!r}: expected {PIN_HELP}")
    return bytes.fromhex(digits)


def _check_pin(connection: ssl.SSLObject | ssl.SSLSocket, pin: bytes) -> None:
    der = connection.getpeercert(binary_form=True) or b""
    seen = hashlib.sha256(der).digest()
    if not hmac.compare_digest(seen, pin):
        # (errno, message): with one argument, str() of an SSLError shows a tuple.
        raise ssl.SSLCertVerificationError(
            1,
            f"the gateway certificate (sha256 {seen.hex()[:16]}…) is not the pinned one "
            f"(sha256 {pin.hex()[:16]}…); refusing to connect",
        )


def _pinned(base: Any, pin: bytes) -> Any:
    """A subclass of ``base`` (SSLObject or SSLSocket) that also checks the leaf pin.

    The check runs inside the handshake, before the connection is handed to the HTTP
    client, so not one byte of a request (nor the access token) reaches a gateway that
    shows another certificate, even one the CA signed.
    """

    class Pinned(base):  # type: ignore[misc]
        def do_handshake(self, *args: Any, **kwargs: Any) -> None:
            super().do_handshake(*args, **kwargs)
            _check_pin(self, pin)

    return Pinned
