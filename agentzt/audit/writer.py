"""The gateway's audit events, written in order, with every wait on the disk off the loop.

- ``batch`` and ``never`` (the usual case): a request's events are copied into the
  kernel right where it awaits them, with one ``write``, as long as nothing is queued; the
  loop never waits on the disk, only on that copy. Syncs, checkpoints and rotations run
  on a thread of their own, started by a writer task on the loop when they fall due.
- ``always``: events queue up for the writer task, which hands each batch (write and
  sync) to that thread; the batch's waiters wait for the sync, while new events queue
  up for the next batch (group commit), so concurrent requests share one sync.

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
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from agentzt.audit.checkpoint import Seal
from agentzt.audit.log import AuditLog, Draft, Written
from agentzt.errors import AuditWriteError

__all__ = ["FSYNC_MODES", "AuditWriter"]

log = logging.getLogger("agentzt.audit")

FSYNC_MODES: Final = ("always", "batch", "never")
_RETRY_SECONDS: Final = 1.0
Result = Written | AuditWriteError
Pending = tuple[Draft, "asyncio.Future[None]"]


class AuditWriter:
    """Appends events to an ``AuditLog`` from a task on the event loop that first uses it.

    ``record`` (a coroutine) and ``submit`` (an asyncio future) are for that loop;
    ``append`` is for other threads and for code that runs before any loop. Events are
    written in the order they were handed over. ``aclose`` (or ``close`` from another
    thread) writes what is queued, syncs, seals a final checkpoint and closes the log.
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
        # One thread for everything that waits on the disk, so those jobs never overlap.
        self._disk = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentzt-audit")
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Pending] = []
        self._closing = False
        self._closed = False
        self._busy = False
        # Until when the writer task sleeps; an inline write that makes something due
        # sooner wakes it.
        self._sleeping_until = -math.inf
        self._failing = False
        self._seal_failing = False
        now = monotonic()
        self._synced_at = now
        self._syncing: asyncio.Future[None] | None = None
        self._sealing: asyncio.Future[None] | None = None
        self._sealed_at = now
        self._seal_retry_at = 0.0
        self._rotate_retry_at = 0.0

    @property
    def seq(self) -> int:
        return self._log.seq

    async def record(self, *drafts: Draft) -> None:
        """Write ``drafts`` in order; return once they are as durable as the mode says.

        Raises ``AuditWriteError`` (the first one) if any of them could not be written.
        """
        if self._fsync != "always" and not self._pending and not self._busy and not self._closing:
            # The common case: nothing queued and no sync to wait for, so the lines go
            # to the kernel right here, with no hand-over to the writer task.
            self._write_now(asyncio.get_running_loop(), list(drafts))
            return
        futures = [self.submit(draft) for draft in drafts]
        if len(futures) == 1:
            await futures[0]
            return
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def submit(self, draft: Draft) -> asyncio.Future[None]:
        """Hand ``draft`` over from the event loop; the future fails with
        ``AuditWriteError`` if it cannot be written."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._closing or self._closed:
            future.set_exception(AuditWriteError(f"audit log {self._log.path} is closed"))
            return future
        wake = self._start(loop)
        self._pending.append((draft, future))
        wake.set()
        return future

    def _write_now(self, loop: asyncio.AbstractEventLoop, drafts: list[Draft]) -> None:
        wake = self._start(loop)
        try:
            results = self._log.append_batch(drafts)
        except AuditWriteError as exc:
            results = [exc]
        except Exception as exc:  # fail closed on a bug, too
            log.exception("audit write failed unexpectedly")
            results = [AuditWriteError(f"audit write failed: {type(exc).__name__}")]
        self._note_health(results)
        due = self._due_at()
        if due is not None and due < self._sleeping_until:
            # The writer task sleeps past what this write made due: wake it to re-plan.
            wake.set()
        for result in results:
            if isinstance(result, AuditWriteError):
                raise result

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
    ) -> None:
        """Write one event and wait for it, from outside the writer's event loop."""
        draft = Draft(
            request_id, agent_id, role, action, resource, decision, reason, status, latency_ms, meta
        )
        loop = self._loop
        if loop is not None and loop.is_running():
            _not_on(loop, "append")
            asyncio.run_coroutine_threadsafe(self.record(draft), loop).result()
            return
        if self._closing or self._closed:
            raise AuditWriteError(f"audit log {self._log.path} is closed")
        result = self._log.append_batch([draft])[0]
        if isinstance(result, AuditWriteError):
            raise result
        self._housekeeping_here()

    def _housekeeping_here(self) -> None:
        """What the writer task does between batches, for ``append`` with no loop."""
        now = self._monotonic()
        if self._fsync == "batch" and now >= self._synced_at + self._fsync_interval:
            self._synced_at = now
            self._log.sync()
        try:
            self._log.rotate_if_due()
        except AuditWriteError as exc:
            log.error("%s", exc.detail)
        seal, seq = self._seal, self._log.seq
        if seal is None or seq <= seal.sealed_seq:
            return
        if (
            seq - seal.sealed_seq >= self._every_events
            or now >= self._sealed_at + self._every_seconds
        ):
            try:
                self._seal_at(seq, self._log.head_hash)
            except (AuditWriteError, OSError) as exc:
                # The event is written; the checkpoint is tried again with the next one.
                log.error("audit checkpoint not written: %s", exc)
                return
            self._sealed_at = now

    async def aclose(self) -> None:
        """Write what is queued, sync, seal, and close the log. Closing twice is harmless."""
        if self._closed:
            return
        self._closing = True
        if self._wake is not None and self._task is not None:
            self._wake.set()
            await self._task
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._disk, self._finish)

    def close(self) -> None:
        """``aclose`` for code outside the writer's event loop."""
        loop = self._loop
        if loop is not None and loop.is_running():
            _not_on(loop, "close")
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()
            return
        if not self._closed:
            self._closing = True
            if self._pending:
                # The loop that would have written these is gone; nobody awaits them,
                # but they are written all the same.
                pending, self._pending = self._pending, []
                try:
                    results = self._log.append_batch([draft for draft, _ in pending])
                except AuditWriteError as exc:
                    results = [exc]
                self._note_health(results)
            self._disk.submit(self._finish).result()

    def _start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._wake is not None and self._loop is loop:
            return self._wake
        with self._lock:
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("an AuditWriter serves the one event loop it started on")
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="agentzt-audit-writer")
        return self._wake

    # --- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending and not self._closing:
                due = self._due_at()
                self._sleeping_until = math.inf if due is None else due
                wait = None if due is None else due - self._monotonic()
                if wait is None:
                    await wake.wait()
                elif wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), wait)
                else:
                    # Due now: still let the loop run once, or a job on the disk thread
                    # could never report back.
                    await asyncio.sleep(0)
                self._sleeping_until = -math.inf
                wake.clear()
            batch, self._pending = self._pending, []
            # While the task may await the disk thread (a rotation, an ``always`` batch),
            # record() queues instead of writing inline: the queue keeps the order, and
            # the loop never blocks on the log's lock held by that thread.
            self._busy = True
            try:
                if batch:
                    await self._commit(loop, batch)
                await self._housekeeping(loop)
            except Exception:  # the writer must outlive any bug in housekeeping
                log.exception("audit housekeeping failed")
            finally:
                self._busy = False
            if self._closing and not self._pending:
                for job in (self._syncing, self._sealing):
                    if job is not None:
                        await asyncio.wait([job])
                return

    async def _commit(self, loop: asyncio.AbstractEventLoop, batch: list[Pending]) -> None:
        drafts = [draft for draft, _ in batch]
        results: list[Result]
        try:
            if self._fsync == "always":
                # Write and sync on the disk thread; events arriving meanwhile form the
                # next batch (group commit).
                # Shielded: if the loop is torn down meanwhile, the batch is still written.
                job = loop.run_in_executor(self._disk, self._log.append_batch, drafts)
                results = await asyncio.shield(job)
            else:
                results = self._log.append_batch(drafts)
        except AuditWriteError as exc:
            results = [exc] * len(batch)
        except Exception as exc:  # fail closed on a bug, too
            log.exception("audit write failed unexpectedly")
            results = [AuditWriteError(f"audit write failed: {type(exc).__name__}")] * len(batch)
        self._note_health(results)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its waiter was cancelled; the event is written all the same
            if isinstance(result, AuditWriteError):
                future.set_exception(result)
            else:
                future.set_result(None)

    def _note_health(self, results: list[Result]) -> None:
        """Say once when the log stops taking events and once when it takes them again."""
        failed = next((r for r in results if isinstance(r, AuditWriteError)), None)
        written = any(isinstance(r, Written) for r in results)
        if failed is not None and not written and not self._failing:
            self._failing = True
            log.error("audit log unavailable, refusing requests: %s", failed.detail)
        elif written and self._failing:
            self._failing = False
            log.warning("audit log writable again at seq %d; serving", self._log.seq)

    def _due_at(self) -> float | None:
        """When housekeeping next has something to do (monotonic time); None for never.

        A rotation is due at once; a sync ``fsync_interval`` after the last; a checkpoint
        ``checkpoint_every_seconds`` after the last, or at once after enough events. A job
        already running on the disk thread reports back by itself.
        """
        log_ = self._log
        due: list[float] = []
        if log_.size >= log_.max_file_bytes:
            due.append(self._rotate_retry_at)
        if self._fsync == "batch" and self._syncing is None and log_.seq > log_.synced_seq:
            due.append(self._synced_at + self._fsync_interval)
        seal = self._seal
        if seal is not None and self._sealing is None and log_.seq > seal.sealed_seq:
            if log_.seq - seal.sealed_seq >= self._every_events:
                due.append(self._seal_retry_at)
            else:
                due.append(max(self._sealed_at + self._every_seconds, self._seal_retry_at))
        return min(due) if due else None

    async def _housekeeping(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self._monotonic()
        if (
            self._fsync == "batch"
            and self._syncing is None
            and self._log.seq > self._log.synced_seq
            and now >= self._synced_at + self._fsync_interval
        ):
            self._synced_at = now
            self._syncing = loop.run_in_executor(self._disk, self._log.sync)
            self._syncing.add_done_callback(self._synced)
        if self._log.size >= self._log.max_file_bytes and now >= self._rotate_retry_at:
            try:
                await asyncio.shield(loop.run_in_executor(self._disk, self._log.rotate_if_due))
            except AuditWriteError as exc:
                self._rotate_retry_at = now + _RETRY_SECONDS
                log.error("%s", exc.detail)
        self._maybe_seal(loop, now)

    def _synced(self, job: asyncio.Future[None]) -> None:
        self._syncing = None
        self._rethink()
        error = None if job.cancelled() else job.exception()
        if isinstance(error, AuditWriteError):
            # The log now refuses appends until a sync succeeds.
            log.error("%s", error.detail)

    def _rethink(self) -> None:
        """A disk job finished: let the writer work out what is due next."""
        if self._wake is not None:
            self._wake.set()

    def _maybe_seal(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        seal, seq = self._seal, self._log.seq
        if seal is None or seq <= seal.sealed_seq or self._sealing is not None:
            return
        due = seq - seal.sealed_seq >= self._every_events or (
            now >= self._sealed_at + self._every_seconds
        )
        if not due or now < self._seal_retry_at:
            return
        head = self._log.head_hash
        self._sealing = loop.run_in_executor(self._disk, self._seal_at, seq, head)

        def sealed(job: asyncio.Future[None]) -> None:
            self._sealing = None
            self._rethink()
            error = None if job.cancelled() else job.exception()
            if error is None:
                if self._seal_failing:
                    self._seal_failing = False
                    log.warning("audit checkpoint written again at seq %d", seq)
                self._sealed_at = now
                return
            self._seal_retry_at = now + _RETRY_SECONDS
            # Said once, then retried quietly; success is said again.
            say = log.debug if self._seal_failing else log.error
            say("audit checkpoint not written: %s", error)
            self._seal_failing = True

        self._sealing.add_done_callback(sealed)

    # --- on the disk thread ----------------------------------------------------------------

    def _seal_at(self, seq: int, head: str) -> None:
        """Sign a checkpoint of ``(seq, head)``; raises ``OSError`` or ``AuditWriteError``.

        IMPORTANT: the log is synced first, so a checkpoint covers only events on stable
        storage and a power cut can never leave the log behind its own checkpoint.
        """
        assert self._seal is not None
        self._log.sync()
        self._seal.write(seq, head)

    def _finish(self) -> None:
        """The last job: sync, seal what is not sealed yet, close the log."""
        if self._closed:
            return
        try:
            if self._log.seq > self._log.synced_seq:
                self._log.sync()
            if self._seal is not None and self._log.seq > self._seal.sealed_seq:
                self._seal_at(self._log.seq, self._log.head_hash)
        except (AuditWriteError, OSError) as exc:
            log.error("audit log not sealed at shutdown: %s", exc)
        finally:
            self._closed = True
            self._log.close()
            self._disk.shutdown(wait=False)


def _not_on(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """Waiting for the writer's loop from inside that loop would wait forever."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    if running is loop:
        raise RuntimeError(f"AuditWriter.{name}() blocks; on its event loop use the coroutine")
