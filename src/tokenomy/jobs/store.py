"""Jobs, files and batches in SQL: the ledger's database unless ``jobs.url`` says otherwise.

Every replica and every worker reads the same rows, so a job created by one
gateway can be polled on another and run by a third. State changes that must
happen once (a job completed, a batch finalized) are conditional ``UPDATE``s:
whoever changes the row first wins, and the others see ``False`` and back off.
That is what turns the queue's at-least-once delivery into exactly-once effects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tokenomy.jobs.group_commit import GroupCommit
from tokenomy.jobs.owner import ANY_OWNER, OwnerFilter
from tokenomy.jobs.tables import BATCHES, FILES, JOBS
from tokenomy.store.ledger import LedgerRow
from tokenomy.store.migrations import upgrade_head
from tokenomy.store.sql_ledger import async_url, insert_rows, open_engine

_INSERT_JOB = sa.insert(JOBS)

#: A job in one of these states is over: nothing may change its result any more.
TERMINAL = ("completed", "failed", "cancelled")


@dataclass(slots=True)
class Job:
    """An async request (or a whole batch) waiting for, or done with, a worker."""

    id: str
    kind: str  # chat | embeddings | batch
    traffic_class: str = "async"
    api: str = "openai"
    status: str = "queued"  # queued | in_progress | completed | failed | cancelled
    model: str | None = None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cost_usd: float | None = None
    webhook_url: str | None = None
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_attempts: int = 0
    webhook_error: str | None = None
    batch_id: str | None = None
    #: the virtual key that submitted it (``None``: master key or open gateway; see ``jobs.owner``)
    owner: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]



class JobStore:
    """SQL storage of jobs, files and batches (migrated with the ledger's Alembic revisions).

        store = JobStore("sqlite:///.tokenomy/ledger.db")
        await store.start()
        await store.create_job(Job(id="job_1", kind="chat", body={...}))
        job = await store.get_job("job_1")
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = async_url(url)
        self.dialect = self.url.get_backend_name()
        self.schema = schema if self.dialect == "postgresql" else None
        self._engine: AsyncEngine | None = None
        self._group: GroupCommit | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("JobStore.start() has not been called")
        return self._engine

    async def start(self) -> None:
        if self._engine is not None:
            return
        engine = open_engine(self.url, schema=self.schema)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_head)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._group = GroupCommit(engine)

    async def _write(self, op: Any) -> Any:
        """Run a small write in the next grouped transaction (see ``group_commit``)."""
        if self._group is None:
            raise RuntimeError("JobStore.start() has not been called")
        return await self._group.run(op)

    async def aclose(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    # -- jobs -----------------------------------------------------------------------------
    async def create_job(self, job: Job) -> None:
        values = job.as_dict()

        async def op(conn: Any) -> None:
            await conn.execute(_INSERT_JOB, [values])  # one cached statement, values bound

        await self._write(op)

    async def get_job(self, job_id: str) -> Job | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id))).mappings().first()
        return Job(**row) if row is not None else None

    async def start_attempt(self, job_id: str) -> Job | None:
        """Mark a job running and count the attempt; ``None`` if it is over (or unknown)."""
        now = time.time()

        async def op(conn: Any) -> Any:
            result = await conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status.not_in(TERMINAL))
                .values(
                    status="in_progress",
                    attempts=JOBS.c.attempts + 1,
                    started_at=sa.func.coalesce(JOBS.c.started_at, now),
                )
            )
            if not result.rowcount:
                return None
            return (await conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id))).mappings().first()

        row = await self._write(op)
        return Job(**row) if row is not None else None

    async def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        cost_usd: float | None = None,
        webhook_status: str | None = None,
        ledger_row: LedgerRow | None = None,
    ) -> bool:
        """Record a job's outcome, once: ``False`` if another attempt already did.

        ``ledger_row`` (when the ledger lives in this same database) is inserted in
        the same transaction, idempotently on its request id: the job is completed
        if and only if it is charged, with one commit for both.
        """
        values: dict[str, Any] = {"status": status, "completed_at": time.time(), "result": result, "error": error}
        if cost_usd is not None:
            values["cost_usd"] = cost_usd
        if webhook_status is not None:
            values["webhook_status"] = webhook_status
        async def op(conn: Any) -> bool:
            outcome = await conn.execute(
                sa.update(JOBS).where(JOBS.c.id == job_id, JOBS.c.status.not_in(TERMINAL)).values(**values)
            )
            if ledger_row is not None and outcome.rowcount:
                # through the ledger's own insert, so the dashboard's rollups count it too
                await insert_rows(conn, self.dialect, [ledger_row])
            return bool(outcome.rowcount)

        return bool(await self._write(op))

    async def requeue_job(self, job_id: str, error: dict[str, Any]) -> None:
        """A failed attempt that will be retried: back to ``queued``, last error kept."""
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.status.not_in(TERMINAL))
                .values(status="queued", error=error)
            )

    async def record_webhook(self, job_id: str, status: str, attempts: int, error: str | None) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                sa.update(JOBS)
                .where(JOBS.c.id == job_id)
                .values(webhook_status=status, webhook_attempts=attempts, webhook_error=error)
            )

    # -- files ----------------------------------------------------------------------------
    async def create_file(self, record: Mapping[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(FILES).values(**record))

    async def get_file(self, file_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(FILES).where(FILES.c.id == file_id))).mappings().first()
        return dict(row) if row is not None else None

    async def list_files(
        self, purpose: str | None = None, limit: int = 10_000, *, owner: OwnerFilter = ANY_OWNER
    ) -> list[dict[str, Any]]:
        stmt = _owned(sa.select(FILES), FILES, owner).order_by(FILES.c.created_at.desc()).limit(limit)
        if purpose:
            stmt = stmt.where(FILES.c.purpose == purpose)
        async with self.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(stmt)).mappings()]

    async def delete_file(self, file_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.delete(FILES).where(FILES.c.id == file_id))
            return bool(result.rowcount)

    # -- batches --------------------------------------------------------------------------
    async def create_batch(self, record: Mapping[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(BATCHES).values(**record))

    async def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(BATCHES).where(BATCHES.c.id == batch_id))).mappings().first()
        return dict(row) if row is not None else None

    async def list_batches(
        self, after: str | None = None, limit: int = 20, *, owner: OwnerFilter = ANY_OWNER
    ) -> list[dict[str, Any]]:
        stmt = _owned(sa.select(BATCHES), BATCHES, owner)
        stmt = stmt.order_by(BATCHES.c.created_at.desc(), BATCHES.c.id.desc()).limit(limit)
        if after:
            anchor = await self.get_batch(after)
            if anchor is not None:
                stmt = stmt.where(
                    sa.or_(
                        BATCHES.c.created_at < anchor["created_at"],
                        sa.and_(BATCHES.c.created_at == anchor["created_at"], BATCHES.c.id < after),
                    )
                )
        async with self.engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(stmt)).mappings()]

    async def update_batch(self, batch_id: str, *, only_if_status: tuple[str, ...] = (), **values: Any) -> bool:
        """Change a batch; with ``only_if_status`` only from those states (``False`` otherwise)."""
        stmt = sa.update(BATCHES).where(BATCHES.c.id == batch_id)
        if only_if_status:
            stmt = stmt.where(BATCHES.c.status.in_(only_if_status))
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt.values(**values))
            return bool(result.rowcount)


def _owned(stmt: Any, table: sa.Table, owner: OwnerFilter) -> Any:
    """``stmt`` restricted to ``owner``'s rows (``None``: rows without an owner)."""
    if owner is ANY_OWNER:
        return stmt
    if owner is None:
        return stmt.where(table.c.owner.is_(None))
    return stmt.where(table.c.owner == owner)
