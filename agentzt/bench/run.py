"""What ``agentzt bench`` runs: scenarios against real chains, then the microbenchmarks.

The default scenario loads ``POST /v1/messages`` through agentzt (every control at its
default) and through the bare pass-through chain, and reports the ratios the targets are
stated in: agentzt's req/s over the bare chain's (target at least 0.6) and its p99 over
the bare chain's (target at most 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final

from agentzt.bench.micro import run_all
from agentzt.bench.stack import (
    MESSAGE,
    TOOL_CALL,
    Chain,
    Result,
    agentzt_chain,
    bare_chain,
    measure,
)

TARGET_RPS_RATIO: Final = 0.6
TARGET_P99_RATIO: Final = 2.0

_STREAM = {**MESSAGE, "stream": True}


def _scenarios() -> dict[str, tuple[str, Callable[[], AbstractContextManager[Chain]], str, Any]]:
    """name -> (description, chain, path, body)."""
    return {
        "agentzt": ("agentzt: proxy + gateway, defaults", agentzt_chain, "/v1/messages", MESSAGE),
        "bare": ("bare pass-through chain", bare_chain, "/v1/messages", MESSAGE),
        "stream": (
            "agentzt, streamed (latency = time to first byte)",
            agentzt_chain,
            "/v1/messages",
            _STREAM,
        ),
        "bare-stream": (
            "bare chain, streamed (time to first byte)",
            bare_chain,
            "/v1/messages",
            _STREAM,
        ),
        "tools": ("agentzt, kb.search tool calls", agentzt_chain, "/v1/tools/kb.search", TOOL_CALL),
        "tokens": (
            "agentzt, a new task per call (token issuance)",
            agentzt_chain,
            "/v1/messages",
            MESSAGE,
        ),
        "dpop-off": (
            "agentzt, dpop off (bearer tokens)",
            lambda: agentzt_chain('[tokens]\ndpop = "off"\n'),
            "/v1/messages",
            MESSAGE,
        ),
        "mtls": (
            "agentzt over mutual TLS",
            lambda: agentzt_chain(mtls=True),
            "/v1/messages",
            MESSAGE,
        ),
    }


SCENARIOS: Final = tuple(_scenarios())
DEFAULT_SCENARIOS: Final = ("agentzt", "bare")


def run_scenario(
    name: str, seconds: float, connections: int, sample_every: float = 0.0
) -> dict[str, Any]:
    description, chain_of, path, body = _scenarios()[name]
    with chain_of() as chain:
        result: Result = measure(
            chain,
            path,
            seconds,
            connections,
            body,
            unique_header="x-agentzt-task-id" if name == "tokens" else None,
            ttfb=name.endswith("stream"),
            sample_every=sample_every,
        )
    return {"scenario": name, "description": description, **result.as_dict()}


def ratios(results: list[dict[str, Any]]) -> dict[str, float] | None:
    """agentzt against the bare chain, when both ran."""
    found = {r["scenario"]: r for r in results}
    if "agentzt" not in found or "bare" not in found:
        return None
    ours, bare = found["agentzt"], found["bare"]
    return {
        "rps_ratio": round(ours["rps"] / bare["rps"], 3) if bare["rps"] else 0.0,
        "p99_ratio": round(ours["p99_ms"] / bare["p99_ms"], 3) if bare["p99_ms"] else 0.0,
        "target_rps_ratio": TARGET_RPS_RATIO,
        "target_p99_ratio": TARGET_P99_RATIO,
    }


def run(
    scenarios: list[str],
    *,
    seconds: float,
    connections: int,
    micro: bool,
    sample_every: float = 0.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    results = []
    for name in scenarios:
        progress(f"{name}: {seconds:g} s at {connections} connections")
        results.append(run_scenario(name, seconds, connections, sample_every))
    report: dict[str, Any] = {
        "seconds": seconds,
        "connections": connections,
        "scenarios": results,
        "ratios": ratios(results),
    }
    if micro:
        progress("microbenchmarks")
        report["micro"] = run_all()
    return report


def flatness(timeline: list[int], window: int = 60) -> float | None:
    """Throughput of the last ``window`` seconds over the first (1.0 is perfectly flat)."""
    if len(timeline) < 2 * window:
        return None
    first, last = sum(timeline[:window]), sum(timeline[-window:])
    return round(last / first, 3) if first else None


def windows(timeline: list[int], window: int = 60) -> Iterator[float]:
    """Requests per second in each ``window`` seconds of the timeline."""
    for start in range(0, len(timeline), window):
        part = timeline[start : start + window]
        yield round(sum(part) / len(part), 1)
