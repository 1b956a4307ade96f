"""A closed-loop HTTP load generator: N connections, each sending its next request as soon
as the previous answer arrives, for a fixed duration. Runs in its own process so it does
not share an event loop or a GIL with the servers it measures.

    python -m benchmarks.loadgen URL --connections 8 --seconds 10 [--json BODY] [--header K:V]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    deadline: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    method = "POST" if body is not None else "GET"
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            async with session.request(method, url, data=body, headers=headers) as resp:
                await resp.read()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append(1)


async def run(
    url: str, *, connections: int, seconds: float, body: bytes | None, headers: dict[str, str]
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up connections and token caches before measuring.
        warm = time.perf_counter() + 1.0
        await asyncio.gather(
            *(_worker(session, url, body, headers, warm, [], []) for _ in range(connections))
        )
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(
                _worker(session, url, body, headers, deadline, latencies, errors)
                for _ in range(connections)
            )
        )
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0
        )

    return {
        "requests": len(latencies),
        "errors": len(errors),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", dest="body", default=None)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    if args.body is not None:
        headers.setdefault("content-type", "application/json")
    body = args.body.encode() if args.body is not None else None
    result = asyncio.run(
        run(
            args.url, connections=args.connections, seconds=args.seconds, body=body, headers=headers
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
