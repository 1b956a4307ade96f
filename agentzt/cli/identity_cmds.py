"""``agentzt enroll``, ``agentzt agents``, ``agentzt roles``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from agentzt.cli import app, paths_of
from agentzt.cli.output import console
from agentzt.cli.tls_cmd import now, tls_files
from agentzt.errors import AgentztError, EnrollmentError
from agentzt.identity import enroll, load_registry
from agentzt.identity.registry import check_agent_id
from agentzt.policy import load_policy
from agentzt.tls import load_ca
from agentzt.tls.pki import issue_client, thumbprint, write_issued


@app.command("enroll")
def enroll_cmd(
    ctx: typer.Context,
    agent: Annotated[str, typer.Option("--agent", help="Agent id, e.g. research-bot-1.")],
    role: Annotated[str, typer.Option("--role", help="A role from policy.toml.")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing agent.")] = False,
    mtls: Annotated[
        bool, typer.Option("--mtls", help="Also issue a client certificate from the agentzt CA.")
    ] = False,
) -> None:
    """Create a keypair and a registry entry for an agent."""
    paths = paths_of(ctx)
    policy = load_policy(paths.policy_toml)
    files = tls_files(paths)
    issued = None
    if mtls:
        # Issued in memory first, so that a missing CA or an existing certificate writes
        # nothing, and the registry entry names the certificate from the start.
        check_agent_id(agent)
        if files.client_cert(agent).exists() and not force:
            raise EnrollmentError(
                f"{files.client_cert(agent)} already exists; pass --force to replace it"
            )
        issued = issue_client(load_ca(files), agent, now())
    record = enroll(
        registry_path=paths.agents_toml,
        key_path=paths.identity_key(agent),
        agent_id=agent,
        role=role,
        known_roles=policy.roles,
        description=description,
        force=force,
        certificate=thumbprint(issued.certificate) if issued else None,
    )
    console.print(
        f"enrolled [bold]{record.agent_id}[/] as [bold]{record.role}[/]\n"
        f"  private key  {paths.identity_key(agent)} (0600, never leaves this host)\n"
        f"  public key   {record.public_key.b64url}\n"
        f"  registry     {paths.agents_toml}"
    )
    if issued is not None:
        try:
            write_issued(issued, files.client_cert(agent), files.client_key(agent))
        except OSError as exc:
            raise AgentztError(
                f"enrolled {agent}, but its client certificate could not be written "
                f"({exc.strerror}); run 'agentzt tls issue --agent {agent} --force'"
            ) from exc
        console.print(
            f"  client cert  {files.client_cert(agent)} (CN={agent}, "
            f"spiffe://agentzt/agent/{agent}), valid until "
            f"{issued.certificate.not_valid_after_utc:%Y-%m-%d}"
        )


@app.command("agents")
def agents_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document for scripts.")] = False,
) -> None:
    """List enrolled agent identities."""
    paths = paths_of(ctx)
    records = load_registry(paths.agents_toml)
    if as_json:
        rows = [{"agent_id": r.agent_id, **r.to_toml()} for r in records.values()]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Agents ({paths.agents_toml})")
    for column in ("agent", "role", "status", "key id", "created", "description"):
        table.add_column(column)
    for r in records.values():
        table.add_row(
            r.agent_id, r.role, r.status, r.public_key.kid[:16], r.created_at, r.description
        )
    console.print(table)


@app.command("roles")
def roles_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document for scripts.")] = False,
) -> None:
    """List roles and what each may use."""
    paths = paths_of(ctx)
    policy = load_policy(paths.policy_toml)
    if as_json:
        rows = [
            {
                "role": r.name,
                "description": r.description,
                "models": list(r.models),
                "tools": list(r.tools),
                "limits": {
                    "requests_per_minute": r.limits.requests_per_minute,
                    "max_output_tokens": r.limits.max_output_tokens,
                },
                "jit": {
                    "elevatable_tools": sorted(r.jit.elevatable_tools),
                    "elevatable_models": sorted(r.jit.elevatable_models),
                    "max_ttl_seconds": r.jit.max_ttl_seconds,
                    "max_uses": r.jit.max_uses,
                },
            }
            for r in policy.roles.values()
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Roles ({paths.policy_toml})")
    for column in ("role", "models", "tools", "rpm", "max tokens", "JIT-elevatable"):
        table.add_column(column)
    for r in policy.roles.values():
        table.add_row(
            r.name,
            "\n".join(r.models) or "-",
            "\n".join(r.tools) or "-",
            str(r.limits.requests_per_minute),
            str(r.limits.max_output_tokens),
            "\n".join(sorted(r.jit.elevatable_tools | r.jit.elevatable_models)) or "-",
        )
    console.print(table)
