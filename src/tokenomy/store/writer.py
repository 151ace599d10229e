"""Batches ledger rows in memory and writes them in the background.

The request path calls ``LedgerWriter.record(row)``: an append to a deque, no
await, no I/O. A background task writes the rows with ``Ledger.write_many``
when ``batch_size`` of them wait or every ``flush_interval_s``, one transaction
per batch.

A gateway must keep serving while its ledger database is down. So a failed
flush keeps its rows and is retried with exponential backoff (a warning is
logged each time); rows pile up in memory up to ``max_pending``, and only past
that are new rows dropped, with an error logged and every lost row counted in
``dropped``. Nothing is ever lost without a log line and a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Sequence

import sqlalchemy as sa

from tokenomy.store.ledger import Ledger, LedgerRow

logger = logging.getLogger(__name__)


def is_rejection(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves (a constraint, a value it
    cannot store, a value that cannot be serialized), so retrying them as they
    are can never succeed.

    Anything else (database down, locked, connection dropped, table missing, an
    error we do not know) is treated as passing: the rows are kept and retried,
    because dropping a whole batch on a misread error would lose it silently.
    """
    if isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError)):
        return True
    # A StatementError that is not a DBAPIError failed before reaching the
    # database: a bind value could not be converted (e.g. JSON serialization).
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)


