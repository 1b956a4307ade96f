"""Where allowed model calls go: the offline mock, or a real Anthropic-shaped API.

``PassthroughUpstream`` holds the enterprise API key, the only place it exists. It uses
one pooled aiohttp session: on this machine aiohttp relayed 4.1x the requests of httpx
at a quarter of the p99 (the foundation issue's measurement of the bare chain), and it is
already the proxy's client. Calls are never retried: a Messages call is not idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from agentzt import sse
from agentzt.config import UpstreamSettings
from agentzt.errors import ConfigError, UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from agentzt.gateway import mock_upstream
from agentzt.guardrails.secrets import Redactor

log = logging.getLogger("agentzt.gateway")
Event = tuple[str, dict[str, Any]]
_REDACTOR = Redactor()
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
ANTHROPIC_VERSION = "2023-06-01"
# Request headers an agent may set that the upstream API also reads.
PASSED_HEADERS = ("anthropic-version", "anthropic-beta")


class Upstream(Protocol):
    async def message(self, body: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """A whole answer to ``POST /v1/messages``."""
        ...

    def stream(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """The answer's events; entering raises for an upstream that refuses at once."""
        ...

    async def count_tokens(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class MockUpstream:
    """Offline, deterministic answers, streamed as the real API streams them."""

    async def message(self, body: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        return mock_upstream.message(body)

    @contextlib.asynccontextmanager
    async def stream(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[Event]]:
        yield _as_async(mock_upstream.stream_events(mock_upstream.message(body)))

    async def count_tokens(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        return {"input_tokens": mock_upstream.estimate_tokens(body)}

    async def aclose(self) -> None:
        return None


async def _as_async(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


class PassthroughUpstream:
    """Forwards to ``settings.base_url`` with the key from ``settings.api_key_env``."""

    def __init__(self, settings: UpstreamSettings, api_key: str) -> None:
        self._base = settings.base_url
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_seconds,
            sock_read=settings.timeout_seconds,
        )
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # IMPORTANT: the key never reaches a log line, a traceback's locals or an error.
        return f"PassthroughUpstream(base_url={self._base!r})"

    def _session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the server's event loop.
        if self._http is None:
            connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=300)
            self._http = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        # IMPORTANT: built from scratch: nothing the agent sent reaches the upstream
        # except the API version and beta flags.
        out = {
            "x-api-key": self._key,
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        for name in PASSED_HEADERS:
            value = headers.get(name)
            if value:
                out[name] = value
        return out

    async def _post_json(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        try:
            async with self._session().post(
                f"{self._base}{path}",
                data=json.dumps(body),
                headers=self._headers(headers),
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    raise await _status_error(resp, self._key)
                answer = await resp.json(content_type=None)
        except (UpstreamError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _fault(exc) from exc
        if not isinstance(answer, dict):
            raise UpstreamError("upstream answer is not a JSON object")
        return answer

    async def message(self, body: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        return await self._post_json("/v1/messages", body, headers)

    async def count_tokens(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        return await self._post_json("/v1/messages/count_tokens", body, headers)

    @contextlib.asynccontextmanager
    async def stream(
        self, body: dict[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[Event]]:
        try:
            resp = await self._session().post(
                f"{self._base}/v1/messages",
                data=json.dumps(body),
                headers=self._headers(headers),
                allow_redirects=False,
            )
        except Exception as exc:
            raise _fault(exc) from exc
        try:
            if resp.status != 200:
                raise await _status_error(resp, self._key)
            yield _relay(resp)
        finally:
            # close(), not release(): an unfinished stream (the agent left) must drop the
            # upstream connection so the upstream stops generating.
            resp.close()


async def _relay(resp: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    try:
        async for event in sse.events(resp.content.iter_any()):
            yield event
    except UpstreamError:
        raise
    except Exception as exc:
        raise _fault(exc) from exc


def _fault(exc: BaseException) -> UpstreamError:
    """A transport failure as the agent should see it: 504 for a timeout, else 502."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(f"upstream timed out: {type(exc).__name__}")
    return UpstreamError(f"upstream unreachable or broken: {type(exc).__name__}: {exc}")


async def _status_error(resp: aiohttp.ClientResponse, key: str) -> UpstreamError:
    try:
        body = await resp.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    error_type = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = message if isinstance(message, str) else f"upstream answered {resp.status}"
    # IMPORTANT: an upstream (or a gateway in front of it) may echo the credential.
    text, _ = _REDACTOR.redact_text(text.replace(key, "[REDACTED:upstream-key]"))
    if resp.status in (401, 403):
        # The upstream refused the gateway's key: the agent's own token was fine, so this
        # must not read as a 401 the proxy would answer by fetching a new token.
        log.error("the upstream refused the gateway's credentials (%s)", resp.status)
        return UpstreamError(f"upstream refused the gateway's credentials: {resp.status} {text}")
    return UpstreamStatusError(
        resp.status,
        error_type if isinstance(error_type, str) else "api_error",
        text,
        retry_after=resp.headers.get("retry-after"),
    )


def create_upstream(
    settings: UpstreamSettings, env: Mapping[str, str], *, source: str = "gateway.toml"
) -> Upstream:
    if settings.mode == "mock":
        return MockUpstream()
    if urlsplit(settings.base_url).hostname not in LOOPBACK_HOSTS and not (
        settings.base_url.startswith("https://")
    ):
        # IMPORTANT: the enterprise key never crosses a network in clear text.
        raise ConfigError(
            f"{source}: key 'upstream.base_url' must be https (plain http only to loopback)"
        )
    key = env.get(settings.api_key_env, "")
    if not key.strip():
        raise ConfigError(
            f"{source}: upstream mode 'passthrough' needs the API key in the environment "
            f"variable {settings.api_key_env} (key 'upstream.api_key_env'), which is unset"
        )
    return PassthroughUpstream(settings, key.strip())
