"""Single-use ``jti`` values: remembered until the token could no longer be accepted."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from agentzt.errors import ReplayedTokenError


class ReplayCache:
    """Remembers each key until its expiry, then forgets it.

    Eviction pops a heap of expiries, so the cost of a call does not grow with how much
    traffic came before it. When ``max_entries`` live keys are held, new keys are refused
    rather than older ones dropped: forgetting a live key early would allow a replay.
    """

    def __init__(self, clock: Callable[[], float], *, max_entries: int = 1_000_000) -> None:
        self._clock = clock
        self._max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def use(self, key: str, *, until: float) -> None:
        """Record ``key`` as used until ``until``; raise ReplayedTokenError if already used."""
        self._evict(self._clock())
        # IMPORTANT: check and insert happen with no await between them, so two
        # concurrent presentations of the same jti cannot both pass.
        if key in self._expiry:
            raise ReplayedTokenError("jti already used")
        if len(self._expiry) >= self._max_entries:
            raise ReplayedTokenError("replay cache full; refusing new tokens")
        self._expiry[key] = until
        heapq.heappush(self._heap, (until, key))

    def _evict(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            self._expiry.pop(key, None)
