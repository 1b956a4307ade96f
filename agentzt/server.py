"""Serving an ASGI app with uvicorn: in the foreground, or in a thread for the demo and tests.

Sockets are bound before the app is built, so a server asked for port 0 knows its real
port (and so its own URL) with no race.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAS_HTTPTOOLS = importlib.util.find_spec("httptools") is not None


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _config(app: Any, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "loop": "uvloop" if HAS_UVLOOP else "asyncio",
        "http": "httptools" if HAS_HTTPTOOLS else "h11",
        "server_header": False,
        "date_header": False,
        # Bounds on what one client can make the server hold (slow or huge headers).
        "timeout_keep_alive": 30,
        "h11_max_incomplete_event_size": 64 * 1024,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve_forever(app: Any, sock: socket.socket) -> None:
    """Run until SIGINT/SIGTERM (uvicorn installs the handlers)."""
    server = uvicorn.Server(_config(app))
    server.run(sockets=[sock])


class BackgroundServer:
    """A uvicorn server on its own thread and event loop; ``stop()`` shuts it down."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.url = url_of(sock)
        self._sock = sock
        self._server = uvicorn.Server(_config(app))
        # uvicorn installs signal handlers only on the main thread, so the owner of the
        # process keeps Ctrl-C.
        self._thread = threading.Thread(target=self._run, name=f"uvicorn {self.url}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:
            self.error = exc

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self._thread.start()
        for _ in range(int(timeout / 0.01)):
            if self._server.started or not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        if not self._server.started:
            raise RuntimeError(f"server at {self.url} did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._sock.close()


@contextlib.contextmanager
def running(app: Any, sock: socket.socket) -> Iterator[BackgroundServer]:
    server = BackgroundServer(app, sock).start()
    try:
        yield server
    finally:
        server.stop()
