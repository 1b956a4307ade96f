"""Signed checkpoints: the log's size and head hash, signed, kept where the log is not.

A hash chain alone cannot show that events were cut off the end, that the file was
emptied or restored from an older copy, or that an edit was followed by recomputing every
later hash: the result is a valid chain. A checkpoint, a C2SP tlog-checkpoint signed with
a key the log's writer never hands out, pins ``(log id, size, head hash, time)``; a log
that does not extend it has been rewritten.

The body is the C2SP checkpoint form::

    agentzt.audit/<log id>      origin: the log's identity
    1234                        size: events covered (the seq of the last one)
    <base64 head hash>          the chain's hash after that event
    time 2026-11-22T08:00:00Z   an extension line: when it was signed

Signing and checking take a ``Signer`` / ``Opener`` (identity's signed-note keys), so
this module holds the format and the files, not the cryptography.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from agentzt.audit.canonical import GENESIS_HASH
from agentzt.files import write_atomically

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Opener",
    "Seal",
    "Signer",
    "checkpoint_files",
    "read_checkpoint",
]

LOG_DIR_NAME: Final = "checkpoint"
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_SIZE: Final = re.compile(r"0|[1-9][0-9]{0,18}")
_MAX_CHECKPOINT_BYTES: Final = 8192


class Signer(Protocol):
    def sign(self, text: str) -> bytes: ...


class Opener(Protocol):
    @property
    def name(self) -> str: ...

    def open(self, note: bytes) -> str: ...


class CheckpointError(Exception):
    """A checkpoint file that cannot be read, parsed or authenticated."""


def witness_file(witness_dir: Path, origin: str) -> Path:
    """Where a witness directory keeps the newest checkpoint of the log ``origin``."""
    return witness_dir / (origin.replace("/", "_") + ".checkpoint")


def checkpoint_files(log_path: Path, witness_dir: Path | None, origin: str) -> list[Path]:
    """The places a log's checkpoint is written to: next to the log, and the witness."""
    places = [log_path.parent / LOG_DIR_NAME]
    if witness_dir is not None:
        places.append(witness_file(witness_dir, origin))
    return places


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    head_hash: str
    time: str

    def body(self) -> str:
        head = base64.b64encode(bytes.fromhex(self.head_hash)).decode()
        return f"{self.origin}\n{self.size}\n{head}\ntime {self.time}\n"

    @classmethod
    def now(cls, origin: str, size: int, head_hash: str, timestamp: float) -> Checkpoint:
        moment = datetime.fromtimestamp(timestamp, tz=UTC)
        return cls(origin, size, head_hash, moment.strftime("%Y-%m-%dT%H:%M:%SZ"))

    @classmethod
    def parse(cls, text: str, origin: str) -> Checkpoint:
        """The checkpoint in a signed note's ``text``; raises ``CheckpointError``."""
        lines = text.split("\n")
        if len(lines) != 5 or lines[4] != "":
            raise CheckpointError("not a checkpoint body (four lines)")
        found, size, head, when = lines[:4]
        if found != origin:
            raise CheckpointError(f"it is for log {found!r}, not {origin!r}")
        if _SIZE.fullmatch(size) is None:
            raise CheckpointError("its size is not a decimal number")
        try:
            raw = base64.b64decode(head, validate=True)
        except binascii.Error:
            raise CheckpointError("its head hash is not base64") from None
        if len(raw) != 32 or base64.b64encode(raw).decode() != head:
            raise CheckpointError("its head hash is not 32 bytes of canonical base64")
        if not when.startswith("time ") or not when[5:].isprintable():
            raise CheckpointError("it has no time line")
        checkpoint = cls(origin, int(size), raw.hex(), when[5:])
        if checkpoint.size == 0 and checkpoint.head_hash != GENESIS_HASH:
            raise CheckpointError("an empty log's head is the genesis hash")
        return checkpoint

    def write(self, signer: Signer, places: list[Path]) -> None:
        """Sign and replace each file in ``places``; the first failure raises ``OSError``."""
        note = signer.sign(self.body())
        for path in places:
            try:
                write_atomically(path, note, 0o644)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"cannot write checkpoint {path}: {exc.strerror or exc}"
                ) from exc


