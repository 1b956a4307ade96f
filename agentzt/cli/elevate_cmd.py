"""``agentzt elevate``: ask the gateway for a just-in-time grant as an enrolled agent."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from agentzt.cli import app, paths_of
from agentzt.cli.serve_cmds import DEFAULT_GATEWAY, PinOption
from agentzt.cli.tls_cmd import proxy_tls
from agentzt.errors import UsageError
from agentzt.identity import read_private_key
from agentzt.identity.registry import check_agent_id
from agentzt.policy.load import RESOURCE_NAME
from agentzt.proxy.grant import request_grant


@app.command("elevate")
def elevate_cmd(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="The enrolled agent asking.")],
    reason: Annotated[str, typer.Option("--reason", help="Why the grant is needed (audited).")],
    tool: Annotated[str | None, typer.Option("--tool", help="Tool to elevate to.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model to elevate to.")] = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", min=1, help="Seconds; capped by the role.")
    ] = None,
    gateway: Annotated[
        str,
        typer.Option(
            "--gateway", envvar="AGENTZT_GATEWAY_URL", help="Gateway base URL (https: mutual TLS)."
        ),
    ] = DEFAULT_GATEWAY,
    as_json: Annotated[bool, typer.Option("--json", help="Print the gateway's answer.")] = False,
    tls_pin: PinOption = None,
) -> None:
    """Request a JIT grant as that agent and print it (the grant alone on stdout)."""
    check_agent_id(agent)
    if (tool is None) == (model is None):
        raise UsageError("give exactly one of --tool NAME or --model NAME")
    kind, name = ("tool", tool) if tool is not None else ("model", model)
    assert name is not None
    if not RESOURCE_NAME.fullmatch(name):
        raise UsageError(f"--{kind} {name[:80]!r} is not a valid {kind} name")
    if not reason.strip():
        raise UsageError("--reason must not be empty")
    if not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway {gateway[:80]!r} is not an http(s) URL")
    paths = paths_of(ctx)
    key = read_private_key(paths.identity_key(agent))
    tls = proxy_tls(paths, agent, gateway, tls_pin)
    request: dict[str, Any] = {"kind": kind, "name": name, "reason": reason}
    if ttl is not None:
        request["ttl_seconds"] = ttl
    answer = asyncio.run(
        request_grant(
            agent_id=agent, key=key, gateway=gateway.rstrip("/"), request=request, tls=tls
        )
    )
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    typer.echo(
        f"granted {kind}:{name} to {agent} for {answer.get('expires_in')} s; "
        "present it as the x-agentzt-elevation header",
        err=True,
    )
    typer.echo(str(answer["elevation_grant"]))
