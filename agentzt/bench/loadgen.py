"""A closed-loop HTTP load generator: N connections, each sending its next request as soon
as the previous answer arrives, for a fixed duration. Runs in its own process so it does
not share an event loop or a GIL with the servers it measures.

    python -m agentzt.bench.loadgen URL --connections 8 --seconds 10 [--json BODY]
        [--header K:V]... [--unique-header NAME] [--ttfb] [--warmup 1]

Prints one JSON object: requests and errors in the measured window, req/s, latency
percentiles (to the whole answer, or with ``--ttfb`` to its first body bytes), requests
completed in each second of the window (``timeline``), and ``total_requests`` including
the warm-up, so CPU counters read around the whole run divide by the right number.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    finished: list[float] = field(default_factory=list)
    errors: int = 0
    total: int = 0


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    unique: str | None,
    ttfb: bool,
    deadline: float,
    tally: _Tally,
    counter: itertools.count[int],
) -> None:
    method = "POST" if body is not None else "GET"
    while time.perf_counter() < deadline:
        sent = headers if unique is None else {**headers, unique: f"bench-{next(counter)}"}
        start = time.perf_counter()
        first = 0.0
        try:
            async with session.request(method, url, data=body, headers=sent) as resp:
                async for _ in resp.content.iter_any():
                    if not first:
                        first = time.perf_counter()
                ok = resp.status == 200
        except aiohttp.ClientError:
            ok = False
        end = time.perf_counter()
        tally.total += 1
        if ok:
            tally.latencies.append((first or end) - start if ttfb else end - start)
            tally.finished.append(end)
        else:
            tally.errors += 1


async def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    body: bytes | None,
    headers: dict[str, str],
    unique: str | None = None,
    ttfb: bool = False,
    warmup: float = 1.0,
) -> dict[str, object]:
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm up connections and token caches before measuring.
        warm = _Tally()
        await asyncio.gather(
            *(
                _worker(
                    session,
                    url,
                    body,
                    headers,
                    unique,
                    ttfb,
                    time.perf_counter() + warmup,
                    warm,
                    counter,
                )
                for _ in range(connections)
            )
        )
        tally = _Tally()
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(
                _worker(session, url, body, headers, unique, ttfb, deadline, tally, counter)
                for _ in range(connections)
            )
        )
        elapsed = time.perf_counter() - start
    latencies = sorted(tally.latencies)

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000 if latencies else 0.0
        )

    timeline = [0] * max(1, int(seconds + 0.999))
    for done in tally.finished:
        timeline[min(len(timeline) - 1, int(done - start))] += 1
    return {
        "requests": len(latencies),
        "errors": tally.errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0.0,
        "total_requests": warm.total + tally.total,
        "timeline": timeline,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", dest="body", default=None)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--unique-header", default=None, help="a header set anew per request")
    parser.add_argument("--ttfb", action="store_true", help="latency to the first body bytes")
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    if args.body is not None:
        headers.setdefault("content-type", "application/json")
    body = args.body.encode() if args.body is not None else None
    result = asyncio.run(
        run(
            args.url,
            connections=args.connections,
            seconds=args.seconds,
            body=body,
            headers=headers,
            unique=args.unique_header,
            ttfb=args.ttfb,
            warmup=args.warmup,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
