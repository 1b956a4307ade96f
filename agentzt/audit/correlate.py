"""Keyed hashes of values worth correlating but never worth storing (a token, say).

The audit log must hold no credential, yet an investigator holding a leaked token wants
the calls it made. Events carry ``HMAC-SHA256(key, value)`` instead; the key is the
gateway's own (``.agentzt/gateway/audit-hmac.key``), so the digest cannot be checked
against guesses by whoever reads only the log. ``agentzt audit hash VALUE`` computes the
same digest to search with.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from agentzt.errors import ConfigError

__all__ = ["Correlator", "load_or_create_key", "read_key"]

_KEY_BYTES: Final = 32


class Correlator:
    """``correlator(value)`` is the hex HMAC-SHA256 of ``value`` under the gateway's key."""

    __slots__ = ("_cached", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) < _KEY_BYTES:
            raise ValueError(f"an audit HMAC key is at least {_KEY_BYTES} bytes")
        self._key = key
        # A token is presented on every call of its session: remember the last few.
        self._cached = functools.lru_cache(maxsize=4096)(self._digest)

    def __call__(self, value: str) -> str:
        return self._cached(value)

    def _digest(self, value: str) -> str:
        return hmac.digest(self._key, value.encode("utf-8", "surrogatepass"), "sha256").hex()

    def __repr__(self) -> str:
        return "Correlator(<key>)"


def read_key(path: Path) -> bytes:
    """The key in ``path`` (hex text); ``ConfigError`` if it is missing or malformed."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no audit HMAC key yet; the gateway creates it when it first starts"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the audit HMAC key ({exc})") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: the audit HMAC key is not hex") from None
    if len(key) < _KEY_BYTES:
        raise ConfigError(f"{path}: the audit HMAC key is shorter than {_KEY_BYTES} bytes")
    return key


def load_or_create_key(path: Path) -> bytes:
    """The gateway's key: created (mode 0600, exclusively) on first start, read afterwards."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Another process may create it between our check and our write; theirs wins.
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as stream:
                stream.write(secrets.token_hex(_KEY_BYTES) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
    return read_key(path)
