"""Asking the gateway for a just-in-time grant as an agent, outside the proxy's request flow."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp

from agentzt.errors import AgentztError
from agentzt.identity import SigningKey
from agentzt.proxy.session import TokenSession, unreachable


async def request_grant(
    *,
    agent_id: str,
    key: SigningKey,
    gateway: str,
    request: dict[str, Any],
    tls: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Authenticate as ``agent_id`` and ``POST /v1/elevate``; return the gateway's answer."""
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(ssl=tls or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        session = TokenSession(agent_id=agent_id, key=key, gateway_url=gateway, http=http)
        token = await session.token()
        try:
            async with http.post(
                f"{gateway}/v1/elevate",
                json=request,
                headers=session.authorization(token, "POST", "/v1/elevate"),
                allow_redirects=False,
            ) as resp:
                status, body = resp.status, await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise unreachable(exc, tls=tls is not None) from exc
    if status != 200 or not isinstance(body, dict) or "elevation_grant" not in body:
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        raise AgentztError(f"gateway refused the elevation: {status} {kind}: {message}")
    return body
