"""``agentzt`` as a real child process: an operator's command run to its end, and the
gateway for the tests that kill and restart it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from agentzt.config import Paths

READY = re.compile(r"agentzt gateway on (http://127\.0\.0\.1:(\d+)) ")


def child_env() -> dict[str, str]:
    """The environment without AGENTZT_* settings, so only the flags given count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTZT_")}


def agentzt_argv(paths: Paths, *args: str) -> list[str]:
    """``python -m agentzt --config C --home H ARGS``."""
    return [
        sys.executable, "-m", "agentzt",
        "--config", str(paths.config_dir), "--home", str(paths.home),
        *args,
    ]  # fmt: skip


def run_agentzt(
    paths: Paths, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``agentzt ARGS`` run to its end as an operator runs it. It runs from outside the
    checkout, which ``python -m`` would otherwise put first on the module path, so the
    package the child imports is the one the tests import."""
    return subprocess.run(
        agentzt_argv(paths, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=paths.config_dir.parent,
        env=env or child_env(),
        check=False,
    )


def start_gateway(
    paths: Paths, started: list[subprocess.Popen[bytes]], log: Path, port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """``agentzt gateway --port PORT`` (0: any free loopback port); returns it and its URL
    once it answers /healthz."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            agentzt_argv(paths, "gateway", "--port", str(port)),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=paths.config_dir.parent,
            env=child_env(),
        )
    started.append(proc)
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline and proc.poll() is None:
        if url is None:
            found = READY.search(log.read_text(errors="replace"))
            url = found.group(1) if found else None
        if url is not None:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.02)
    raise AssertionError(f"the gateway never became ready:\n{log.read_text(errors='replace')}")


def pin_issuer(paths: Paths, url: str) -> None:
    """Set ``[gateway] issuer`` to ``url``, so a gateway restarted on any free port is
    the same issuer: tokens, assertions and proofs made for the first run stay its own.
    (Restarting on the same port races other processes for it.)"""
    settings = paths.gateway_toml.read_text()
    assert "[gateway]\n" in settings and "\nissuer =" not in settings
    paths.gateway_toml.write_text(settings.replace("[gateway]\n", f'[gateway]\nissuer = "{url}"\n'))
