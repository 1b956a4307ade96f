"""What agentzt adds in front of a real upstream: time to first token on a streamed call,
and req/s of non-streamed calls in passthrough mode against calling the upstream directly.

    python -m benchmarks.passthrough [--calls 300] [--seconds 10] [--connections 8]

The upstream is ``agentzt.bench.bare upstream`` (a fixed answer, streamed as SSE when asked),
in its own process; agentzt runs as separate gateway and proxy processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import httpx

from agentzt.bench.stack import free_port, processes, wait_ready
from benchmarks.compare import agentzt_chain, load

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Summarise our VPN policy in one line."}],
}
PASSTHROUGH = """
[upstream]
mode = "passthrough"
base_url = "{url}"
api_key_env = "AGENTZT_BENCH_UPSTREAM_KEY"
"""
MOCK = ""


def ttft(url: str, calls: int) -> dict[str, float]:
    """Sequential streamed calls: milliseconds from sending to the first text delta."""
    samples = []
    body = {**BODY, "stream": True}
    with httpx.Client(timeout=30) as http:
        for _ in range(calls + 20):
            started = time.perf_counter()
            first = None
            with http.stream("POST", f"{url}/v1/messages", json=body) as resp:
                for line in resp.iter_lines():
                    if first is None and line == "event: content_block_delta":
                        first = (time.perf_counter() - started) * 1000
            assert first is not None, "no text delta in the stream"
            samples.append(first)
    samples = samples[20:]  # warm-up: connections, caches, the first token
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": statistics.median(samples), "p95_ms": cuts[94], "p99_ms": cuts[98]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    os.environ["AGENTZT_BENCH_UPSTREAM_KEY"] = "bench-enterprise-key"
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    rows: dict[str, dict[str, float]] = {}
    with processes([sys.executable, "-m", "agentzt.bench.bare", "upstream", "--port", str(port)]):
        wait_ready(f"{upstream}/")
        rows["TTFT, upstream directly"] = ttft(upstream, args.calls)
        with agentzt_chain(PASSTHROUGH.format(url=upstream)) as proxy:
            rows["TTFT, agentzt passthrough"] = ttft(proxy, args.calls)
            rows["req/s, agentzt passthrough"] = load(
                f"{proxy}/v1/messages", args.seconds, args.connections
            )
        with agentzt_chain(MOCK) as proxy:
            rows["TTFT, agentzt mock upstream"] = ttft(proxy, args.calls)
        rows["req/s, upstream directly"] = load(
            f"{upstream}/v1/messages", args.seconds, args.connections
        )
    print(f"{'measure':32} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, r in rows.items():
        rps = f"{r['rps']:8.0f}" if "rps" in r else f"{'':8}"
        print(f"{name:32} {rps} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
