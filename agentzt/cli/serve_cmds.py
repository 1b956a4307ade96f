"""``agentzt gateway``, ``agentzt client`` and ``agentzt up``."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from typing import Annotated

import typer

from agentzt.cli import app, paths_of
from agentzt.cli.supervise import Child, supervise
from agentzt.cli.tls_cmd import PIN_ENV, check_gateway_certificate, proxy_tls, tls_files
from agentzt.config import TlsSettings, load_gateway_settings
from agentzt.errors import UsageError
from agentzt.identity import read_private_key
from agentzt.identity.registry import check_agent_id
from agentzt.server import bind, serve_forever, url_of
from agentzt.tls import client_context, server_context

HostOption = Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")]
MtlsOption = Annotated[
    bool, typer.Option("--mtls", help="Mutual TLS between proxy and gateway (agentzt tls init).")
]
PinOption = Annotated[
    str | None,
    typer.Option(
        "--tls-pin",
        envvar=PIN_ENV,
        help="SHA-256 fingerprint the gateway certificate must have (with --mtls).",
    ),
]
DEFAULT_GATEWAY = "http://127.0.0.1:8700"
DEFAULT_TLS_GATEWAY = "https://127.0.0.1:8700"
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 (names, not binds)


def _bind(host: str, port: int, what: str) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} for the {what}: {exc.strerror}") from exc


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")


@app.command("gateway")
def gateway_cmd(
    ctx: typer.Context,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8700,
    mtls: MtlsOption = False,
) -> None:
    """Run the gateway (policy decision and enforcement point) in the foreground."""
    from agentzt.gateway import Gateway, create_app

    _logging()
    paths = paths_of(ctx)
    settings = load_gateway_settings(paths.gateway_toml)
    if mtls:
        settings = dataclasses.replace(settings, tls=TlsSettings(mode="mtls"))
    tls = server_context(tls_files(paths)) if settings.tls.mtls else None
    sock = _bind(host, port, "gateway")
    url = url_of(sock, "https" if tls else "http")
    gateway = Gateway(paths, public_url=url, settings=settings)
    channel = "mutual TLS, client certificate required" if tls else "plain HTTP"
    typer.echo(f"agentzt gateway on {url} ({channel}; issuer {gateway.issuer})", err=True)
    serve_forever(create_app(gateway), sock, tls)


@app.command("client")
def client_cmd(
    ctx: typer.Context,
    agent: Annotated[
        str, typer.Option("--agent", help="The enrolled agent this proxy speaks for.")
    ],
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8787,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            envvar="AGENTZT_GATEWAY_URL",
            help="Gateway base URL (https means mutual TLS).",
            show_default=DEFAULT_GATEWAY,
        ),
    ] = None,
    mtls: MtlsOption = False,
    tls_pin: PinOption = None,
) -> None:
    """Run the client proxy for one agent in the foreground."""
    from agentzt.proxy import create_proxy_app

    _logging()
    check_agent_id(agent)
    gateway = gateway or (DEFAULT_TLS_GATEWAY if mtls else DEFAULT_GATEWAY)
    if not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway {gateway[:80]!r} is not an http(s) URL")
    if mtls and not gateway.startswith("https://"):
        raise UsageError(f"--mtls needs an https gateway URL, not {gateway[:80]}")
    paths = paths_of(ctx)
    key = read_private_key(paths.identity_key(agent))
    tls = proxy_tls(paths, agent, gateway, tls_pin)
    proxy = create_proxy_app(agent_id=agent, key=key, gateway_url=gateway, tls=tls)
    sock = _bind(host, port, "client proxy")
    channel = " (mutual TLS" + (", pinned)" if tls_pin else ")") if tls else ""
    typer.echo(f"agentzt client proxy for {agent} on {url_of(sock)} → {gateway}{channel}", err=True)
    serve_forever(proxy, sock)


@app.command("up")
def up_cmd(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="The enrolled agent the proxy speaks for.")],
    host: HostOption = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option("--gateway-port", min=1, max=65535)] = 8700,
    client_port: Annotated[int, typer.Option("--client-port", min=1, max=65535)] = 8787,
    mtls: MtlsOption = False,
    tls_pin: PinOption = None,
) -> None:
    """Run gateway and client proxy as one supervised process tree."""
    check_agent_id(agent)
    paths = paths_of(ctx)
    if not paths.identity_key(agent).exists():
        raise UsageError(
            f"no key for agent {agent!r} at {paths.identity_key(agent)}; run agentzt enroll first"
        )
    if tls_pin and not mtls:
        raise UsageError("--tls-pin needs --mtls")
    # A wildcard bind is reached over loopback.
    connect_host = WILDCARDS.get(host, host)
    health_tls = None
    if mtls:
        # Checked here, so that missing or mismatched certificates and a wrong pin are
        # one clear line before anything starts, not a child's death or a dead proxy.
        server_context(tls_files(paths))
        check_gateway_certificate(paths, connect_host, tls_pin)
        health_tls = client_context(tls_files(paths), agent)
    base = [
        sys.executable,
        "-m",
        "agentzt",
        "--config",
        str(paths.config_dir),
        "--home",
        str(paths.home),
    ]
    scheme = "https" if mtls else "http"
    url_host = f"[{connect_host}]" if ":" in connect_host else connect_host
    gateway_url = f"{scheme}://{url_host}:{gateway_port}"
    tls_flags = ["--mtls"] if mtls else []
    children = [
        Child(
            "gateway",
            [*base, "gateway", "--host", host, "--port", str(gateway_port), *tls_flags],
            f"{gateway_url}/healthz",
            tls=health_tls,
        ),
        Child(
            "client proxy",
            [
                *base,
                "client",
                "--agent",
                agent,
                "--host",
                host,
                "--port",
                str(client_port),
                "--gateway",
                gateway_url,
                *tls_flags,
            ],
            f"http://{url_host}:{client_port}/healthz",
        ),
    ]
    typer.echo(
        f"agentzt up: gateway {gateway_url}, client proxy http://{url_host}:{client_port} "
        f"for {agent}{' over mutual TLS' if mtls else ''}\n"
        f"  point your agent at it: ANTHROPIC_BASE_URL=http://{url_host}:{client_port}",
        err=True,
    )
    env = dict(os.environ)
    if tls_pin:
        env[PIN_ENV] = tls_pin
    code = supervise(children, env=env)
    raise typer.Exit(code)
