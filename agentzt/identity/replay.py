"""Single-use ``jti`` values: remembered until the token could no longer be accepted.

With a journal file, every key is written there before it counts as used, so a gateway
restarted after a crash (kill -9 included) still refuses what it accepted before.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable
from pathlib import Path

from agentzt.errors import ReplayedTokenError, StateStoreError
from agentzt.files import write_atomically

# Rewrite the journal with only the live keys once it holds this many lines and at
# least four times as many as are live, so its size stays proportional to live keys
# and the rewrite cost per key stays constant.
COMPACT_MIN_LINES = 100_000


def _digest(key: str) -> bytes:
    # A fixed-size digest keeps memory and journal lines small whatever the key holds.
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class ReplayCache:
    """Remembers each key until its expiry, then forgets it.

    Eviction pops a heap of expiries, so the cost of a call does not grow with how much
    traffic came before it. When ``max_entries`` live keys are held, new keys are refused
    rather than older ones dropped: forgetting a live key early would allow a replay.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        max_entries: int = 1_000_000,
        journal: Path | None = None,
    ) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._expiry: dict[bytes, float] = {}
        self._heap: list[tuple[float, bytes]] = []
        self._journal = journal
        self._fd: int | None = None
        self._lines = 0
        # Set when a write failed part-way: the file may end in a fragment, so it is
        # rewritten whole before anything is appended again.
        self._torn = False
        if journal is not None:
            self._load(journal)
            self._compact()

    def __len__(self) -> int:
        return len(self._expiry)

    def use(self, key: str, *, until: float) -> None:
        """Record ``key`` as used until ``until``; raise ReplayedTokenError if already used."""
        self._evict(self._clock())
        digest = _digest(key)
        # IMPORTANT: check and insert happen with no await between them, so two
        # concurrent presentations of the same jti cannot both pass.
        if digest in self._expiry:
            raise ReplayedTokenError("jti already used")
        if len(self._expiry) >= self._max_entries:
            raise ReplayedTokenError("replay cache full; refusing new tokens")
        if self._journal is not None:
            # IMPORTANT: journaled before it counts as used; a key that cannot be made
            # to survive a crash is refused (fail closed), not accepted on memory alone.
            if self._torn:
                self._compact()
            self._append(f"{int(until) + 1} {digest.hex()}\n".encode("ascii"))
        self._expiry[digest] = until
        heapq.heappush(self._heap, (until, digest))
        # Only now, with this key in memory, may the journal be rewritten from memory.
        if self._lines >= COMPACT_MIN_LINES and self._lines >= 4 * len(self._expiry):
            self._compact()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _evict(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, digest = heapq.heappop(heap)
            self._expiry.pop(digest, None)

    # --- the journal ------------------------------------------------------------------

    def _load(self, journal: Path) -> None:
        try:
            text = journal.read_bytes().decode("ascii", "replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateStoreError(f"cannot read the replay journal {journal}: {exc}") from exc
        now = self._clock()
        for line in text.splitlines():
            until_text, _, hex_digest = line.partition(" ")
            # A torn last line (a crash mid-write) is skipped: its key was never used,
            # since a key counts as used only after its line is written whole.
            if not until_text.isdigit() or len(hex_digest) != 32:
                continue
            try:
                digest = bytes.fromhex(hex_digest)
            except ValueError:
                continue
            until = float(until_text)
            if until >= now and until > self._expiry.get(digest, 0):
                self._expiry[digest] = until
        self._heap = [(until, digest) for digest, until in self._expiry.items()]
        heapq.heapify(self._heap)

    def _append(self, line: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            written, error = 0, str(exc)
        else:
            error = f"short write ({written} of {len(line)} bytes)"
        if written != len(line):
            # Part of the line may be on disk; the next append must not extend it.
            self._torn = written > 0
            raise StateStoreError(f"cannot write the replay journal: {error}")
        self._lines += 1

    def _compact(self) -> None:
        """Replace the journal with the live keys only, then append to the new file."""
        assert self._journal is not None
        self._evict(self._clock())
        lines = "".join(
            f"{int(until) + 1} {digest.hex()}\n" for digest, until in self._expiry.items()
        )
        try:
            write_atomically(self._journal, lines.encode("ascii"), 0o600)
            fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise StateStoreError(f"cannot rewrite the replay journal: {exc}") from exc
        self.close()
        self._fd = fd
        self._lines = len(self._expiry)
        self._torn = False
