"""The proxy's token session: proves the agent's identity and keeps fresh access tokens.

One session token for calls that name no task, and one token per task the agent names
(``x-agentzt-task-id``). Tokens live only in this object's memory; they never reach the
agent's code or the disk. Each is bound to the agent key (DPoP) when the gateway says
so, and then every call carries a fresh proof signed here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agentzt.errors import AuthenticationError, RateLimitedError, UpstreamError
from agentzt.identity import CLIENT_ASSERTION_TYPE, Prover, SigningKey, make_assertion, new_jti

log = logging.getLogger("agentzt.proxy")
Clock = Callable[[], float]
# Refresh once this share of a token's lifetime has passed, well before it expires.
REFRESH_AT = 0.8
# Task tokens kept at once; the least recently used is dropped (and simply re-fetched
# should that task call again).
MAX_TASK_TOKENS = 256


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
class Token:
    value: str = field(repr=False)
    refresh_after: float
    expires_at: float
    # Whether the gateway bound it to the agent key: calls then need a DPoP proof.
    dpop: bool


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
        self._prover = Prover(key, new_jti)
        # Keyed by task id; None is the session token. Insertion order is recency.
        self._tokens: dict[str | None, Token] = {}
        self._token_endpoint: str | None = None
        self._issuer: str | None = None
        self._lock = asyncio.Lock()

    async def token(self, task: str | None = None) -> Token:
        """A current access token for ``task`` (None: no task), fetched or refreshed."""
        current = self._tokens.get(task)
        if current is not None and self._clock() < current.refresh_after:
            if task is not None:
                self._tokens[task] = self._tokens.pop(task)
            return current
        return await self.refresh(stale=current, task=task)

    async def refresh(self, *, stale: Token | None, task: str | None = None) -> Token:
        """Get a new token unless another coroutine already replaced ``stale``."""
        async with self._lock:
            current = self._tokens.get(task)
            if current is not None and current is not stale and self._clock() < current.expires_at:
                return current
            try:
                fresh = await self._request_token(task)
            except Exception:
                # The token being replaced was refused (a 401) or is about to expire;
                # keeping it would only cost the next call another refused attempt.
                if stale is not None and self._tokens.get(task) is stale:
                    del self._tokens[task]
                raise
            self._tokens.pop(task, None)
            self._tokens[task] = fresh
            tasks = [t for t in self._tokens if t is not None]
            if len(tasks) > MAX_TASK_TOKENS:
                del self._tokens[tasks[0]]
            return fresh

    def held(self, task: str | None = None) -> Token | None:
        """The token this session holds for ``task``, if any: what a memory dump of the
        proxy would reveal (the demo shows that it is useless without the key)."""
        return self._tokens.get(task)

    def forget(self, task: str) -> None:
        """Drop a task's token (the task has ended)."""
        self._tokens.pop(task, None)

    def authorization(self, token: Token, method: str, path: str) -> dict[str, str]:
        """The headers that present ``token`` on a call to ``path``: a DPoP-bound token
        with a fresh proof for this method and URL, any other as a bearer token."""
        if not token.dpop or self._issuer is None:
            return {"authorization": f"Bearer {token.value}"}
        proof = self._prover.proof(
            method, f"{self._issuer}{path}", now=self._clock(), access_token=token.value
        )
        return {"authorization": f"DPoP {token.value}", "dpop": proof}

    async def _discover(self) -> str:
        # The assertion's audience is the token endpoint the gateway advertises (RFC 8414),
        # and DPoP proofs name URLs under the issuer it advertises.
        if self._token_endpoint is None:
            url = f"{self._gateway_url}/.well-known/oauth-authorization-server"
            body = await self._get_json(url)
            endpoint, issuer = body.get("token_endpoint"), body.get("issuer")
            if not isinstance(endpoint, str) or not isinstance(issuer, str):
                raise UpstreamError("gateway metadata has no token_endpoint or issuer")
            self._token_endpoint, self._issuer = endpoint, issuer.rstrip("/")
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

    async def _request_token(self, task: str | None) -> Token:
        audience = await self._discover()
        now = self._clock()
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": make_assertion(
                self._key, self.agent_id, audience=audience, now=now
            ),
        }
        if task is not None:
            form["task_id"] = task
        # A proof goes with every token request: a gateway with DPoP on binds the token
        # to this key; one with it off ignores the header (RFC 9449 section 5).
        proof = self._prover.proof("POST", audience, now=now)
        try:
            async with self._http.post(
                f"{self._gateway_url}/v1/token",
                data=form,
                headers={"dpop": proof},
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("retry-after", "")
                body = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise unreachable(exc, "token request failed", tls=self._tls) from exc
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            described = body.get("error_description") if isinstance(body, dict) else None
            detail = f"gateway refused the token request ({status} {error})"
            if status == 429:
                # Too many token requests: the agent should wait and retry (its SDK does
                # on a 429), not treat it as a credential failure.
                wait = int(retry_after) if retry_after.isascii() and retry_after.isdigit() else 1
                raise RateLimitedError(
                    detail,
                    retry_after=max(1, min(wait, 3600)),
                    message="token requests rate limited",
                )
            # The gateway's description is its fixed public message: safe to pass on,
            # and the agent learns why (an ended task, say).
            if isinstance(described, str) and described.isprintable() and len(described) < 200:
                raise AuthenticationError(detail, message=described)
            raise AuthenticationError(detail)
        lifetime = float(body.get("expires_in", 60))
        kind = str(body.get("token_type", "Bearer")).lower()
        if kind not in ("bearer", "dpop"):
            raise UpstreamError(f"gateway issued an unknown token_type {kind!r}")
        return Token(
            value=str(body["access_token"]),
            refresh_after=now + lifetime * REFRESH_AT,
            expires_at=now + lifetime,
            dpop=kind == "dpop",
        )
