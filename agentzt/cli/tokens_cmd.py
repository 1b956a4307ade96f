"""``agentzt tokens`` and ``agentzt revoke``: the issuance ledger, read and acted on.

Both work on the ledger file directly, so they work whether the gateway runs or not; a
running gateway reads the ledger on every call, so a revocation takes effect at once.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from agentzt.cli import app, paths_of
from agentzt.cli.output import console
from agentzt.errors import UsageError
from agentzt.identity import TASK_ID, Ledger
from agentzt.identity.ledger import CLI_BUSY_TIMEOUT
from agentzt.identity.registry import check_agent_id

JTI = re.compile(r"[A-Za-z0-9_-]{1,256}")
STATE_STYLE = {"live": "green", "revoked": "red", "expired": "dim"}


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _check_filters(agent: str | None, task: str | None, jti: str | None) -> None:
    if agent is not None:
        check_agent_id(agent)
    if task is not None and not TASK_ID.fullmatch(task):
        raise UsageError(f"--task {task!r} is not a task id (1-128 of A-Z a-z 0-9 . _ : -)")
    if jti is not None and not JTI.fullmatch(jti):
        raise UsageError(f"--jti {jti!r} is not a token id")


@app.command("tokens")
def tokens_cmd(
    ctx: typer.Context,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task's.")] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Only tokens neither expired nor revoked.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest N.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show the issuance ledger: every token issued, and how it ended."""
    _check_filters(agent, task, None)
    path = paths_of(ctx).token_ledger
    if not path.exists():
        typer.echo(f"no tokens issued yet (no ledger at {path})", err=True)
        return
    ledger = Ledger(path, create=False, busy_timeout=CLI_BUSY_TIMEOUT)
    now = time.time()
    try:
        rows = ledger.rows(now=now, agent_id=agent, task_id=task, live=live, limit=limit)
    finally:
        ledger.close()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.as_json(now), separators=(",", ":")))
        return
    table = Table(title=f"Issued tokens ({path})")
    for column in ("issued", "jti", "agent", "role", "task", "binding", "expires", "state"):
        table.add_column(column, overflow="fold")
    for row in rows:
        state = row.state(now)
        shown = Text(state if state != "revoked" else f"revoked: {row.revoked_reason}")
        shown.stylize(STATE_STYLE[state])
        table.add_row(
            _when(row.issued_at),
            Text(row.jti),
            Text(row.agent_id),
            Text(row.role),
            Text(row.task_id or "-"),
            row.binding,
            _when(row.expires_at),
            shown,
        )
    console.print(table)


@app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    jti: Annotated[str | None, typer.Option("--jti", help="The token with this id.")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Every live token of this agent.")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", help="End this task: revoke its tokens, refuse new ones."),
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Recorded in the ledger.")
    ] = "revoked by the operator",
) -> None:
    """Revoke live tokens at once: by token id, by agent, or by task (which also ends it).

    Filters combine: --agent A --task T ends task T of agent A only. Revoking an agent's
    tokens does not lock it out (it may authenticate again); disable it for that.
    """
    if jti is None and agent is None and task is None:
        raise UsageError("say what to revoke: --jti, --agent and/or --task")
    _check_filters(agent, task, jti)
    reason = " ".join(reason.split())
    if not reason or len(reason) > 200 or not reason.isprintable():
        raise UsageError("--reason must be printable text of at most 200 characters")
    ledger = Ledger(paths_of(ctx).token_ledger, create=False, busy_timeout=CLI_BUSY_TIMEOUT)
    now = time.time()
    try:
        if task is not None and jti is None:
            if agent is not None:
                count = ledger.end_task(agent, task, now=now, reason=reason)
            else:
                count = ledger.end_task_for_all(task, now=now, reason=reason)
            ended = f"; task {task} ended" + (f" for {agent}" if agent else "")
        else:
            count = ledger.revoke(now=now, reason=reason, jti=jti, agent_id=agent, task_id=task)
            ended = ""
    finally:
        ledger.close()
    typer.echo(f"revoked {count} live token{'' if count == 1 else 's'}{ended}")
