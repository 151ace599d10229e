"""``JobQueue`` in a SQL table: the embedded queue (SQLite), also correct on PostgreSQL.

One row per message. ``receive`` claims rows with a single ``UPDATE … WHERE id IN
(SELECT … LIMIT n) RETURNING``: atomic on SQLite (one writer at a time, across
processes too) and, with ``FOR UPDATE SKIP LOCKED`` in the sub-select, on
PostgreSQL, where concurrent consumers skip each other's rows instead of
waiting. A claim writes a fresh lease token and pushes ``visible_at`` one
visibility timeout ahead: a consumer that dies simply lets the row become
claimable again. Acks and retries only apply with the current lease, so a
consumer that lost its lease cannot remove a message someone else now holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenomy.jobs.queue import QUEUE_CLASSES, DeadLetter, Delivery, JobQueue
from tokenomy.jobs.tables import JOB_QUEUE

_PRIORITY = {name: index for index, name in enumerate(QUEUE_CLASSES)}


class SQLQueue(JobQueue):
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        name: str = "jobs",
        visibility_timeout_s: float = 60.0,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.engine = engine
        self.name = name
        self.visibility_timeout_s = visibility_timeout_s
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()

    async def start(self) -> None:
        """The table comes with the jobs database's migrations: nothing to do."""

    async def enqueue(self, job_id: str, traffic_class: str = "async", *, delay_s: float = 0.0) -> None:
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.insert(JOB_QUEUE).values(
                    queue=self.name,
                    job_id=job_id,
                    priority=_PRIORITY.get(traffic_class, len(QUEUE_CLASSES)),
                    state="ready",
                    visible_at=now + delay_s,
                    attempts=0,
                    lease=None,
                    enqueued_at=now,
                )
            )
        self._wake.set()

    async def _claim(self, max_messages: int) -> list[Delivery]:
        now = time.time()
        lease = uuid.uuid4().hex
        table = JOB_QUEUE
        ready = sa.and_(table.c.queue == self.name, table.c.state == "ready", table.c.visible_at <= now)
        # A CTE, evaluated once: as an ``IN (sub-select)`` PostgreSQL may run the
        # sub-select again per row and claim more than ``max_messages``.
        candidates = (
            sa.select(table.c.id)
            .where(ready)
            .order_by(table.c.priority, table.c.visible_at, table.c.id)
            .limit(max_messages)
            .with_for_update(skip_locked=True)
            .cte("candidates")
        )
        stmt = (
            sa.update(table)
            .where(table.c.id == candidates.c.id, ready)
            .values(lease=lease, visible_at=now + self.visibility_timeout_s, attempts=table.c.attempts + 1)
            .returning(table.c.id, table.c.job_id, table.c.priority, table.c.attempts)
        )
        # Idle workers poll: a read first, so an empty queue costs no write transaction
        # (on SQLite a write would take the database lock from the ledger writer).
        async with self.engine.connect() as conn:
            if (await conn.execute(sa.select(table.c.id).where(ready).limit(1))).first() is None:
                return []
        async with self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
        rows.sort(key=lambda row: (row.priority, row.id))
        return [
            Delivery(
                job_id=row.job_id,
                traffic_class=QUEUE_CLASSES[row.priority] if row.priority < len(QUEUE_CLASSES) else "async",
                attempt=row.attempts,
                receipt=f"{row.id}:{lease}",
            )
            for row in rows
        ]

    async def receive(self, consumer: str, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        deadline = time.monotonic() + wait_s
        while True:
            self._wake.clear()
            deliveries = await self._claim(max_messages)
            remaining = deadline - time.monotonic()
            if deliveries or remaining <= 0:
                return deliveries
            # Another process may enqueue: poll; this process's enqueues wake us at once.
            try:
                async with asyncio.timeout(min(self.poll_interval_s, remaining)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    @staticmethod
    def _ids(delivery: Delivery) -> tuple[int, str]:
        row_id, _, lease = delivery.receipt.partition(":")
        return int(row_id), lease

    async def _update(self, delivery: Delivery, **values: object) -> int:
        row_id, lease = self._ids(delivery)
        table = JOB_QUEUE
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.update(table).where(table.c.id == row_id, table.c.lease == lease).values(**values)
            )
            return int(result.rowcount or 0)

    async def extend(self, delivery: Delivery) -> bool:
        return await self._update(delivery, visible_at=time.time() + self.visibility_timeout_s) == 1

    async def ack(self, delivery: Delivery) -> None:
        row_id, lease = self._ids(delivery)
        table = JOB_QUEUE
        async with self.engine.begin() as conn:
            await conn.execute(sa.delete(table).where(table.c.id == row_id, table.c.lease == lease))

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        await self._update(delivery, lease=None, visible_at=time.time() + delay_s)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        await self._update(delivery, lease=None, state="dead", dead_reason=reason[:2000])

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        table = JOB_QUEUE
        stmt = (
            sa.select(table.c.job_id, table.c.priority, table.c.dead_reason)
            .where(table.c.queue == self.name, table.c.state == "dead")
            .order_by(table.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            DeadLetter(row.job_id, QUEUE_CLASSES[min(row.priority, len(QUEUE_CLASSES) - 1)], row.dead_reason or "")
            for row in rows
        ]

    async def depth(self) -> int:
        table = JOB_QUEUE
        stmt = sa.select(sa.func.count()).where(table.c.queue == self.name, table.c.state == "ready")
        async with self.engine.connect() as conn:
            return int(await conn.scalar(stmt) or 0)

    async def aclose(self) -> None:
        """The engine belongs to the job store."""