class LedgerWriter:
    """Write-behind buffer in front of a ``Ledger``.

        writer = LedgerWriter(ledger, batch_size=500, flush_interval_s=0.25, max_pending=100_000)
        writer.start()                    # inside the running event loop
        writer.record(LedgerRow.from_call(call))   # request path: O(1), no I/O
        await writer.aclose()             # graceful shutdown (SIGTERM): writes what is left

    ``record`` must be called from the event loop's thread. The writer does not
    own the ledger: whoever created the ledger closes it, after ``aclose()``.
    """

    #: First retry delay after a failed flush, doubled per failure up to ``max_backoff_s``.
    base_backoff_s = 0.5
    max_backoff_s = 30.0

    def __init__(self, ledger: Ledger, batch_size: int, flush_interval_s: float, max_pending: int) -> None:
        if batch_size < 1 or max_pending < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size and max_pending must be ≥ 1 and flush_interval_s > 0")
        self.ledger = ledger
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        #: Rows lost: refused past ``max_pending``, recorded after ``aclose``, rejected
        #: by the database as invalid, or still unwritten when ``aclose`` gave up.
        self.dropped = 0
        #: Rows written by this writer (duplicates the ledger ignored included).
        self.written = 0
        self._queue: deque[LedgerRow] = deque()
        self._in_flight = 0  # rows taken off the queue by a write not yet committed
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one write at a time keeps rows in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._overflowing = False  # logged once per overflow episode, not once per row
        self._late_logged = False  # same for rows recorded after aclose()
        self._failures = 0

    @property
    def pending(self) -> int:
        """Rows recorded but not yet committed to the ledger."""
        return len(self._queue) + self._in_flight

    def record(self, row: LedgerRow) -> None:
        """Queue one row. Never blocks, never raises for a full buffer or a down database."""
        queue = self._queue
        if len(queue) + self._in_flight >= self.max_pending or self._closed:
            self._drop(row)
            return
        queue.append(row)
        if len(queue) >= self.batch_size:
            self._wake.set()

    def _drop(self, row: LedgerRow) -> None:
        self.dropped += 1
        if self._closed:
            if not self._late_logged:
                self._late_logged = True
                logger.error(
                    "ledger row %s recorded after the writer was closed: dropped "
                    "(later ones are only counted in LedgerWriter.dropped)",
                    row.request_id,
                )
        elif not self._overflowing:
            self._overflowing = True
            logger.error(
                "ledger writer holds %d unwritten rows (max_pending): dropping new rows until the "
                "database catches up; the gateway keeps serving",
                self.pending,
            )

    def start(self) -> None:
        """Start the background flusher (needs a running event loop)."""
        if self._task is None:
            self._closed = False
            self._late_logged = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-writer")
            self._task.add_done_callback(self._flusher_stopped)

    def _flusher_stopped(self, task: asyncio.Task[None]) -> None:
        # The loop only ends by cancellation; anything else is a bug that would
        # otherwise leave rows piling up unseen.
        if not task.cancelled() and task.exception() is not None:
            logger.error("ledger writer's flusher died; rows now wait for aclose()", exc_info=task.exception())

    async def flush(self) -> None:
        """Write every pending row now; raises if the ledger fails (rows are kept)."""
        await self._drain()

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop the flusher and write what is left (graceful shutdown, SIGTERM).

        A backlog is written for as long as the database makes progress; if no
        batch gets through for ``timeout_s`` (database down), the rows still
        unwritten are counted in ``dropped`` and logged as an error: shutdown
        must end, and must not end silently.
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():  # a task that died was logged by _flusher_stopped
            # Never cancel a write half-way: a cancelled SQLite write can leave its
            # transaction open and the database locked for the final flush. Holding
            # the lock, the flusher is at worst waiting to write, which is safe to cancel.
            async with self._lock:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = self.base_backoff_s
        while self.pending:
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                    await self._drain(max_batches=1)
            except Exception as exc:  # logged, counted below if we give up
                remaining = deadline - loop.time()
                if remaining <= 0:
                    lost, self._in_flight = self.pending, 0
                    self._queue.clear()
                    self.dropped += lost
                    logger.error("ledger writer closed with %d rows unwritten (lost): %r", lost, exc)
                    return
                logger.warning("ledger flush at shutdown failed (%r); retrying", exc)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, self.max_backoff_s)
            else:
                deadline = loop.time() + timeout_s  # progress: the clock starts again
                delay = self.base_backoff_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.flush_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            self._wake.clear()
            # Woken by a full batch: write full batches only, so that under load
            # the rows arriving during a write do not become a trickle of tiny
            # transactions. The interval's tick writes whatever is left.
            timer_due = loop.time() >= deadline
            try:
                await self._drain(full_batches_only=not timer_due)
            except Exception as exc:  # the rows are kept; logged and retried below
                self._failures += 1
                delay = min(self.base_backoff_s * 2 ** (self._failures - 1), self.max_backoff_s)
                delay *= 0.5 + random.random() / 2  # jitter: replicas must not retry in lockstep
                logger.warning(
                    "ledger flush failed (%r); %d rows kept, retry in %.1fs (attempt %d)",
                    exc,
                    self.pending,
                    delay,
                    self._failures,
                )
                await asyncio.sleep(delay)
                deadline = loop.time()  # retry everything right after the backoff
                continue
            if self._failures:
                logger.warning("ledger flush recovered after %d failed attempts", self._failures)
                self._failures = 0
            if timer_due:
                deadline = loop.time() + self.flush_interval_s

    async def _drain(self, full_batches_only: bool = False, max_batches: int | None = None) -> None:
        """Write queued rows batch by batch until the queue is empty (or holds
        less than a full batch, with ``full_batches_only``), or ``max_batches`` are written."""
        minimum = self.batch_size if full_batches_only else 1
        batches = 0
        async with self._lock:
            queue = self._queue
            while len(queue) >= minimum and (max_batches is None or batches < max_batches):
                batches += 1
                count = min(len(queue), self.batch_size)
                batch = [queue.popleft() for _ in range(count)]
                self._in_flight = count
                try:
                    self.written += await self._write(batch)
                except BaseException:
                    # Back to the front, in order: nothing is lost on failure or cancellation.
                    queue.extendleft(reversed(batch))
                    raise
                finally:
                    self._in_flight = 0
            if self._overflowing and len(queue) + self.batch_size <= self.max_pending:
                self._overflowing = False
                logger.error("ledger writer caught up; %d rows dropped in total so far", self.dropped)

    async def _write(self, batch: Sequence[LedgerRow]) -> int:
        """Write one batch; returns how many rows were accepted."""
        try:
            await self.ledger.write_many(batch)
            return len(batch)
        except Exception as exc:
            if not is_rejection(exc):
                raise
            # Retrying this batch as is would block the ledger forever: isolate
            # the bad rows by writing one at a time, keep the good ones.
            logger.error("ledger batch of %d rows rejected (%r); writing rows one by one", len(batch), exc)
            return await self._write_one_by_one(batch)

    async def _write_one_by_one(self, batch: Sequence[LedgerRow]) -> int:
        accepted = 0
        for row in batch:
            try:
                await self.ledger.write_many([row])
            except Exception as exc:
                if not is_rejection(exc):
                    # The whole batch is retried later; rows already written here are
                    # written again, which the ledger ignores (unique request_id).
                    raise
                self.dropped += 1
                logger.error("ledger row %s rejected by the database, dropped: %r", row.request_id, exc)
            else:
                accepted += 1
        return accepted
