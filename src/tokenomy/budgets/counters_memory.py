"""``CounterStore`` for one process: dictionaries in memory, persisted to SQLite.

Every operation runs without an ``await`` between its check and its update, so
on one event loop it is atomic without locks. Settled amounts and reserved
amounts are kept apart: only settled spend is persisted (every
``persist_interval_s`` and on close), so a restart keeps spend but never
resurrects the reservations of requests that died with the process.

A hard crash loses at most the last interval of settled spend; the ledger has
it (``tokenomy budgets reconcile`` rebuilds counters from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenomy.budgets.counters import Admission, Charge, CounterStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class MemoryCounterStore(CounterStore):
    """Counters in this process; ``path=None`` keeps them in memory only (tests, benchmarks)."""

    def __init__(self, path: str | Path | None = None, *, persist_interval_s: float = 1.0, clock: Clock = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self.persist_interval_s = persist_interval_s
        self.clock = clock
        self._settled: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._expires: dict[str, float] = {}  # counter key -> epoch (absent: forever)
        self._reservations: dict[str, tuple[float, dict[str, int]]] = {}
        self._markers: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._markers_dirty = False
        self._task: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        self._queued: list[tuple[str, Sequence[Charge], Sequence[int], asyncio.Future[tuple[int, ...]]]] = []

    # life cycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.path is not None:
            await asyncio.to_thread(self._load)
            self._task = asyncio.create_task(self._persist_loop(), name="counter-persist")

    async def aclose(self) -> None:
        self._settle_queued()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.path is not None:
            await self.persist()

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL)"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS markers (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)")
        return conn

    def _load(self) -> None:
        now = self.clock()
        with contextlib.closing(self._connect()) as conn:
            for key, value, expires_at in conn.execute("SELECT key, value, expires_at FROM counters"):
                if expires_at is not None and expires_at <= now:
                    continue
                self._settled[key] = int(value)
                if expires_at is not None:
                    self._expires[key] = float(expires_at)
            for key, expires_at in conn.execute("SELECT key, expires_at FROM markers"):
                if expires_at > now:
                    self._markers[key] = float(expires_at)

    async def persist(self) -> None:
        """Write changed settled counters (and markers) to SQLite, off the event loop."""
        if self.path is None or not (self._dirty or self._markers_dirty):
            return
        keys, self._dirty = self._dirty, set()
        rows = [(key, self._settled.get(key, 0), self._expires.get(key)) for key in keys]
        markers = list(self._markers.items()) if self._markers_dirty else []
        self._markers_dirty = False
        try:
            await asyncio.to_thread(self._write, rows, markers)
        except BaseException:
            self._dirty |= keys  # try again next time
            self._markers_dirty = self._markers_dirty or bool(markers)
            raise

    def _write(self, rows: list[tuple[str, int, float | None]], markers: list[tuple[str, float]]) -> None:
        with contextlib.closing(self._connect()) as conn, conn:
            conn.executemany(
                "INSERT INTO counters (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                rows,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO markers (key, expires_at) VALUES (?, ?)", markers
            )
            conn.execute("DELETE FROM counters WHERE expires_at IS NOT NULL AND expires_at <= ?", (self.clock(),))

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.persist_interval_s)
            try:
                await self.persist()
            except (OSError, sqlite3.Error):
                log.exception("persisting budget counters to %s failed; will retry", self.path)

    # operations -------------------------------------------------------------

    def _value(self, key: str, now: float) -> int:
        expires = self._expires.get(key)
        if expires is not None and expires <= now:
            self._settled.pop(key, None)
            self._expires.pop(key, None)
            self._dirty.add(key)
        return self._settled.get(key, 0) + self._reserved.get(key, 0)

    def _total(self, window: Sequence[str], now: float) -> int:
        return sum(self._value(key, now) for key in window)

    def _touch(self, key: str, ttl_s: int, now: float) -> None:
        if ttl_s > 0:
            self._expires[key] = max(self._expires.get(key, 0.0), now + ttl_s)

    def _sweep(self, now: float) -> None:
        """Release reservations whose process never settled them."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        expired = [rid for rid, (deadline, _) in self._reservations.items() if deadline <= now]
        for rid in expired:
            _, amounts = self._reservations.pop(rid)
            for key, amount in amounts.items():
                self._unreserve(key, amount)
            log.warning("budget reservation %s expired unsettled and was released", rid)

    def _unreserve(self, key: str, amount: int) -> None:
        left = self._reserved.get(key, 0) - amount
        if left:
            self._reserved[key] = left
        else:
            self._reserved.pop(key, None)

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        now = self.clock()
        self._sweep(now)
        totals = []
        for index, charge in enumerate(charges):
            total = self._total(charge.window, now)
            if charge.limit is not None and total + charge.amount > charge.limit:
                return Admission(False, (*totals, total), index)
            totals.append(total + charge.amount)
        amounts: dict[str, int] = {}
        for charge in charges:
            if charge.amount:
                self._reserved[charge.key] = self._reserved.get(charge.key, 0) + charge.amount
                amounts[charge.key] = amounts.get(charge.key, 0) + charge.amount
            self._touch(charge.key, charge.ttl_s, now)
        self._reservations[reservation_id] = (now + ttl_s, amounts)
        return Admission(True, tuple(totals))

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        return self._settle(reservation_id, charges, actual)

    def settle_soon(
        self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]
    ) -> asyncio.Future[tuple[int, ...]]:
        """Applied when the event loop next runs (after the answer has gone), with the others queued."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, ...]] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._settle_queued)
        self._queued.append((reservation_id, charges, actual, future))
        return future

    def _settle_queued(self) -> None:
        queued, self._queued = self._queued, []
        for reservation_id, charges, actual, future in queued:
            totals = self._settle(reservation_id, charges, actual)
            if not future.done():
                future.set_result(totals)

    def _settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        now = self.clock()
        held = self._reservations.pop(reservation_id, None)
        if held is not None:
            for key, amount in held[1].items():
                self._unreserve(key, amount)
        for charge, amount in zip(charges, actual):
            if amount:
                self._settled[charge.key] = self._settled.get(charge.key, 0) + amount
                self._dirty.add(charge.key)
            self._touch(charge.key, charge.ttl_s, now)
        return tuple(self._total(charge.window, now) if charge.report else 0 for charge in charges)

    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        now = self.clock()
        return [self._total(window, now) for window in windows]

    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        now = self.clock()
        self._value(key, now)
        self._settled[key] = self._settled.get(key, 0) + amount
        self._touch(key, ttl_s, now)
        self._dirty.add(key)
        return self._value(key, now)

    async def claim(self, key: str, ttl_s: int) -> bool:
        now = self.clock()
        expires = self._markers.get(key)
        if expires is not None and expires > now:
            return False
        self._markers[key] = now + ttl_s
        self._markers_dirty = True
        return True

    async def exists(self, key: str) -> bool:
        expires = self._markers.get(key)
        return expires is not None and expires > self.clock()
