"""``agentzt gateway``, ``agentzt client`` and ``agentzt up``."""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Annotated

import typer

from agentzt.cli import app, paths_of
from agentzt.cli.supervise import Child, supervise
from agentzt.config import load_gateway_settings
from agentzt.errors import UsageError
from agentzt.identity import read_private_key
from agentzt.identity.registry import check_agent_id
from agentzt.server import bind, serve_forever, url_of

HostOption = Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")]
DEFAULT_GATEWAY = "http://127.0.0.1:8700"


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
) -> None:
    """Run the gateway (policy decision and enforcement point) in the foreground."""
    from agentzt.gateway import Gateway, create_app

    _logging()
    paths = paths_of(ctx)
    settings = load_gateway_settings(paths.gateway_toml)
    sock = _bind(host, port, "gateway")
    gateway = Gateway(paths, public_url=url_of(sock), settings=settings)
    typer.echo(f"agentzt gateway on {url_of(sock)} (issuer {gateway.issuer})", err=True)
    serve_forever(create_app(gateway), sock)


@app.command("client")
def client_cmd(
    ctx: typer.Context,
    agent: Annotated[
        str, typer.Option("--agent", help="The enrolled agent this proxy speaks for.")
    ],
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8787,
    gateway: Annotated[
        str, typer.Option("--gateway", envvar="AGENTZT_GATEWAY_URL", help="Gateway base URL.")
    ] = DEFAULT_GATEWAY,
) -> None:
    """Run the client proxy for one agent in the foreground."""
    from agentzt.proxy import create_proxy_app

    _logging()
    check_agent_id(agent)
    if not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway {gateway[:80]!r} is not an http(s) URL")
    paths = paths_of(ctx)
    key = read_private_key(paths.identity_key(agent))
    sock = _bind(host, port, "client proxy")
    typer.echo(f"agentzt client proxy for {agent} on {url_of(sock)} → {gateway}", err=True)
    serve_forever(create_proxy_app(agent_id=agent, key=key, gateway_url=gateway), sock)


@app.command("up")
def up_cmd(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="The enrolled agent the proxy speaks for.")],
    host: HostOption = "127.0.0.1",
    gateway_port: Annotated[int, typer.Option("--gateway-port", min=1, max=65535)] = 8700,
    client_port: Annotated[int, typer.Option("--client-port", min=1, max=65535)] = 8787,
) -> None:
    """Run gateway and client proxy as one supervised process tree."""
    check_agent_id(agent)
    paths = paths_of(ctx)
    if not paths.identity_key(agent).exists():
        raise UsageError(
            f"no key for agent {agent!r} at {paths.identity_key(agent)}; run agentzt enroll first"
        )
    base = [
        sys.executable,
        "-m",
        "agentzt",
        "--config",
        str(paths.config_dir),
        "--home",
        str(paths.home),
    ]
    gateway_url = f"http://{host}:{gateway_port}"
    children = [
        Child(
            "gateway",
            [*base, "gateway", "--host", host, "--port", str(gateway_port)],
            f"{gateway_url}/healthz",
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
            ],
            f"http://{host}:{client_port}/healthz",
        ),
    ]
    typer.echo(
        f"agentzt up: gateway {gateway_url}, client proxy http://{host}:{client_port} for {agent}\n"
        f"  point your agent at it: ANTHROPIC_BASE_URL=http://{host}:{client_port}",
        err=True,
    )
    code = supervise(children, env=dict(os.environ))
    raise typer.Exit(code)
