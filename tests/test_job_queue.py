"""The queue contract, run against both implementations: the SQL queue (SQLite)
and Redis Streams consumer groups on the real Redis at 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tokenomy.jobs.queue import JobQueue
from tokenomy.jobs.redis_queue import RedisStreamQueue
from tokenomy.jobs.sql_queue import SQLQueue
from tokenomy.jobs.store import JobStore

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(params=["sqlite", "redis", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(implementation, PostgreSQL schema); sync so it can pull the async ``pg_schema`` fixture."""
    if request.param == "postgresql":
        return "postgresql", request.getfixturevalue("pg_schema")
    return request.param, None


@pytest.fixture
async def queue(backend: tuple[str, str | None], tmp_path: Path) -> AsyncIterator[JobQueue]:
    kind, schema = backend
    if kind in ("sqlite", "postgresql"):
        from tests.conftest import PG_URL

        url = f"sqlite:///{tmp_path / 'jobs.db'}" if kind == "sqlite" else PG_URL
        store = JobStore(url, schema=schema)
        await store.start()
        q: JobQueue = SQLQueue(store.engine, visibility_timeout_s=0.5, poll_interval_s=0.02)
        await q.start()
        yield q
        await store.aclose()
    else:
        rq = RedisStreamQueue(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:12]}", visibility_timeout_s=0.5)
        await rq.start()
        yield rq
        await rq.delete_keys()
        await rq.aclose()


async def test_a_message_is_delivered_to_one_consumer_and_acked(queue: JobQueue) -> None:
    await queue.enqueue("job_a", "async")
    first = await queue.receive("w1", max_messages=5, wait_s=1)
    assert [d.job_id for d in first] == ["job_a"] and first[0].attempt == 1
    assert await queue.receive("w2", max_messages=5, wait_s=0.1) == []  # invisible while leased
    await queue.ack(first[0])
    await asyncio.sleep(0.7)
    assert await queue.receive("w2", max_messages=5, wait_s=0.1) == []
    assert await queue.depth() == 0


async def test_an_unacked_message_comes_back_after_the_visibility_timeout(queue: JobQueue) -> None:
    await queue.enqueue("job_b")
    (lost,) = await queue.receive("dead-worker", wait_s=1)
    await asyncio.sleep(0.7)  # the consumer died: no ack, no heartbeat
    again = await queue.receive("w2", wait_s=1.5)
    assert [d.job_id for d in again] == ["job_b"]
    assert again[0].attempt == 2
    await queue.ack(again[0])


async def test_a_heartbeat_keeps_a_long_job_invisible(queue: JobQueue) -> None:
    await queue.enqueue("job_c")
    (held,) = await queue.receive("w1", wait_s=1)
    for _ in range(4):
        await asyncio.sleep(0.25)
        assert await queue.extend(held)
        assert await queue.receive("w2", wait_s=0) == []
    await queue.ack(held)


async def test_retry_with_delay_and_dead_letters(queue: JobQueue) -> None:
    await queue.enqueue("job_d")
    (first,) = await queue.receive("w1", wait_s=1)
    await queue.retry(first, 0.3)
    assert await queue.receive("w1", wait_s=0) == []
    await asyncio.sleep(0.35)
    (second,) = await queue.receive("w1", wait_s=1)
    assert second.job_id == "job_d" and second.attempt == 2
    await queue.dead_letter(second, "gave up after 2 attempts")
    dead = await queue.dead_letters()
    assert [(d.job_id, d.reason) for d in dead] == [("job_d", "gave up after 2 attempts")]
    assert await queue.depth() == 0


async def test_async_messages_are_served_before_batch_ones(queue: JobQueue) -> None:
    await queue.enqueue("slow", "batch")
    await queue.enqueue("urgent", "async")
    got = await queue.receive("w1", max_messages=1, wait_s=1)
    assert [d.job_id for d in got] == ["urgent"]


async def test_concurrent_consumers_never_share_a_message(queue: JobQueue) -> None:
    queue.visibility_timeout_s = 30  # a slow ack on a busy machine must not count as a dead consumer
    for i in range(60):
        await queue.enqueue(f"job_{i}")
    seen: list[str] = []

    async def consume(name: str) -> None:
        while True:
            batch = await queue.receive(name, max_messages=4, wait_s=0.2)
            if not batch:
                return
            for delivery in batch:
                seen.append(delivery.job_id)
                await queue.ack(delivery)

    await asyncio.gather(*(consume(f"w{i}") for i in range(4)))
    assert sorted(seen) == sorted(f"job_{i}" for i in range(60))



async def test_pacer_holds_calls_to_the_token_budget_and_concurrency() -> None:
    import time

    from tokenomy.jobs.pacing import Pacer

    pacer = Pacer(concurrency=2, tokens_per_minute=60_000)  # 1,000 tokens a second, bucket starts full
    await pacer.acquire(60_000)
    pacer.release(60_000, 60_000)
    start = time.monotonic()
    await pacer.acquire(500)  # must wait for ~0.5 s of refill
    assert 0.4 < time.monotonic() - start < 1.5
    await pacer.acquire(0)
    blocked = asyncio.ensure_future(pacer.acquire(0))  # both slots taken
    await asyncio.sleep(0.05)
    assert not blocked.done()
    pacer.release(500, 500)
    await asyncio.wait_for(blocked, 1)
