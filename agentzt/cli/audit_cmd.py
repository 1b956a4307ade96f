"""``agentzt audit``: show events, or verify the hash chain."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentzt.audit import read_events, verify_chain
from agentzt.cli import app, paths_of
from agentzt.cli.output import console
from agentzt.errors import AuditChainError

# C0 and C1 control characters, which could drive the operator's terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _cell(value: object, limit: int | None = None) -> Text:
    """Plain text, never rich markup: audit fields may hold text a caller chose."""
    text = _CONTROL.sub("?", "-" if value is None else str(value))
    return Text(text[:limit] if limit else text)


def _highlights(meta: object) -> str:
    """The meta facts worth a glance: a JIT use, redactions, a guardrail's risk."""
    if not isinstance(meta, dict):
        return ""
    parts = []
    if meta.get("via") == "jit":
        parts.append("via jit")
    redactions = meta.get("redactions")
    if isinstance(redactions, dict) and redactions:
        parts.append("redacted " + ", ".join(f"{k} x{v}" for k, v in redactions.items()))
    for key in ("guardrail", "untrusted_content"):
        found = meta.get(key)
        if isinstance(found, dict) and found.get("risk") not in (None, "no_risk"):
            parts.append(f"{key.replace('_', ' ')} {found.get('risk')}")
    return f" [{'; '.join(parts)}]" if parts else ""


def events_table(events: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    columns = ("seq", "time", "request id", "agent", "action", "resource", "decision")
    for column in (*columns, "status", "reason"):
        table.add_column(column, overflow="fold")
    for e in events:
        decision = _cell(e.get("decision"))
        decision.stylize("green" if e.get("decision") == "allow" else "red")
        table.add_row(
            _cell(e.get("seq")),
            _cell(str(e.get("ts", ""))[11:23]),
            _cell(str(e.get("request_id", ""))[-12:]),
            _cell(e.get("agent_id")),
            _cell(e.get("action")),
            _cell(e.get("resource")),
            decision,
            _cell(e.get("status")),
            _cell(f"{e.get('reason', '')}{_highlights(e.get('meta'))}", 140),
        )
    return table


@app.command("audit")
def audit_cmd(
    ctx: typer.Context,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain; exit 1 if broken.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Show the last N matching events.")
    ] = 50,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Only this request.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show audit events, or verify the tamper-evident chain with --verify."""
    path = paths_of(ctx).audit_log
    if verify:
        try:
            report = verify_chain(path)
        except AuditChainError as exc:
            typer.echo(f"audit chain BROKEN at seq {exc.seq}: {exc.detail}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(
            f"audit chain OK: {report.events} events, head {report.head_hash[:16]}… ({path})"
        )
        return
    events = read_events(path, request_id=request_id, agent_id=agent, limit=limit)
    if as_json:
        for event in events:
            typer.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        return
    console.print(events_table(events, f"Audit events ({path})"))
