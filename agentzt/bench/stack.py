"""The chains under load, as real processes: agentzt (client proxy + gateway, mock
upstream) and the bare pass-through (a proxy with no security + a fixed-answer upstream).

``measure`` drives one chain with the load generator and reads each server process's CPU
time and memory around the run.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentzt.bench.procstat import cpu_seconds, memory_mib

MESSAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Summarise our VPN policy in one line."}],
}
TOOL_CALL = {"arguments": {"query": "vpn policy"}}
BENCH_POLICY = """
[roles.bench-agent]
models = ["claude-sonnet-4-6"]
tools = ["kb.search"]
[roles.bench-agent.limits]
requests_per_minute = 1000000
max_output_tokens = 1024
"""
# A benchmark agent asks for far more tokens than any real one; every other control
# stays at its default.
BENCH_GATEWAY = """
[limits]
token_requests_per_minute = 10000000
token_failures_per_minute_per_address = 10000000
"""
AGENT = "bench-1"


@dataclass
class Chain:
    """A running chain: where to send load, and the server processes to watch."""

    url: str
    pids: dict[str, int]


@dataclass
class Result:
    load: dict[str, Any]
    cpu_s_per_1000: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.load.items() if k != "timeline"},
            "timeline": self.load.get("timeline", []),
            "cpu_s_per_1000": {k: round(v, 3) for k, v in self.cpu_s_per_1000.items()},
            "rss_mib": self.rss_mib,
        }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(
    url: str,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Until ``url`` answers; a server among ``procs`` that exits meanwhile ends the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs or []:
            if proc.poll() is not None:
                raise RuntimeError(f"a server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=tls):  # noqa: S310 (loopback)
                return
        except OSError as exc:
            if getattr(exc, "code", None) is not None:
                return  # any HTTP answer means the server is up
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


@contextmanager
def processes(*argvs: list[str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The servers, their output kept out of the report; if one does not come up, the
    error names its last words."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as files:
        logs = [files.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        with _stopping(procs):
            for argv, output in zip(argvs, logs, strict=True):
                procs.append(subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT))
            try:
                yield procs
            except RuntimeError as exc:
                said = []
                for output in logs:
                    output.seek(0)
                    lines = output.read().decode(errors="replace").strip().splitlines()
                    said += lines[-1:]
                raise RuntimeError(f"{exc}: {' / '.join(said)}") from exc


@contextmanager
def _stopping(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@contextmanager
def agentzt_chain(gateway_toml: str = "", *, mtls: bool = False) -> Iterator[Chain]:
    """Gateway and client proxy as separate processes in a temporary home."""
    with tempfile.TemporaryDirectory(prefix="agentzt-bench-") as tmp:
        config, home = Path(tmp) / "config", Path(tmp) / "home"
        config.mkdir()
        (config / "policy.toml").write_text(BENCH_POLICY)
        (config / "gateway.toml").write_text(BENCH_GATEWAY + gateway_toml)
        base = [sys.executable, "-m", "agentzt", "--config", str(config), "--home", str(home)]
        tls_flag = ["--mtls"] if mtls else []
        if mtls:
            subprocess.run([*base, "tls", "init"], check=True, capture_output=True)
        subprocess.run(
            [*base, "enroll", "--agent", AGENT, "--role", "bench-agent", *tls_flag],
            check=True,
            capture_output=True,
        )
        gw, px = free_port(), free_port()
        scheme = "https" if mtls else "http"
        gateway = [*base, "gateway", "--port", str(gw), *tls_flag]
        proxy = [
            *base,
            "client",
            "--agent",
            AGENT,
            "--port",
            str(px),
            "--gateway",
            f"{scheme}://127.0.0.1:{gw}",
            *tls_flag,
        ]
        with processes(gateway, proxy) as procs:
            gateway_proc, proxy_proc = procs
            health_tls = None
            if mtls:
                health_tls = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
                health_tls.load_cert_chain(
                    home / "tls" / "clients" / f"{AGENT}.crt",
                    home / "tls" / "clients" / f"{AGENT}.key",
                )
            wait_ready(f"{scheme}://127.0.0.1:{gw}/healthz", tls=health_tls, procs=procs)
            wait_ready(f"http://127.0.0.1:{px}/healthz", procs=procs)
            yield Chain(
                f"http://127.0.0.1:{px}", {"gateway": gateway_proc.pid, "proxy": proxy_proc.pid}
            )


@contextmanager
def bare_chain(client: str = "aiohttp") -> Iterator[Chain]:
    """The practical limit of this stack: the same server and HTTP client, no security."""
    up, px = free_port(), free_port()
    py = [sys.executable, "-m", "agentzt.bench.bare"]
    upstream = [*py, "upstream", "--port", str(up)]
    proxy = [*py, "proxy", "--port", str(px), "--upstream", f"http://127.0.0.1:{up}"]
    with processes(upstream, [*proxy, "--client", client]) as procs:
        upstream_proc, proxy_proc = procs
        wait_ready(f"http://127.0.0.1:{up}/", procs=procs)
        wait_ready(f"http://127.0.0.1:{px}/", procs=procs)
        yield Chain(
            f"http://127.0.0.1:{px}", {"upstream": upstream_proc.pid, "proxy": proxy_proc.pid}
        )


def load(
    url: str,
    seconds: float,
    connections: int,
    body: dict[str, Any],
    *,
    unique_header: str | None = None,
    ttfb: bool = False,
) -> dict[str, Any]:
    """Run the built-in load generator in its own process and return its JSON."""
    argv = [
        sys.executable,
        "-m",
        "agentzt.bench.loadgen",
        url,
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
        "--json",
        json.dumps(body),
    ]
    if unique_header is not None:
        argv += ["--unique-header", unique_header]
    if ttfb:
        argv.append("--ttfb")
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def measure(
    chain: Chain,
    path: str,
    seconds: float,
    connections: int,
    body: dict[str, Any],
    *,
    unique_header: str | None = None,
    ttfb: bool = False,
    sample_every: float = 0.0,
) -> Result:
    """Load ``chain`` at ``path`` and read its processes' CPU and memory around the run.

    With ``sample_every`` the resident memory of each process is also sampled during the
    run (``rss_mib[name]["samples"]``), to show whether it stays flat.
    """
    before = {name: cpu_seconds(pid) for name, pid in chain.pids.items()}
    start_rss = {name: memory_mib(pid)[0] for name, pid in chain.pids.items()}
    samples: dict[str, list[float]] = {name: [] for name in chain.pids}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(sample_every):
            for name, pid in chain.pids.items():
                samples[name].append(round(memory_mib(pid)[0], 1))

    sampler = threading.Thread(target=sample, daemon=True) if sample_every > 0 else None
    if sampler is not None:
        sampler.start()
    try:
        result = load(
            chain.url + path, seconds, connections, body, unique_header=unique_header, ttfb=ttfb
        )
    finally:
        stop.set()
        if sampler is not None:
            sampler.join()
    total = max(1, int(result["total_requests"]))
    measured = Result(result)
    for name, pid in chain.pids.items():
        used = cpu_seconds(pid) - before[name]
        measured.cpu_s_per_1000[name] = used / total * 1000
        now, peak = memory_mib(pid)
        measured.rss_mib[name] = {
            "start": round(start_rss[name], 1),
            "end": round(now, 1),
            "peak": round(peak, 1),
        }
        if sampler is not None:
            measured.rss_mib[name]["samples"] = samples[name]  # type: ignore[assignment]
    return measured
