"""Budget fixtures: a controllable clock and counter stores on both backends (imported by conftest.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tokenomy.budgets.counters import CounterStore
from tokenomy.budgets.counters_memory import MemoryCounterStore
from tokenomy.budgets.counters_redis import RedisCounterStore

REDIS_URL = os.environ.get("TOKENOMY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_REDIS_HINT = (
    'start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)


class FakeClock:
    """Epoch seconds that only move when the test says so."""

    def __init__(self, now: float = 1_764_000_000.0) -> None:  # 2025-11-24T16:00:00Z, a Monday
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def redis_prefix() -> str:
    """A key prefix no other test (or parallel run) uses."""
    return f"test:{uuid.uuid4().hex[:12]}:"


async def clear_prefix(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def redis_keys(pattern: str) -> list[str]:
    """Every key in the test Redis matching ``pattern`` (the stores keep no general-purpose client)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return [key.decode() async for key in client.scan_iter(match=pattern, count=1000)]
    finally:
        await client.aclose()


async def require_redis() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as exc:  # any failure to reach it: say how to start it
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); {_REDIS_HINT}")
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def counter_backend(request: pytest.FixtureRequest) -> str:
    """Which counter store a test runs on; tests using ``counters`` run once per backend."""
    return str(request.param)


@pytest.fixture
async def counters(counter_backend: str, clock: FakeClock, tmp_path: Path) -> AsyncIterator[CounterStore]:
    """A started counter store on the current backend, with the fake clock."""
    store: CounterStore
    prefix = redis_prefix()
    if counter_backend == "memory":
        store = MemoryCounterStore(tmp_path / "counters.db", clock=clock)
    else:
        await require_redis()
        store = RedisCounterStore(REDIS_URL, prefix=prefix, clock=clock)
    await store.start()
    store.test_prefix = prefix  # type: ignore[attr-defined]
    try:
        yield store
    finally:
        await store.aclose()
        if counter_backend == "redis":
            await clear_prefix(prefix)


@pytest.fixture
def unique_prefix() -> Iterator[str]:
    prefix = redis_prefix()
    yield prefix
