"""The operator credential: a random bearer secret for the operator-only endpoints
(``/v1/introspect``, and ``/v1/revoke`` for any token).

It lives next to the gateway's signing key, readable only by the gateway's user, who is
the operator. Resource servers that introspect tokens are given a copy. The gateway
keeps only its SHA-256 digest in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from agentzt.errors import ConfigError
from agentzt.files import write_atomically

MIN_CHARS = 32


class OperatorCredential:
    def __init__(self, secret: str) -> None:
        self._digest = hashlib.sha256(secret.encode("utf-8")).digest()

    @classmethod
    def load_or_create(cls, path: Path) -> OperatorCredential:
        if not path.exists():
            write_atomically(path, (secrets.token_urlsafe(32) + "\n").encode("ascii"), 0o600)
        try:
            secret = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the operator credential: {exc}") from exc
        if len(secret) < MIN_CHARS:
            raise ConfigError(f"{path}: the operator credential is shorter than {MIN_CHARS}")
        return cls(secret)

    def matches(self, presented: str) -> bool:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(digest, self._digest)
