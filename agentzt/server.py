"""Serving an ASGI app with uvicorn: in the foreground, or in a thread for the demo and tests.

Sockets are bound before the app is built, so a server asked for port 0 knows its real
port (and so its own URL) with no race.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agentzt.tls.peer import PEER_SCOPE_KEY, peer_from_ssl

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAS_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
# The request line and headers of one request: at most this many bytes, arriving within
# this many seconds.
MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT = 10.0


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


def _with_peer(protocol: Any) -> None:
    """Expose the verified client certificate to the app (uvicorn does not).

    Run once per connection, after the handshake: every request on the connection gets
    the certificate in ``scope["extensions"]`` at the cost of two dictionary writes.
    """
    ssl_object = protocol.transport.get_extra_info("ssl_object")
    found = peer_from_ssl(ssl_object) if ssl_object is not None else None
    if found is None:
        return
    peer, tls = found
    app = protocol.app

    async def app_with_peer(scope: Any, receive: Any, send: Any) -> None:
        extensions = scope.setdefault("extensions", {})
        extensions["tls"] = tls
        extensions[PEER_SCOPE_KEY] = peer
        await app(scope, receive, send)

    protocol.app = app_with_peer


class _BoundedHttpTools(HttpToolsProtocol):
    """httptools with the bounds uvicorn leaves out: the request line and headers must
    be at most MAX_HEADER_BYTES and arrive within HEADER_TIMEOUT seconds, from the
    connection's start or the request's first byte. Otherwise the connection is closed
    (an oversized head gets uvicorn's 400 first), so slow or huge headers cannot hold
    a connection or memory.
    """

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        # True once a request has been read whole and until the next one begins.
        self._between = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        # Bytes between requests (uvicorn stops its keep-alive timer on any) start the
        # next head's deadline even when the parser skips them (a bare CRLF) and never
        # calls on_message_begin.
        if self._between and self._head_timer is None:
            self._arm()
        super().data_received(data)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._between = False
        if self._head_timer is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            # Raised inside the parser's callback: uvicorn answers 400 and closes.
            raise ValueError("request head over the size limit")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._between = True
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class _HttpToolsWithPeer(_BoundedHttpTools):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _with_peer(self)


class _H11WithPeer(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _with_peer(self)


def _config(
    app: Any,
    tls: ssl.SSLContext | None = None,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    **overrides: Any,
) -> uvicorn.Config:
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "loop": "uvloop" if HAS_UVLOOP else "asyncio",
        "http": _BoundedHttpTools if HAS_HTTPTOOLS else "h11",
        # IMPORTANT: the client address is the TCP peer. uvicorn would otherwise take
        # X-Forwarded-For from loopback clients, and every agent is a loopback client.
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        # Bounds on what one client can make the server hold (slow or huge headers).
        "timeout_keep_alive": 30,
        "h11_max_incomplete_event_size": 64 * 1024,
    }
    if tls is not None:
        options["http"] = _HttpToolsWithPeer if HAS_HTTPTOOLS else _H11WithPeer
        options["ssl_context_factory"] = lambda config, default: tls
    protocol = options["http"]
    if header_timeout != HEADER_TIMEOUT and isinstance(protocol, type):
        options["http"] = type(protocol.__name__, (protocol,), {"header_timeout": header_timeout})
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve_forever(app: Any, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
    """Run until SIGINT/SIGTERM (uvicorn installs the handlers); HTTPS when ``tls`` is given."""
    server = uvicorn.Server(_config(app, tls))
    server.run(sockets=[sock])


class BackgroundServer:
    """A uvicorn server on its own thread and event loop; ``stop()`` shuts it down."""

    def __init__(self, app: Any, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        self.url = url_of(sock, "https" if tls is not None else "http")
        self._sock = sock
        self._server = uvicorn.Server(_config(app, tls))
        # uvicorn installs signal handlers only on the main thread, so the owner of the
        # process keeps Ctrl-C.
        self._thread = threading.Thread(target=self._run, name=f"uvicorn {self.url}", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        # The same event loop as the foreground server (uvloop when installed), so the
        # demo and the tests run what production runs.
        loop_factory = self._server.config.get_loop_factory()
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._server.serve(sockets=[self._sock]))
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
def running(
    app: Any, sock: socket.socket, tls: ssl.SSLContext | None = None
) -> Iterator[BackgroundServer]:
    server = BackgroundServer(app, sock, tls).start()
    try:
        yield server
    finally:
        server.stop()
