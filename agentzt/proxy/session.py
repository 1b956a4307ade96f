"""The proxy's token session: proves the agent's identity and keeps a fresh access token.

The access token lives only in this object's memory; it never reaches the agent's code
or the disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from agentzt.errors import AuthenticationError, UpstreamError
from agentzt.identity import CLIENT_ASSERTION_TYPE, SigningKey, make_assertion

log = logging.getLogger("agentzt.proxy")
Clock = Callable[[], float]
# Refresh once this share of a token's lifetime has passed, well before it expires.
REFRESH_AT = 0.8


def unreachable(
    exc: BaseException, what: str = "gateway unreachable", *, tls: bool = False
) -> UpstreamError:
    """The proxy's error for a failed connection to the gateway, naming a TLS refusal
    (an untrusted or unpinned certificate, or ours refused) plainly, since it needs the
    operator."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        log.error("refused the gateway's TLS certificate: %s", exc.certificate_error)
        detail = f"{what}: TLS certificate refused: {exc.certificate_error}"
        return UpstreamError(detail, message=detail)
    if isinstance(exc, aiohttp.ClientSSLError):
        log.error("TLS with the gateway failed: %s", exc)
        return UpstreamError(f"{what}: TLS failed: {exc}", message=f"{what}: TLS failed")
    dropped = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
    if tls and isinstance(exc, dropped) and not isinstance(exc, aiohttp.ClientConnectorError):
        # Under TLS 1.3 the gateway refuses a client certificate after the client thinks
        # the handshake is done, so the refusal shows up as a dropped connection.
        detail = (
            f"{what}: the gateway closed the TLS connection; it may refuse this agent's "
            "client certificate (expired, renewed, or from another CA: 'agentzt tls issue')"
        )
        log.error("%s", detail)
        return UpstreamError(detail, message=detail)
    return UpstreamError(f"{what}: {type(exc).__name__}")


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_after: float
    expires_at: float


class TokenSession:
    def __init__(
        self,
        *,
        agent_id: str,
        key: SigningKey,
        gateway_url: str,
        http: aiohttp.ClientSession,
        clock: Clock = time.time,
    ) -> None:
        self.agent_id = agent_id
        self._key = key
        self._gateway_url = gateway_url.rstrip("/")
        self._tls = self._gateway_url.startswith("https://")
        self._http = http
        self._clock = clock
        self._token: _Token | None = None
        self._token_endpoint: str | None = None
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A current access token, fetched or refreshed as needed."""
        current = self._token
        if current is not None and self._clock() < current.refresh_after:
            return current.value
        return await self.refresh(stale=current.value if current else None)

    async def refresh(self, *, stale: str | None) -> str:
        """Get a new token unless another task already replaced ``stale``."""
        async with self._lock:
            current = self._token
            if (
                current is not None
                and current.value != stale
                and self._clock() < current.expires_at
            ):
                return current.value
            self._token = await self._request_token()
            return self._token.value

    async def _discover(self) -> str:
        # The assertion's audience is the token endpoint the gateway advertises (RFC 8414).
        if self._token_endpoint is None:
            url = f"{self._gateway_url}/.well-known/oauth-authorization-server"
            body = await self._get_json(url)
            endpoint = body.get("token_endpoint")
            if not isinstance(endpoint, str):
                raise UpstreamError("gateway metadata has no token_endpoint")
            self._token_endpoint = endpoint
        return self._token_endpoint

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._http.get(url, allow_redirects=False) as resp:
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise unreachable(exc, tls=self._tls) from exc
        if not isinstance(body, dict):
            raise UpstreamError("gateway metadata is not a JSON object")
        return body

    async def _request_token(self) -> _Token:
        audience = await self._discover()
        now = self._clock()
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": make_assertion(
                self._key, self.agent_id, audience=audience, now=now
            ),
        }
        try:
            async with self._http.post(
                f"{self._gateway_url}/v1/token", data=form, allow_redirects=False
            ) as resp:
                status = resp.status
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise unreachable(exc, "token request failed", tls=self._tls) from exc
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            raise AuthenticationError(f"gateway refused the token request ({status} {error})")
        lifetime = float(body.get("expires_in", 60))
        return _Token(
            value=str(body["access_token"]),
            refresh_after=now + lifetime * REFRESH_AT,
            expires_at=now + lifetime,
        )
