"""``agentzt audit``: show, follow, verify and export events; hash a value to search by."""

from __future__ import annotations

import contextlib
import enum
import json
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from agentzt.audit import Correlator, read_events
from agentzt.audit.correlate import read_key
from agentzt.audit.query import Follower, iter_log_lines, matcher
from agentzt.cli import app, paths_of
from agentzt.cli.output import console
from agentzt.config import load_gateway_settings
from agentzt.errors import AuditChainError, UsageError

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


audit_app = typer.Typer(
    invoke_without_command=True,
    help="Show audit events, follow them, verify the chain; export; hash a value.",
)
app.add_typer(audit_app, name="audit")


class ExportFormat(enum.StrEnum):
    JSONL = "jsonl"


_RELATIVE = re.compile(r"(\d{1,9})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_timestamp(text: str, now: float | None = None) -> str:
    """``--since``: an RFC 3339 time or date (UTC unless it names an offset), or an age
    such as ``30m``, ``2h``, ``7d``; returned in the log's own ``ts`` form, which
    compares as text."""
    relative = _RELATIVE.fullmatch(text)
    try:
        if relative is not None:
            seconds = int(relative[1]) * _UNIT_SECONDS[relative[2]]
            moment = datetime.fromtimestamp((now or time.time()) - seconds, UTC)
        else:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            moment = moment.astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        raise UsageError(
            f"--since {text!r} is not a time this log can hold: use e.g. "
            "2026-11-22T08:00:00Z, 2026-11-22, 30m, 2h or 7d"
        ) from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _verify(ctx: typer.Context, checkpoints: list[Path]) -> None:
    # Imported here: every agentzt process (the client proxy too) loads this module.
    from agentzt.gateway.audit_trail import verify_trail

    paths = paths_of(ctx)
    settings = load_gateway_settings(paths.gateway_toml).audit
    try:
        report = verify_trail(paths, settings, checkpoints)
    except AuditChainError as exc:
        detail = exc.detail.removeprefix(f"seq {exc.seq}: ")
        typer.echo(f"audit chain BROKEN at seq {exc.seq}: {detail}", err=True)
        raise typer.Exit(1) from exc
    files = f" in {report.files} files" if report.files > 1 else ""
    summary = f"audit chain OK: {report.events} events{files}, head {report.head_hash[:16]}…"
    if report.checkpoints:
        newest = max(cp.size for _, cp in report.checkpoints)
        signed = max(cp.time for _, cp in report.checkpoints if cp.size == newest)
        summary += (
            f"; extends {len(report.checkpoints)} signed checkpoint(s), the newest at "
            f"seq {newest} ({signed})"
        )
    else:
        summary += "; no signed checkpoint found, so a cut-off end would not show"
    typer.echo(f"{summary} ({paths.audit_log})")


def _line(event: dict[str, Any]) -> str:
    """One event as one line of plain text, for --follow."""
    parts = (
        event.get("seq"),
        str(event.get("ts", ""))[11:23],
        event.get("request_id"),
        event.get("agent_id"),
        event.get("action"),
        event.get("resource"),
        event.get("decision"),
        event.get("status"),
        f"{event.get('reason', '')}{_highlights(event.get('meta'))}",
    )
    return " ".join(_cell(p).plain for p in parts)


def _follow(ctx: typer.Context, limit: int, filters: dict[str, str | None], as_json: bool) -> None:
    path = paths_of(ctx).audit_log
    match = matcher(**filters)
    printed = 0
    # IMPORTANT: following starts before the history is read, so an event written in
    # between is not missed; the seq check drops the one printed twice.
    live = Follower(path)
    history = read_events(path, **filters, limit=limit)

    def show(event: dict[str, Any]) -> None:
        nonlocal printed
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= printed or not match(event):
            return
        printed = seq
        if as_json:
            typer.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        else:
            typer.echo(_line(event))

    for event in history:
        show(event)
    for line in live.lines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            show(event)


@audit_app.callback()
def audit_cmd(
    ctx: typer.Context,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Check the hash chain and its checkpoints; exit 1 if not."),
    ] = False,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option(
            "--checkpoint",
            help="With --verify: also check against this checkpoint file, kept elsewhere.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Show the last N matching events.")
    ] = 50,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Only this request, all its events.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only this task id.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events as they are written.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Show audit events, follow them, or verify the tamper-evident chain with --verify."""
    if ctx.invoked_subcommand is not None:
        return
    if checkpoint and not verify:
        raise UsageError("--checkpoint goes with --verify")
    for kept in checkpoint or []:
        if not kept.is_file():
            raise UsageError(f"--checkpoint {kept}: no such file")
    if verify:
        _verify(ctx, checkpoint or [])
        return
    path = paths_of(ctx).audit_log
    if follow:
        filters = {"request_id": request_id, "agent_id": agent, "task": task}
        # SIGTERM ends following as Ctrl-C does: quietly, exit 0.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            _follow(ctx, limit, filters, as_json)
        return
    # A request's whole story is shown however long it is; --limit caps the rest.
    shown = None if request_id is not None else limit
    events = read_events(path, request_id=request_id, agent_id=agent, task=task, limit=shown)
    if as_json:
        for event in events:
            typer.echo(json.dumps(event, ensure_ascii=False, separators=(",", ":")))
        return
    console.print(events_table(events, f"Audit events ({path})"))


@audit_app.command("export")
def export_cmd(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="From this time on: 2026-11-22T08:00:00Z, 2026-11-22, 2h, 7d."
        ),
    ] = None,
    output_format: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.JSONL,
) -> None:
    """Write events to stdout for a SIEM: each line exactly as the log holds it."""
    start = since_timestamp(since) if since is not None else None
    out = sys.stdout.buffer
    for line in iter_log_lines(paths_of(ctx).audit_log):
        if start is not None:
            try:
                ts = json.loads(line).get("ts")
            except (ValueError, AttributeError, RecursionError):
                continue
            if not isinstance(ts, str) or ts < start:
                continue
        out.write(line)
    out.flush()


@audit_app.command("hash")
def hash_cmd(
    ctx: typer.Context,
    value: Annotated[str, typer.Argument(help="A value the log keeps only as an HMAC.")],
) -> None:
    """Print the keyed HMAC the audit log holds for VALUE (e.g. an access token), to search
    events by it: meta.token_hmac."""
    correlate = Correlator(read_key(paths_of(ctx).audit_hmac_key))
    typer.echo(correlate(value))
