"""Group commit: the gateway's audit events written by one thread, in batches.

Request handlers hand events to the writer and await them; the writer thread takes
whatever has queued up, appends it with one ``write`` and (with ``fsync = "always"``)
one sync, then wakes every waiter of the batch with one call into its event loop. Under
load a batch holds many events, so the disk's cost is shared; the event loop never waits
on the disk itself.

Durability by ``fsync`` mode, on power failure (a killed process loses nothing in any
mode: an acknowledged event is in the kernel):

- ``always``: an event is acknowledged once it is on stable storage; nothing
  acknowledged is lost.
- ``batch``: acknowledged once written; synced within ``fsync_interval`` seconds, so at
  most the events of the last interval are lost.
- ``never``: synced only at a checkpoint and at shutdown; whatever the kernel had not
  yet written back is lost.

Checkpoints are signed every ``checkpoint_every_events`` events or
``checkpoint_every_seconds`` seconds (when events were added), and at shutdown; each
covers only events already synced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agentzt.audit.checkpoint import Seal
from agentzt.audit.log import AuditLog, Draft
from agentzt.errors import AuditWriteError

__all__ = ["FSYNC_MODES", "AuditWriter"]

log = logging.getLogger("agentzt.audit")

FSYNC_MODES: Final = ("always", "batch", "never")
_RETRY_SECONDS: Final = 1.0
Result = dict[str, Any] | AuditWriteError


@dataclass(slots=True)
class _Entry:
    draft: Draft
    future: asyncio.Future[dict[str, Any]] | concurrent.futures.Future[dict[str, Any]]
    loop: asyncio.AbstractEventLoop | None


class AuditWriter:
    """Appends events to an ``AuditLog`` on its own thread; see the module docstring.

    ``record`` is for coroutines, ``submit`` returns a ``concurrent.futures.Future``, and
    ``append`` waits for it. Events are written in the order they were handed over.
    ``close`` writes what is queued, syncs, seals a final checkpoint and closes the log.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        fsync: str = "batch",
        fsync_interval: float = 0.02,
        seal: Seal | None = None,
        checkpoint_every_events: int = 1000,
        checkpoint_every_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        self._log = audit_log
        self._log.sync_each = fsync == "always"
        self._fsync = fsync
        self._fsync_interval = fsync_interval
        self._seal = seal
        self._every_events = checkpoint_every_events
        self._every_seconds = checkpoint_every_seconds
        self._monotonic = monotonic
        self._cond = threading.Condition()
        self._queue: list[_Entry] = []
        self._closing = False
        self._failing = False
        self._seal_failing = False
        now = monotonic()
        self._synced_at = now
        self._sealed_seq = audit_log.seq if seal is None else seal.sealed_seq
        self._sealed_at = now
        self._seal_retry_at = 0.0
        self._rotate_retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="agentzt-audit", daemon=True)
        self._thread.start()

    @property
    def log(self) -> AuditLog:
        return self._log

    @property
    def seq(self) -> int:
        return self._log.seq

    @property
    def head_hash(self) -> str:
        return self._log.head_hash

    async def record(self, *drafts: Draft) -> list[dict[str, Any]]:
        """Write ``drafts`` in order; return the events once they are durable enough.

        Raises ``AuditWriteError`` (the first one) if any of them could not be written.
        """
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[dict[str, Any]]] = [loop.create_future() for _ in drafts]
        self._enqueue([_Entry(d, f, loop) for d, f in zip(drafts, futures, strict=True)])
        if len(futures) == 1:
            return [await futures[0]]
        results = await asyncio.gather(*futures, return_exceptions=True)
        events: list[dict[str, Any]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            events.append(result)
        return events

    def submit(self, draft: Draft) -> concurrent.futures.Future[dict[str, Any]]:
        """Hand ``draft`` over; the future holds its event or its ``AuditWriteError``."""
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._enqueue([_Entry(draft, future, None)])
        return future

    def append(
        self,
        *,
        request_id: str,
        agent_id: str | None,
        role: str | None,
        action: str,
        resource: str | None,
        decision: str,
        reason: str,
        status: int,
        latency_ms: float,
        meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write one event and wait for it (for callers outside an event loop)."""
        draft = Draft(
            request_id, agent_id, role, action, resource, decision, reason, status, latency_ms, meta
        )
        return self.submit(draft).result()

    def close(self) -> None:
        """Write what is queued, sync, seal, and close the log. Closing twice is harmless."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._log.close()

    def _enqueue(self, entries: list[_Entry]) -> None:
        with self._cond:
            if self._closing:
                error = AuditWriteError(f"audit log {self._log.path} is closed")
                for entry in entries:
                    _settle_here(entry, error)
                return
            self._queue.extend(entries)
            self._cond.notify()

    # --- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    wait = self._until_due()
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                batch, self._queue = self._queue, []
                closing = self._closing
            if batch:
                self._commit(batch)
            try:
                self._housekeeping(closing)
            except Exception:  # the thread must outlive any bug in housekeeping
                log.exception("audit housekeeping failed")
            if closing:
                with self._cond:
                    if not self._queue:
                        return

    def _commit(self, batch: list[_Entry]) -> None:
        results: list[Result]
        try:
            results = self._log.append_batch([entry.draft for entry in batch])
        except AuditWriteError as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # fail closed on a bug, too
            log.exception("audit write failed unexpectedly")
            results = [AuditWriteError(f"audit write failed: {type(exc).__name__}")] * len(batch)
        self._note_health(results)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Entry, Result]]] = {}
        for entry, result in zip(batch, results, strict=True):
            if entry.loop is None:
                _settle_here(entry, result)
            else:
                by_loop.setdefault(entry.loop, []).append((entry, result))
        for loop, settled in by_loop.items():
            # One wake-up per event loop for the whole batch; a closed loop has nobody
            # waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, settled)

    def _note_health(self, results: list[Result]) -> None:
        """Say once when the log stops taking events and once when it takes them again."""
        failed = next((r for r in results if isinstance(r, AuditWriteError)), None)
        written = any(isinstance(r, dict) for r in results)
        if failed is not None and not written and not self._failing:
            self._failing = True
            log.error("audit log unavailable, refusing requests: %s", failed.detail)
        elif written and self._failing:
            self._failing = False
            log.warning("audit log writable again at seq %d; serving", self._log.seq)

    def _until_due(self) -> float | None:
        """Seconds until housekeeping has something to do; None for nothing pending."""
        now = self._monotonic()
        due: list[float] = []
        if self._fsync == "batch" and self._log.seq > self._log.synced_seq:
            due.append(self._synced_at + self._fsync_interval)
        if self._seal is not None and self._log.seq > self._sealed_seq:
            due.append(max(self._sealed_at + self._every_seconds, self._seal_retry_at))
        return min(due) - now if due else None

    def _housekeeping(self, closing: bool) -> None:
        now = self._monotonic()
        batch_due = self._fsync == "batch" and now >= self._synced_at + self._fsync_interval
        # Every mode syncs at shutdown.
        if self._log.seq > self._log.synced_seq and (closing or batch_due):
            self._synced_at = now
            try:
                self._log.sync()
            except AuditWriteError as exc:
                # The log now refuses appends until a sync succeeds.
                log.error("%s", exc.detail)
        if now >= self._rotate_retry_at:
            try:
                self._log.rotate_if_due()
            except AuditWriteError as exc:
                self._rotate_retry_at = now + _RETRY_SECONDS
                log.error("%s", exc.detail)
        self._maybe_seal(now, closing)

    def _maybe_seal(self, now: float, closing: bool) -> None:
        seal = self._seal
        seq = self._log.seq
        if seal is None or seq <= self._sealed_seq:
            return
        due = (
            closing
            or seq - max(self._sealed_seq, 0) >= self._every_events
            or now >= self._sealed_at + self._every_seconds
        )
        if not due or (now < self._seal_retry_at and not closing):
            return
        try:
            # IMPORTANT: a checkpoint covers only events on stable storage, so a power
            # cut can never leave the log behind its own checkpoint.
            self._log.sync()
            seal.write(seq, self._log.head_hash)
        except (AuditWriteError, OSError) as exc:
            self._seal_retry_at = now + _RETRY_SECONDS
            # Said once, then retried quietly; success is said again.
            say = log.debug if self._seal_failing else log.error
            say("audit checkpoint not written: %s", exc)
            self._seal_failing = True
            return
        if self._seal_failing:
            self._seal_failing = False
            log.warning("audit checkpoint written again at seq %d", seq)
        self._sealed_seq, self._sealed_at = seq, now


def _settle_here(entry: _Entry, result: Result) -> None:
    future = entry.future
    if future.done():
        return
    try:
        if isinstance(result, AuditWriteError):
            future.set_exception(result)
        else:
            future.set_result(result)
    except (concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        pass  # cancelled meanwhile


def _settle_all(settled: list[tuple[_Entry, Result]]) -> None:
    for entry, result in settled:
        _settle_here(entry, result)