def read_checkpoint(path: Path, opener: Opener, origin: str) -> Checkpoint | None:
    """The checkpoint in ``path``; ``None`` if there is no such file.

    Raises ``CheckpointError`` when the file exists but cannot be read, is not signed by
    ``opener``'s key, or is not a checkpoint of ``origin``: a forged or damaged
    checkpoint is evidence, never something to skip.
    """
    try:
        with path.open("rb") as stream:
            note = stream.read(_MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read it: {exc.strerror or exc}") from exc
    try:
        text = opener.open(note)
    except Exception as exc:  # the opener's own error type; any failure means "not valid"
        raise CheckpointError(f"its signature does not verify ({exc})") from exc
    return Checkpoint.parse(text, origin)


def newest(found: list[tuple[Path, Checkpoint]]) -> tuple[Path, Checkpoint] | None:
    """The checkpoint covering the most events (the first one listed on a tie)."""
    best: tuple[Path, Checkpoint] | None = None
    for item in found:
        if best is None or item[1].size > best[1].size:
            best = item
    return best


class Seal:
    """Writes a log's checkpoints, and checks at start-up that the log extends them.

    ``signer`` signs with the checkpoint key and ``opener`` checks that key's signature;
    the opener's key name is the log's origin. ``places`` are the files each checkpoint
    replaces (``checkpoint_files``).
    """

    def __init__(
        self, signer: Signer, opener: Opener, places: list[Path], clock: Callable[[], float]
    ) -> None:
        self._signer = signer
        self._opener = opener
        self.origin = opener.name
        self.places = places
        self._clock = clock
        self.sealed_seq = 0

    def found(self) -> list[tuple[Path, Checkpoint]]:
        """Every checkpoint in ``places``; raises ``CheckpointError`` naming a bad one."""
        found: list[tuple[Path, Checkpoint]] = []
        for path in self.places:
            try:
                checkpoint = read_checkpoint(path, self._opener, self.origin)
            except CheckpointError as exc:
                raise CheckpointError(f"checkpoint {path}: {exc}") from exc
            if checkpoint is not None:
                found.append((path, checkpoint))
        return found

    def check_start(self, seq: int, head_hash: str, hash_at: Callable[[int], str | None]) -> None:
        """Refuse to continue a log that its newest checkpoint shows was cut or rewritten.

        Raises ``CheckpointError``. ``hash_at(n)`` is the hash the log records on event
        ``n``; it is asked only for the checkpoint's event, read from the end, so this
        costs what the events since the checkpoint cost; ``agentzt audit --verify`` does
        the rest.
        """
        best = newest(self.found())
        if best is None:
            return
        path, checkpoint = best
        if checkpoint.size > seq:
            raise CheckpointError(
                f"the audit log holds {seq} events but checkpoint {path} (signed "
                f"{checkpoint.time}) covers {checkpoint.size}: it was truncated, emptied or "
                "rolled back; run `agentzt audit --verify`"
            )
        found = head_hash if checkpoint.size == seq else hash_at(checkpoint.size)
        if checkpoint.size > 0 and found != checkpoint.head_hash:
            # IMPORTANT: also when the log has grown past the checkpoint, or a rewritten
            # log plus one new event would start, and be sealed afresh, unnoticed.
            raise CheckpointError(
                f"the audit log's event at seq {checkpoint.size} is not the one checkpoint "
                f"{path} signed: it was rewritten; run `agentzt audit --verify`"
            )
        self.sealed_seq = checkpoint.size

    def write(self, seq: int, head_hash: str) -> None:
        """Sign ``(origin, seq, head, now)`` into every place; ``OSError`` on failure."""
        Checkpoint.now(self.origin, seq, head_hash, self._clock()).write(self._signer, self.places)
        self.sealed_seq = seq
