"""Measure ``POST /v1/messages`` through agentzt (proxy + gateway, mock upstream) and
through the bare pass-through chain with each HTTP client, same load, same machine.

    python -m benchmarks.compare [--seconds 10] [--connections 8]
                                 [--only agentzt,agentzt-mtls,agentzt-noguard,agentzt-nodpop,
                                         aiohttp,httpx]

``agentzt-noguard`` is the same chain with the input and output guardrails switched off,
so the difference between the two is what the guardrails cost a call; ``agentzt-mtls``
is the full chain with the proxy↔gateway link over mutual TLS and certificate-bound tokens;
``agentzt-fsync-always`` / ``-batch`` / ``-never`` is the full chain with that
``[audit] fsync`` mode, so the differences are what each durability level costs a call.
``agentzt-nodpop`` is the full chain with ``dpop = "off"`` (bearer tokens), so the
difference is what a DPoP proof (made by the proxy, checked by the gateway) costs a call.

Each chain runs as separate server processes; the load generator is a third process.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentzt.bench import stack
from agentzt.bench.stack import BENCH_POLICY, free_port, processes, wait_ready

BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Summarise our VPN policy in one line."}],
}


def load(url: str, seconds: float, connections: int) -> dict[str, Any]:
    return stack.load(url, seconds, connections, BODY)


def bare(client: str, seconds: float, connections: int) -> dict[str, float]:
    up, px = free_port(), free_port()
    py = [sys.executable, "-m", "agentzt.bench.bare"]
    with processes(
        [*py, "upstream", "--port", str(up)],
        [
            *py,
            "proxy",
            "--port",
            str(px),
            "--upstream",
            f"http://127.0.0.1:{up}",
            "--client",
            client,
        ],
    ):
        wait_ready(f"http://127.0.0.1:{up}/")
        wait_ready(f"http://127.0.0.1:{px}/")
        return load(f"http://127.0.0.1:{px}/v1/messages", seconds, connections)


NO_DPOP = """
[tokens]
dpop = "off"
"""
NO_GUARDRAILS = """
[guardrails.input]
mode = "off"
[guardrails.output]
redact_secrets = false
spotlight_untrusted = false
review = false
"""


@contextmanager
def agentzt_chain(gateway_toml: str = "", mtls: bool = False) -> Iterator[str]:
    """Gateway and client proxy as separate processes in a temp home; yields the proxy URL."""
    with tempfile.TemporaryDirectory(prefix="agentzt-bench-") as tmp:
        config, home = Path(tmp) / "config", Path(tmp) / "home"
        config.mkdir()
        (config / "policy.toml").write_text(BENCH_POLICY)
        (config / "gateway.toml").write_text(gateway_toml)
        base = [sys.executable, "-m", "agentzt", "--config", str(config), "--home", str(home)]
        tls_flag = ["--mtls"] if mtls else []
        if mtls:
            subprocess.run([*base, "tls", "init"], check=True, capture_output=True)
        subprocess.run(
            [*base, "enroll", "--agent", "bench-1", "--role", "bench-agent", *tls_flag],
            check=True,
            capture_output=True,
        )
        gw, px = free_port(), free_port()
        scheme = "https" if mtls else "http"
        with processes(
            [*base, "gateway", "--port", str(gw), *tls_flag],
            [
                *base,
                "client",
                "--agent",
                "bench-1",
                "--port",
                str(px),
                "--gateway",
                f"{scheme}://127.0.0.1:{gw}",
                *tls_flag,
            ],
        ):
            health_tls = None
            if mtls:
                health_tls = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
                health_tls.load_cert_chain(
                    home / "tls" / "clients" / "bench-1.crt",
                    home / "tls" / "clients" / "bench-1.key",
                )
            wait_ready(f"{scheme}://127.0.0.1:{gw}/healthz", tls=health_tls)
            wait_ready(f"http://127.0.0.1:{px}/healthz")
            yield f"http://127.0.0.1:{px}"


def agentzt(
    seconds: float, connections: int, gateway_toml: str = "", mtls: bool = False
) -> dict[str, float]:
    with agentzt_chain(gateway_toml, mtls) as proxy:
        return load(f"{proxy}/v1/messages", seconds, connections)


CHAINS = (
    "agentzt",
    "agentzt-mtls",
    "agentzt-nodpop",
    "agentzt-noguard",
    *(f"agentzt-fsync-{mode}" for mode in ("always", "batch", "never")),
    "aiohttp",
    "httpx",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--only", default="agentzt,agentzt-noguard,aiohttp,httpx")
    args = parser.parse_args()
    names = args.only.split(",")
    if unknown := [name for name in names if name not in CHAINS]:
        parser.error(f"unknown chain {', '.join(unknown)}; choose from {', '.join(CHAINS)}")
    results: dict[str, dict[str, float]] = {}
    for name in names:
        if name == "agentzt":
            label, result = (
                "agentzt (proxy+gateway, aiohttp hop)",
                agentzt(args.seconds, args.connections),
            )
        elif name == "agentzt-mtls":
            label = "agentzt over mutual TLS"
            result = agentzt(args.seconds, args.connections, mtls=True)
        elif name == "agentzt-nodpop":
            label = "agentzt, dpop off (bearer tokens)"
            result = agentzt(args.seconds, args.connections, NO_DPOP)
        elif name.startswith("agentzt-fsync-"):
            mode = name.removeprefix("agentzt-fsync-")
            label = f"agentzt, audit fsync = {mode}"
            result = agentzt(args.seconds, args.connections, f'[audit]\nfsync = "{mode}"\n')
        elif name == "agentzt-noguard":
            label, result = (
                "agentzt, guardrails off",
                agentzt(args.seconds, args.connections, NO_GUARDRAILS),
            )
        else:
            label, result = f"bare chain, {name} hop", bare(name, args.seconds, args.connections)
        # A chain named twice keeps both rounds, which shows the run-to-run spread.
        rounds = sum(1 for key in results if key.split(" #")[0] == label)
        results[f"{label} #{rounds + 1}" if rounds else label] = result
    print(f"{'chain':42} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(
            f"{name:42} {r['rps']:8.0f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} "
            f"{r['p99_ms']:8.2f} {r['errors']:7.0f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
