"""Concurrent requests released together, for the tests that race the gateway."""

from __future__ import annotations

import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx


def all_at_once(url: str, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send ``requests`` (``httpx`` request arguments) from one thread each, each on its
    own open connection, all released together by a barrier."""
    barrier = threading.Barrier(len(requests))
    # One (unused, plain HTTP) TLS context for all: building one per client costs ~30 ms.
    tls = ssl.create_default_context()

    def one(arguments: dict[str, Any]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30, verify=tls) as client:
            # Connect first, so the barrier releases requests, not TCP handshakes.
            assert client.get("/healthz").status_code == 200
            barrier.wait(timeout=30)
            return client.request(**arguments)

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(one, requests))
