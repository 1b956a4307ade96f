"""``agentzt bench``: agentzt under load against the bare pass-through chain."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from agentzt.bench.run import DEFAULT_SCENARIOS, SCENARIOS, flatness, run, windows
from agentzt.cli import app
from agentzt.cli.output import console
from agentzt.errors import UsageError


def _scenario_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"POST through each chain: {report['connections']} connections, "
        f"{report['seconds']:g} s each"
    )
    for column in ("scenario", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="left" if column == "scenario" else "right")
    table.add_column("CPU s / 1000 req", justify="right")
    table.add_column("peak RSS MiB", justify="right")
    for r in report["scenarios"]:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_s_per_1000"].items())
        rss = ", ".join(f"{k} {v['peak']:.0f}" for k, v in r["rss_mib"].items())
        table.add_row(
            r["description"],
            f"{r['rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p95_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            str(r["errors"]),
            cpu,
            rss,
        )
    return table


def _micro_table(micro: dict[str, Any]) -> Table:
    table = Table(title="Microbenchmarks (median per call)")
    table.add_column("what")
    table.add_column("result", justify="right")
    for setup, us in micro["decision_us"].items():
        table.add_row(f"policy decision + registry lookup, {setup}", f"{us:.2f} µs")
    tokens = micro["token_verification"]
    table.add_row("access token verification, first time", f"{tokens['first_us']:.1f} µs")
    table.add_row("access token verification, cached", f"{tokens['cached_us']:.2f} µs")
    for mode, a in micro["audit_append"].items():
        table.add_row(
            f"audit append, fsync={mode}, 8 waiters",
            f"{a['events_per_s']} ev/s, p50 {a['p50_us']:.0f} µs, p99 {a['p99_us']:.0f} µs",
        )
    return table


def _verdicts(report: dict[str, Any]) -> list[str]:
    lines = []
    ratios = report.get("ratios")
    if ratios:
        ok_rps = ratios["rps_ratio"] >= ratios["target_rps_ratio"]
        ok_p99 = ratios["p99_ratio"] <= ratios["target_p99_ratio"]
        lines.append(
            f"agentzt / bare req/s: {ratios['rps_ratio']:.2f} "
            f"(target ≥ {ratios['target_rps_ratio']}) {'met' if ok_rps else 'NOT met'}"
        )
        lines.append(
            f"agentzt / bare p99: {ratios['p99_ratio']:.2f} "
            f"(target ≤ {ratios['target_p99_ratio']}) {'met' if ok_p99 else 'NOT met'}"
        )
    for r in report["scenarios"]:
        flat = flatness(r.get("timeline", []))
        if flat is not None:
            per_minute = ", ".join(f"{w:.0f}" for w in windows(r["timeline"]))
            lines.append(
                f"{r['scenario']}: req/s per minute {per_minute}; last minute / first = {flat}"
            )
        for name, rss in r["rss_mib"].items():
            if "samples" in rss:
                lines.append(
                    f"{r['scenario']} {name} RSS: start {rss['start']:.0f} MiB, "
                    f"end {rss['end']:.0f} MiB, peak {rss['peak']:.0f} MiB"
                )
    return lines


@app.command("bench")
def bench_cmd(
    seconds: Annotated[
        float, typer.Option("--seconds", min=1, max=3600, help="Load per scenario.")
    ] = 8.0,
    connections: Annotated[
        int, typer.Option("--connections", min=1, max=256, help="Concurrent connections.")
    ] = 8,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            "--scenario",
            help=f"Run this scenario (repeatable): {', '.join(SCENARIOS)}. "
            f"Default: {' and '.join(DEFAULT_SCENARIOS)}.",
        ),
    ] = None,
    micro: Annotated[
        bool, typer.Option("--micro/--no-micro", help="Also run the microbenchmarks.")
    ] = True,
    sample_memory: Annotated[
        float,
        typer.Option("--sample-memory", min=0, help="Sample each process's RSS every N seconds."),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Start agentzt and a bare pass-through chain on free loopback ports in a temporary
    home, load each with POST /v1/messages through the client proxy, and compare."""
    chosen = scenario or list(DEFAULT_SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"--scenario {unknown[0]!r}: choose from {', '.join(SCENARIOS)}")
    if not sys.platform.startswith("linux"):
        raise UsageError("agentzt bench reads process counters from /proc: Linux only")

    def progress(text: str) -> None:
        if not as_json:
            console.print(f"[dim]… {text}[/]")

    try:
        report = run(
            chosen,
            seconds=seconds,
            connections=connections,
            micro=micro,
            sample_every=sample_memory,
            progress=progress,
        )
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        typer.echo(f"agentzt: error: the benchmark could not run: {exc}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(report))
        return
    console.print(_scenario_table(report))
    if "micro" in report:
        console.print(_micro_table(report["micro"]))
    for line in _verdicts(report):
        console.print(line)
