"""``agentzt tls init`` and ``agentzt tls issue``: the internal CA for mutual TLS."""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Annotated

import typer

from agentzt.cli import app, paths_of
from agentzt.config import Paths
from agentzt.errors import UsageError
from agentzt.identity import load_registry
from agentzt.identity.registry import check_agent_id
from agentzt.tls import (
    TlsFiles,
    client_context,
    fingerprint,
    init_ca,
    parse_pin,
)
from agentzt.tls.pki import alt_names, issue_agent_certificate, read_certificate

tls_app = typer.Typer(help="Internal CA and certificates for mutual TLS.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")
PIN_ENV = "AGENTZT_TLS_PIN"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def tls_files(paths: Paths) -> TlsFiles:
    return TlsFiles(paths.tls_dir)


@tls_app.command("init")
def init_cmd(
    ctx: typer.Context,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing CA (its client certs stop working)."),
    ] = False,
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san", help="Another DNS name or IP for the gateway certificate (repeatable)."
        ),
    ] = None,
) -> None:
    """Create the agentzt CA and the gateway's server certificate."""
    files = tls_files(paths_of(ctx))
    _, server = init_ca(files, now=now(), force=force, extra_names=tuple(san or ()))
    names = ", ".join(alt_names(server.certificate))
    # Plain output: a fingerprint must never be wrapped or styled, since it is copied.
    typer.echo(
        f"agentzt CA and gateway certificate written to {files.directory}\n"
        f"  CA           {files.ca_cert} (key {files.ca_key.name}, 0600)\n"
        f"  gateway      {files.server_cert} for {names}\n"
        f"  valid until  {server.certificate.not_valid_after_utc:%Y-%m-%d}\n"
        f"  fingerprint  {fingerprint(server.certificate)}\n"
        f"  pin it on the proxy with {PIN_ENV}=<fingerprint>; "
        "give agents certificates with 'agentzt enroll --mtls' or 'agentzt tls issue'"
    )


@tls_app.command("issue")
def issue_cmd(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="An enrolled agent.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace (renew) its certificate.")
    ] = False,
) -> None:
    """Issue (or with --force renew) an enrolled agent's client certificate; any older
    one stops working at once."""
    check_agent_id(agent)
    paths = paths_of(ctx)
    if agent not in load_registry(paths.agents_toml):
        raise UsageError(f"agent {agent!r} is not enrolled; run 'agentzt enroll' first")
    files = tls_files(paths)
    issued = issue_agent_certificate(files, paths.agents_toml, agent, now=now(), force=force)
    typer.echo(
        f"client certificate for {agent}: {files.client_cert(agent)} "
        f"(key 0600), valid until {issued.certificate.not_valid_after_utc:%Y-%m-%d}; "
        "the gateway accepts only this one for the agent from now on"
    )


def proxy_tls(paths: Paths, agent: str, gateway_url: str, pin: str | None) -> ssl.SSLContext | None:
    """The proxy's TLS context for an https gateway, None for plain http."""
    if not gateway_url.startswith("https://"):
        if pin:
            raise UsageError(f"a TLS pin needs an https gateway (--mtls), not {gateway_url[:80]}")
        return None
    return client_context(tls_files(paths), agent, pin=parse_pin(pin) if pin else None)


def check_gateway_certificate(paths: Paths, host: str, pin: str | None) -> None:
    """The gateway certificate must be valid for ``host`` and match ``pin``, if any."""
    files = tls_files(paths)
    certificate = read_certificate(files.server_cert)
    names = alt_names(certificate)
    if host not in names:
        raise UsageError(
            f"the gateway certificate {files.server_cert} is not valid for {host} "
            f"(only {', '.join(names)}); add it with 'agentzt tls init --force --san {host}'"
        )
    if pin and parse_pin(pin) != bytes.fromhex(fingerprint(certificate).replace(":", "")):
        raise UsageError(
            f"the TLS pin does not match the gateway certificate {files.server_cert} "
            f"(its fingerprint is {fingerprint(certificate)})"
        )
