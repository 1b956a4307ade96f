"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A note is UTF-8 text ending in a newline, then a blank line, then one signature line per
signer: ``— <key name> <base64(4-byte key hash || signature)>``. The key hash is the
first four bytes of ``SHA-256(key name || "\\n" || 0x01 || public key)``; 0x01 names
Ed25519. The audit log's checkpoints are signed notes, so any tool that speaks the
format can check them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agentzt.errors import ConfigError, InvalidSignatureError
from agentzt.files import write_atomically
from agentzt.identity.keys import (
    PUBLIC_KEY_BYTES,
    SigningKey,
    VerifyKey,
    check_public_key,
    load_or_create_signing_key,
)

__all__ = [
    "NoteSigner",
    "NoteVerifier",
    "checkpoint_key_name",
    "load_or_create_note_signer",
    "read_note_verifier",
    "vkey_path",
]

_ED25519: Final = b"\x01"
_DASH: Final = "\u2014 "
_MAX_NOTE_BYTES: Final = 8192
_SIGNATURE_BYTES: Final = 64


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or not name.isprintable() or any(c.isspace() or c == "+" for c in name):
        raise ValueError(f"a signed-note key name has no spaces or '+': {name!r}")


@dataclass(frozen=True)
class NoteVerifier:
    """A public key and its name: checks notes, and is written as a C2SP ``vkey``."""

    name: str
    key: VerifyKey

    def __post_init__(self) -> None:
        _check_name(self.name)

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, self.key.raw)

    def vkey(self) -> str:
        """``<name>+<hex key hash>+<base64(0x01 || public key)>``."""
        encoded = base64.b64encode(_ED25519 + self.key.raw).decode()
        return f"{self.name}+{self.key_hash.hex()}+{encoded}"

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        """Parse a ``vkey``; raises ``ValueError`` naming what is wrong."""
        # Only the name and the hash are free of "+": base64 may hold it.
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise ValueError("a verifier key is <name>+<hash>+<key>")
        name, hash_hex, encoded = parts
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError("the verifier key is not base64") from None
        if len(raw) != 1 + PUBLIC_KEY_BYTES or raw[:1] != _ED25519:
            raise ValueError("the verifier key is not an Ed25519 key")
        check_public_key(raw[1:])
        verifier = cls(name, VerifyKey(raw[1:]))
        if verifier.key_hash.hex() != hash_hex:
            raise ValueError("the verifier key's hash does not match its name and key")
        return verifier

    def open(self, note: bytes) -> str:
        """Return the text of ``note`` if this key signed it.

        Raises ``InvalidSignatureError`` when the note is malformed, too large, or carries
        no valid signature by this key (signatures by other keys are ignored).
        """
        if len(note) > _MAX_NOTE_BYTES:
            raise InvalidSignatureError("the note is too large")
        try:
            decoded = note.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSignatureError("the note is not UTF-8") from None
        split = decoded.rfind("\n\n")
        if split < 0 or not decoded.endswith("\n"):
            raise InvalidSignatureError("the note has no signature block")
        text, block = decoded[: split + 1], decoded[split + 2 :]
        wanted = self.key_hash
        for line in block.splitlines():
            if not line.startswith(_DASH):
                raise InvalidSignatureError("a signature line does not start with an em dash")
            name, _, encoded = line[len(_DASH) :].partition(" ")
            if name != self.name:
                continue
            try:
                blob = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise InvalidSignatureError("a signature is not base64") from None
            if len(blob) != 4 + _SIGNATURE_BYTES or blob[:4] != wanted:
                continue
            self.key.verify(text.encode(), blob[4:])
            return text
        raise InvalidSignatureError(f"the note carries no signature by {self.name}")


class NoteSigner:
    """An Ed25519 private key with a name: signs notes."""

    def __init__(self, name: str, key: SigningKey) -> None:
        self.verifier = NoteVerifier(name, key.public)
        self._key = key

    def sign(self, text: str) -> bytes:
        """Return ``text`` (which must end in a newline) signed, as a note."""
        if not text.endswith("\n") or "\n\n" in text:
            raise ValueError("note text ends in one newline and has no blank line")
        signature = self._key.sign(text.encode())
        blob = base64.b64encode(self.verifier.key_hash + signature).decode()
        return f"{text}\n{_DASH}{self.verifier.name} {blob}\n".encode()


def checkpoint_key_name(public: VerifyKey) -> str:
    """The name (and log origin) of a checkpoint key: unique to the key itself."""
    return "agentzt.audit/" + hashlib.sha256(public.raw).hexdigest()[:16]


def vkey_path(key_path: Path) -> Path:
    """Where the public half of the key at ``key_path`` is published."""
    return key_path.with_suffix(".vkey")


def load_or_create_note_signer(key_path: Path) -> NoteSigner:
    """The checkpoint signer: its key is created on first start, and its ``vkey`` is
    (re)written next to it for verifiers to read."""
    key = load_or_create_signing_key(key_path)
    signer = NoteSigner(checkpoint_key_name(key.public), key)
    published = vkey_path(key_path)
    text = (signer.verifier.vkey() + "\n").encode()
    try:
        current = published.read_bytes()
    except FileNotFoundError:
        current = b""
    if current != text:
        write_atomically(published, text, 0o644)
    return signer


def read_note_verifier(path: Path) -> NoteVerifier:
    """The verifier key in ``path``; ``ConfigError`` naming the file if it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no checkpoint verifier key") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the checkpoint verifier key ({exc})") from exc
    try:
        return NoteVerifier.from_vkey(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
