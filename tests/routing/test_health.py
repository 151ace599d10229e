"""Circuit breakers: in-process, and shared across replicas through the real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tokenomy.routing.health import MemoryHealth, RedisHealth
from tests.routing.pipeline import make_rig, model, sim

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _redis_up() -> bool:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


@pytest.fixture
async def redis_prefix():
    if not await _redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_memory_breaker_opens_and_cools_down() -> None:
    now = [0.0]
    health = MemoryHealth(failures=2, cooldown_s=10, clock=lambda: now[0])
    assert not await health.record_failure("d")
    assert await health.record_failure("d")
    assert await health.open_keys(["d", "e"]) == {"d"}
    now[0] = 10.1
    assert await health.open_keys(["d"]) == set()
    # a success resets the count: one new failure does not reopen it
    await health.record_success("d")
    assert not await health.record_failure("d")


async def test_redis_breaker_is_shared_between_replicas(redis_prefix: str) -> None:
    a = RedisHealth(REDIS_URL, redis_prefix, failures=2, cooldown_s=0.3)
    b = RedisHealth(REDIS_URL, redis_prefix, failures=2, cooldown_s=0.3)
    try:
        assert not await a.record_failure("dep")
        assert await b.record_failure("dep")  # failures add up across replicas
        assert await a.open_keys(["dep", "x"]) == {"dep"}
        await asyncio.sleep(0.4)
        assert await b.open_keys(["dep"]) == set()
        await a.trip("x", 0.2)
        assert await b.open_keys(["x"]) == {"x"}
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_down_falls_back_to_in_process_state_without_waiting() -> None:
    import time

    health = RedisHealth("redis://127.0.0.1:1/0", "t:", failures=1, cooldown_s=30, retry_redis_s=60)
    try:
        assert await health.open_keys(["a"]) == set()  # one failed read…
        start = time.perf_counter()
        assert await health.record_failure("a")  # …then in-process state, no more Redis timeouts
        assert await health.open_keys(["a", "b"]) == {"a"}
        await health.trip("b", 10)
        assert await health.open_keys(["a", "b"]) == {"a", "b"}
        assert time.perf_counter() - start < 0.05
    finally:
        await health.aclose()


async def test_replica_skips_deployment_another_replica_tripped(redis_prefix: str) -> None:
    models = [model("m", sim("bad", error_rate=1.0), sim("good", "gpt-4o"))]
    routing = {"retry": {"attempts": 1}, "health": {"failures": 1, "cooldown_s": 30}}
    first = make_rig(models, routing, health=RedisHealth(REDIS_URL, redis_prefix, 1, 30))
    second = make_rig(models, routing, health=RedisHealth(REDIS_URL, redis_prefix, 1, 30))
    try:
        call, _ = await first.chat("m")
        assert [i.outcome for i in call.trace.items] == ["upstream_error", "ok"]
        call, _ = await second.chat("m")  # never tries the broken deployment
        assert [i.outcome for i in call.trace.items] == ["ok"]
    finally:
        await first.execute.health.aclose()
        await second.execute.health.aclose()
