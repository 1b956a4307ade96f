"""Per-agent limits: requests per minute (a sliding-window counter with O(1) work per
call) and streams open at once."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from agentzt.errors import RateLimitedError


class SlidingWindowLimiter:
    """Counts requests in the current and previous fixed window and weighs the previous
    one by how much of it still overlaps the sliding window. Two integers per key, so
    the cost of a call never grows with recent traffic.

    Keys are kept in the order their window last moved (a key moves to the end when it
    enters a new window), so the keys that no longer count are always at the front and
    forgetting them costs one step per key forgotten, never a scan of the table.
    """

    # Beyond this many keys live at once, those whose window began longest ago are
    # forgotten early: memory stays bounded, and only a client spread over a million
    # identities in one minute could gain by it (the OAuth endpoints, which count
    # unauthenticated addresses, have a limiter of their own).
    MAX_KEYS = 1_000_000

    def __init__(self, clock: Callable[[], float], *, window_seconds: float = 60.0) -> None:
        self._clock = clock
        self._window = window_seconds
        # key -> [window start, previous window's count, current window's count]
        self._state: dict[str, list[float]] = {}

    def hit(self, key: str, limit: int) -> None:
        """Count one request for ``key``; raise RateLimitedError if it is over ``limit``."""
        now = self._clock()
        window = self._window
        start = now - (now % window)
        state = self._state.get(key)
        if state is None:
            self._forget_idle(start)
            state = self._state[key] = [start, 0.0, 0.0]
        elif state[0] != start:
            # The previous window only counts if it is the one right before this one.
            state[1] = state[2] if start - state[0] == window else 0.0
            state[2] = 0.0
            state[0] = start
            # To the end: the front keeps the keys whose windows are oldest.
            del self._state[key]
            self._state[key] = state
        elapsed = (now - start) / window
        estimate = state[1] * (1.0 - elapsed) + state[2]
        if estimate + 1 > limit:
            raise RateLimitedError(
                f"{limit} requests per {int(window)} s exceeded",
                retry_after=self._retry_after(state, limit, now),
            )
        state[2] += 1

    def _retry_after(self, state: list[float], limit: int, now: float) -> int:
        """Seconds until one more request fits, so a client that waits this long passes."""
        start, previous, current = state
        window = self._window
        if current + 1 > limit:
            # Not in this window. In the next one this window's count becomes the
            # weighted "previous": solve current * (1 - x/window) + 1 <= limit for x.
            x = window * max(0.0, 1.0 - (limit - 1) / current)
            wait = start + window + x - now
        else:
            # Later in this window, once enough of the previous window has slid out:
            # solve previous * (1 - t/window) + current + 1 <= limit for t.
            t = window * (1.0 - (limit - current - 1) / previous)
            wait = start + t - now
        return max(1, math.ceil(wait))

    def _forget_idle(self, start: float) -> int:
        """Drop the keys from the front whose counts no longer matter; return how many
        entries were looked at (at most one more than were dropped)."""
        examined = 0
        state = self._state
        while state:
            key = next(iter(state))
            examined += 1
            if start - state[key][0] <= self._window and len(state) < self.MAX_KEYS:
                break
            del state[key]
        return examined


class StreamSlots:
    """Open streams per agent, so one agent cannot hold the whole upstream pool."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()

    def take(self, agent_id: str) -> Callable[[], None]:
        """A slot for one stream, or RateLimitedError; returns its (idempotent) release."""
        if self._open[agent_id] >= self._limit:
            raise RateLimitedError(
                f"{self._open[agent_id]} streams already open (limit {self._limit})",
                message=f"too many open streams for this agent (limit {self._limit})",
            )
        self._open[agent_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[agent_id] -= 1
                if not self._open[agent_id]:
                    del self._open[agent_id]

        return release
