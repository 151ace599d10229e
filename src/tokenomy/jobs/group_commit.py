"""Group commit: many small writes from concurrent tasks, one transaction.

Every job costs a few tiny writes (created, started, finished). Committed one by
one they are bound by the database's commit rate — an fsync on PostgreSQL, the
single write lock on SQLite, fought over by every gateway and worker process.
``GroupCommit.run(op)`` queues ``op`` (an async function of a connection); while
a transaction is in flight the next ops wait and then all go in the following
one. At low load an op commits at once (no timer, no added latency); under load
the number of commits per second stays small while writes per second grow.

If a grouped transaction fails, its ops are retried one per transaction so that
one bad write (a constraint) fails alone and the others still commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
Op = Callable[[AsyncConnection], Awaitable[Any]]


class GroupCommit:
    def __init__(self, engine: AsyncEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def run(self, op: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                results = await self._commit(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0][1], exc)
                    continue
                for item in batch:  # isolate the failing op
                    try:
                        (result,) = await self._commit([item])
                    except Exception as single:
                        _fail(item[1], single)
                    else:
                        _succeed(item[1], result)
                continue
            except BaseException as exc:  # cancelled (shutdown): nobody must wait forever
                for _, future in batch:
                    _fail(future, exc)
                raise
            for (_, future), result in zip(batch, results):
                _succeed(future, result)

    async def _commit(self, batch: list[tuple[Op, asyncio.Future[Any]]]) -> list[Any]:
        async with self.engine.begin() as conn:
            return [await op(conn) for op, _ in batch]


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
