"""LedgerWriter: batching, flush on close, no loss, surviving a failing ledger."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence

import pytest
import sqlalchemy as sa

from tokenomy.store.ledger import Ledger, LedgerRow, SpendGroup
from tokenomy.store.sql_ledger import SQLLedger
from tokenomy.store.writer import LedgerWriter, is_rejection

MakeRow = Callable[..., LedgerRow]


class MemoryLedger(Ledger):
    """A fake speaking the ``Ledger`` contract; fails its next ``fail_next`` writes."""

    def __init__(self) -> None:
        self.rows: dict[str, LedgerRow] = {}
        self.batches: list[int] = []
        self.fail_next = 0
        self.down = False
        self.error: Exception = ConnectionRefusedError(111, "Connection refused")

    async def start(self) -> None:
        pass

    async def write_many(self, rows: Sequence[LedgerRow]) -> None:
        await asyncio.sleep(0)  # a real write yields to the loop
        if self.down or self.fail_next > 0:
            self.fail_next -= 1
            raise self.error
        self.batches.append(len(rows))
        for row in rows:
            self.rows.setdefault(row.request_id, row)

    async def fetch(self, *, since: dt.datetime | None = None, limit: int | None = None) -> list[LedgerRow]:
        rows = sorted(self.rows.values(), key=lambda r: r.created_at, reverse=True)
        return rows[:limit]

    async def count(self) -> int:
        return len(self.rows)

    async def spend_summary(
        self, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[SpendGroup]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def fast_retries(writer: LedgerWriter) -> LedgerWriter:
    writer.base_backoff_s = 0.01
    writer.max_backoff_s = 0.05
    return writer


# --- against the real ledgers ---------------------------------------------------


async def test_batches_flush_at_batch_size_and_the_rest_on_close(ledger: SQLLedger, make_row: MakeRow) -> None:
    writer = LedgerWriter(ledger, batch_size=500, flush_interval_s=60, max_pending=10_000)
    writer.start()
    for _ in range(1200):
        writer.record(make_row())
    assert writer.pending == 1200
    # Two full batches go without waiting for the (long) interval; 200 rows wait for it.
    await wait_until(lambda: writer.written == 1000)
    assert writer.pending == 200
    assert await ledger.count() == 1000
    await writer.aclose()
    assert await ledger.count() == 1200
    assert (writer.pending, writer.dropped, writer.written) == (0, 0, 1200)


async def test_timer_flushes_a_partial_batch(ledger: SQLLedger, make_row: MakeRow) -> None:
    writer = LedgerWriter(ledger, batch_size=1000, flush_interval_s=0.05, max_pending=10_000)
    writer.start()
    try:
        for _ in range(3):
            writer.record(make_row())
        await wait_until(lambda: writer.pending == 0)
        assert await ledger.count() == 3
    finally:
        await writer.aclose()


async def test_explicit_flush_writes_everything(ledger: SQLLedger, make_row: MakeRow) -> None:
    writer = LedgerWriter(ledger, batch_size=100, flush_interval_s=60, max_pending=10_000)
    for _ in range(250):
        writer.record(make_row())
    await writer.flush()  # works without the background task too
    assert await ledger.count() == 250 and writer.pending == 0


async def test_no_loss_under_10k_records(ledger: SQLLedger, make_row: MakeRow) -> None:
    writer = LedgerWriter(ledger, batch_size=500, flush_interval_s=0.05, max_pending=100_000)
    writer.start()
    rows = [make_row() for _ in range(10_000)]
    for i, row in enumerate(rows):
        writer.record(row)
        if i % 250 == 0:
            await asyncio.sleep(0)  # requests interleave with the flusher
    await writer.aclose()
    assert (writer.dropped, writer.pending, writer.written) == (0, 0, 10_000)
    assert await ledger.count() == 10_000
    stored = {row.request_id for row in await ledger.fetch()}
    assert stored == {row.request_id for row in rows}


async def test_a_row_the_database_rejects_does_not_block_the_others(
    ledger: SQLLedger, make_row: MakeRow, caplog: pytest.LogCaptureFixture
) -> None:
    writer = LedgerWriter(ledger, batch_size=10, flush_interval_s=60, max_pending=1000)
    bad = make_row(cost_items=[{"usd": object()}])  # cannot be serialized: never storable
    good = [make_row() for _ in range(6)]
    for row in (*good[:3], bad, *good[3:]):
        writer.record(row)
    with caplog.at_level(logging.ERROR, logger="tokenomy.store.writer"):
        await writer.flush()
    assert await ledger.count() == 6
    assert (writer.dropped, writer.written, writer.pending) == (1, 6, 0)
    assert bad.request_id in caplog.text


async def test_writer_survives_a_failing_database_and_catches_up(
    ledger: SQLLedger, make_row: MakeRow, caplog: pytest.LogCaptureFixture
) -> None:
    """A real database error (the table is gone), then the database is fixed."""
    writer = fast_retries(LedgerWriter(ledger, batch_size=5, flush_interval_s=0.01, max_pending=1000))
    async with ledger.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE ledger RENAME TO ledger_away")
    writer.start()
    rows = [make_row() for _ in range(12)]
    with caplog.at_level(logging.WARNING, logger="tokenomy.store.writer"):
        for row in rows:
            writer.record(row)
        await wait_until(lambda: caplog.text.count("ledger flush failed") >= 2)
        assert (writer.pending, writer.dropped) == (12, 0)
        async with ledger.engine.begin() as conn:
            await conn.exec_driver_sql("ALTER TABLE ledger_away RENAME TO ledger")
        await wait_until(lambda: writer.pending == 0)
    assert "recovered" in caplog.text
    await writer.aclose()
    assert await ledger.count() == 12 and writer.dropped == 0


@pytest.mark.postgres
async def test_an_unreachable_database_is_not_mistaken_for_bad_rows() -> None:
    with pytest.raises(Exception) as info:
        await SQLLedger("postgresql://postgres@127.0.0.1:1/test").start()
    assert not is_rejection(info.value)


# --- against the fake -------------------------------------------------------------


async def test_failed_flush_keeps_rows_and_retries_with_backoff(
    make_row: MakeRow, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = MemoryLedger()
    ledger.fail_next = 3
    writer = fast_retries(LedgerWriter(ledger, batch_size=4, flush_interval_s=0.01, max_pending=1000))
    writer.start()
    rows = [make_row() for _ in range(10)]
    with caplog.at_level(logging.WARNING, logger="tokenomy.store.writer"):
        for row in rows:
            writer.record(row)
        await wait_until(lambda: writer.pending == 0)
    await writer.aclose()
    assert caplog.text.count("ledger flush failed") == 3
    assert "Connection refused" in caplog.text
    assert list(ledger.rows) == [row.request_id for row in rows]  # all there, in order
    assert writer.dropped == 0


async def test_overflow_drops_new_rows_counts_them_and_logs_once(
    make_row: MakeRow, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = MemoryLedger()
    ledger.down = True
    writer = LedgerWriter(ledger, batch_size=10, flush_interval_s=60, max_pending=100)
    with caplog.at_level(logging.ERROR, logger="tokenomy.store.writer"):
        for _ in range(150):
            writer.record(make_row())  # never raises: the gateway keeps serving
    assert (writer.pending, writer.dropped) == (100, 50)
    assert caplog.text.count("max_pending") == 1
    ledger.down = False
    await writer.flush()
    assert await ledger.count() == 100
    writer.record(make_row())  # room again
    assert writer.pending == 1 and writer.dropped == 50


async def test_close_gives_up_after_timeout_and_counts_the_loss(
    make_row: MakeRow, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = MemoryLedger()
    ledger.down = True
    writer = fast_retries(LedgerWriter(ledger, batch_size=10, flush_interval_s=0.01, max_pending=100))
    writer.start()
    for _ in range(7):
        writer.record(make_row())
    with caplog.at_level(logging.ERROR, logger="tokenomy.store.writer"):
        await writer.aclose(timeout_s=0.2)
    assert (writer.pending, writer.dropped) == (0, 7)
    assert "7 rows unwritten" in caplog.text
    writer.record(make_row())  # after close: counted, not queued
    assert (writer.pending, writer.dropped) == (0, 8)


async def test_close_retries_until_the_database_answers(make_row: MakeRow) -> None:
    ledger = MemoryLedger()
    ledger.fail_next = 2
    writer = fast_retries(LedgerWriter(ledger, batch_size=10, flush_interval_s=60, max_pending=100))
    for _ in range(5):
        writer.record(make_row())
    await writer.aclose(timeout_s=5)
    assert await ledger.count() == 5 and writer.dropped == 0


async def test_close_writes_a_long_backlog_while_the_database_makes_progress(make_row: MakeRow) -> None:
    ledger = MemoryLedger()
    original = ledger.write_many

    async def slow_write(rows: Sequence[LedgerRow]) -> None:
        await asyncio.sleep(0.03)
        await original(rows)

    ledger.write_many = slow_write  # type: ignore[method-assign]
    writer = LedgerWriter(ledger, batch_size=10, flush_interval_s=60, max_pending=1000)
    for _ in range(100):
        writer.record(make_row())
    await writer.aclose(timeout_s=0.1)  # 10 batches take ~0.3 s: more than the timeout, less per batch
    assert await ledger.count() == 100 and writer.dropped == 0


async def test_close_cancels_a_write_in_progress_without_losing_it(make_row: MakeRow) -> None:
    ledger = MemoryLedger()
    gate = asyncio.Event()
    original = ledger.write_many

    async def slow_write(rows: Sequence[LedgerRow]) -> None:
        if not gate.is_set():
            gate.set()
            await asyncio.sleep(10)  # stuck until cancelled by aclose
        await original(rows)

    ledger.write_many = slow_write  # type: ignore[method-assign]
    writer = LedgerWriter(ledger, batch_size=3, flush_interval_s=60, max_pending=100)
    writer.start()
    for _ in range(3):
        writer.record(make_row())
    await asyncio.wait_for(gate.wait(), 1)
    assert writer.pending == 3  # in flight still counts as pending
    await writer.aclose(timeout_s=2)
    assert await ledger.count() == 3 and writer.dropped == 0


def test_rejection_is_only_about_the_rows() -> None:
    assert is_rejection(sa.exc.IntegrityError("INSERT", {}, Exception("not null")))
    assert is_rejection(sa.exc.StatementError("bad bind", "INSERT", {}, TypeError("not JSON")))
    assert not is_rejection(sa.exc.OperationalError("INSERT", {}, Exception("database is locked")))
    assert not is_rejection(sa.exc.ProgrammingError("INSERT", {}, Exception("no such table")))
    assert not is_rejection(ConnectionRefusedError())
    assert not is_rejection(RuntimeError("unknown: keep the rows"))


def test_record_is_cheap() -> None:
    """record() runs on the request path: target < 2 µs per call."""
    writer = LedgerWriter(MemoryLedger(), batch_size=500, flush_interval_s=1, max_pending=10_000_000)
    row = LedgerRow.__new__(LedgerRow)
    calls = 200_000
    best = float("inf")
    for _ in range(5):
        writer._queue.clear()  # noqa: SLF001 (keep the deque small between rounds)
        start = time.perf_counter()
        for _ in range(calls):
            writer.record(row)
        best = min(best, (time.perf_counter() - start) / calls)
    assert best < 2e-6, f"record() took {best * 1e6:.2f} µs"
