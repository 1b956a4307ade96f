"""A small process supervisor for ``agentzt up``: start in order, stop together.

SIGINT or SIGTERM stops every child and exits 0. A child that exits on its own stops the
others, and the tree exits 1 saying which child died and with what code.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from types import FrameType

READY_TIMEOUT = 20.0


@dataclass
class Child:
    name: str
    argv: list[str]
    health_url: str
    process: subprocess.Popen[bytes] | None = None
    # For an https health URL: the client certificate and CA to check it with.
    tls: ssl.SSLContext | None = None


def _not_ready(url: str, tls: ssl.SSLContext | None) -> str | None:
    """None once ``url`` answers 200, else why not (kept for the timeout message)."""
    try:
        with urllib.request.urlopen(url, timeout=1, context=tls) as resp:  # noqa: S310 (loopback)
            return None if resp.status == 200 else f"health check answered {resp.status}"
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc
        return str(reason)


def _stop_all(children: list[Child]) -> None:
    for child in reversed(children):
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + 10
    for child in reversed(children):
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _died(children: list[Child]) -> Child | None:
    for child in children:
        if child.process is not None and child.process.poll() is not None:
            return child
    return None


def supervise(children: list[Child], *, env: dict[str, str]) -> int:
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.process = subprocess.Popen(child.argv, env=env)
            deadline = time.monotonic() + READY_TIMEOUT
            while (problem := _not_ready(child.health_url, child.tls)) is not None:
                if stopping:
                    return _shutdown(children)
                dead = _died(children)
                if dead is not None or time.monotonic() > deadline:
                    why = (
                        "exited during start-up"
                        if dead
                        else f"was not ready after {READY_TIMEOUT:.0f} s (last: {problem})"
                    )
                    return _fail(children, dead or child, why)
                time.sleep(0.05)
        print("agentzt up: ready (Ctrl-C stops both)", file=sys.stderr)
        while not stopping:
            dead = _died(children)
            if dead is not None:
                return _fail(children, dead, "exited unexpectedly")
            time.sleep(0.1)
        return _shutdown(children)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _shutdown(children: list[Child]) -> int:
    _stop_all(children)
    print("agentzt up: stopped", file=sys.stderr)
    return 0


def _fail(children: list[Child], culprit: Child, why: str) -> int:
    code = culprit.process.poll() if culprit.process is not None else None
    _stop_all(children)
    print(
        f"agentzt up: the {culprit.name} {why} (exit code {code}); stopped the rest",
        file=sys.stderr,
    )
    return 1
