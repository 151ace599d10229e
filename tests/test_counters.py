"""The counter store contract, on both backends: all-or-nothing reservations, settle, expiry."""

from __future__ import annotations

import asyncio

from tests.budget_fixtures import FakeClock
from tokenomy.budgets.counters import Admission, Charge, CounterStore, to_nano


def charge(store: CounterStore, name: str, amount: int, limit: int | None, *, window: tuple[str, ...] = ()) -> Charge:
    prefix = getattr(store, "test_prefix", "")
    key = prefix + name
    return Charge(key, amount, limit, tuple(prefix + w for w in window) or (key,), ttl_s=3600)


async def test_reserve_is_all_or_nothing(counters: CounterStore) -> None:
    a = charge(counters, "a", 6, 10)
    b = charge(counters, "b", 6, 8)
    first = await counters.reserve("r1", [a, b], ttl_s=60)
    assert first.admitted and first.totals == (6, 6)
    second = await counters.reserve("r2", [a, b], ttl_s=60)
    assert not second.admitted
    assert second.refused == 0 and second.totals[0] == 6
    # nothing of the refused reservation was applied to b either
    assert await counters.read([(a.key,), (b.key,)]) == [6, 6]


async def test_settle_replaces_reservation_with_actual(counters: CounterStore) -> None:
    a = charge(counters, "a", 100, 1000)
    assert (await counters.reserve("r1", [a], ttl_s=60)).admitted
    totals = await counters.settle("r1", [a], [40])
    assert totals == (40,)
    # settling twice would double count: the second settle finds no reservation and adds in full
    assert await counters.read([(a.key,)]) == [40]


async def test_unsettled_reservation_expires(counters: CounterStore, clock: FakeClock) -> None:
    a = charge(counters, "a", 100, 150)
    assert (await counters.reserve("dead", [a], ttl_s=30)).admitted
    assert not (await counters.reserve("r2", [a], ttl_s=30)).admitted
    clock.advance(31)
    again = await counters.reserve("r3", [a], ttl_s=30)
    assert again.admitted and again.totals == (100,)
    # a late settle of the expired reservation adds its actual amount in full
    await counters.settle("dead", [a], [20])
    assert await counters.read([(a.key,)]) == [120]


async def test_window_sums_several_counters(counters: CounterStore) -> None:
    old = charge(counters, "slot1", 7, None)
    await counters.reserve("r0", [old], ttl_s=60)
    await counters.settle("r0", [old], [7])
    new = charge(counters, "slot2", 5, 10, window=("slot2", "slot1"))
    refused = await counters.reserve("r1", [new], ttl_s=60)
    assert not refused.admitted and refused.totals == (7,)
    fits = charge(counters, "slot2", 3, 10, window=("slot2", "slot1"))
    assert (await counters.reserve("r2", [fits], ttl_s=60)).totals == (10,)


async def test_unlimited_charge_counts_without_checking(counters: CounterStore) -> None:
    a = charge(counters, "meter", 10**12, None)
    assert (await counters.reserve("r1", [a], ttl_s=60)).admitted


async def test_claim_once(counters: CounterStore, clock: FakeClock) -> None:
    prefix = getattr(counters, "test_prefix", "")
    assert await counters.claim(prefix + "alert:80", 60)
    assert not await counters.claim(prefix + "alert:80", 60)
    assert await counters.exists(prefix + "alert:80")


async def test_concurrent_reservations_never_exceed_limit(counters: CounterStore) -> None:
    limit = to_nano(0.01)
    cost = to_nano(0.0003)

    async def one(i: int) -> bool:
        c = charge(counters, "budget", cost, limit)
        admission = await counters.reserve(f"r{i}", [c], ttl_s=60)
        if admission.admitted:
            await asyncio.sleep(0)
            await counters.settle(f"r{i}", [c], [cost])
        return admission.admitted

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(results) == limit // cost
    assert (await counters.read([(charge(counters, "budget", 0, None).key,)]))[0] <= limit


async def test_memory_store_keeps_settled_spend_across_restart(tmp_path, clock: FakeClock) -> None:
    from tokenomy.budgets.counters_memory import MemoryCounterStore

    store = MemoryCounterStore(tmp_path / "c.db", clock=clock)
    await store.start()
    a = Charge("spend", 50, 100, ("spend",), ttl_s=3600)
    await store.reserve("r1", [a], ttl_s=60)
    await store.settle("r1", [a], [30])
    await store.reserve("inflight", [a], ttl_s=60)  # dies with the process
    await store.aclose()

    again = MemoryCounterStore(tmp_path / "c.db", clock=clock)
    await again.start()
    assert await again.read([("spend",)]) == [30]
    await again.aclose()


async def test_add_without_reservation_counts_in_windows(counters: CounterStore) -> None:
    prefix = getattr(counters, "test_prefix", "")
    assert await counters.add(prefix + "rebuilt", 40, ttl_s=3600) == 40
    assert await counters.add(prefix + "rebuilt", 2, ttl_s=60) == 42
    a = charge(counters, "rebuilt", 10, 50)
    assert not (await counters.reserve("r1", [a], ttl_s=60)).admitted


# Redis store only: how settles travel, and recovery when Redis forgot its scripts -----------


async def test_redis_settles_queued_together_go_out_as_one_script_call(clock: FakeClock) -> None:
    from tests.budget_fixtures import REDIS_URL, clear_prefix, redis_prefix, require_redis
    from tokenomy.budgets.counters_redis import RedisCounterStore

    await require_redis()
    prefix = redis_prefix()
    store = RedisCounterStore(REDIS_URL, prefix=prefix, clock=clock, settle_delay_s=0.05)
    await store.start()
    sent = []
    send = store.connection.send_packed
    store.connection.send_packed = lambda command: sent.append(command) or send(command)  # type: ignore[method-assign]
    try:
        a = Charge(prefix + "a", 10, 1000, (prefix + "a",), ttl_s=3600)
        for i in range(5):
            assert (await store.reserve(f"r{i}", [a], ttl_s=60)).admitted
        futures = [store.settle_soon(f"r{i}", [a], [4]) for i in range(5)]
        # each reports the window total after its own settle: 50 reserved, 6 given back at a time
        assert await asyncio.gather(*futures) == [(44,), (38,), (32,), (26,), (20,)]
        assert len(sent) == 1
        assert await store.read([(a.key,)]) == [20]
    finally:
        await store.aclose()
        await clear_prefix(prefix)


async def test_redis_store_sends_queued_settles_when_closed(clock: FakeClock) -> None:
    from tests.budget_fixtures import REDIS_URL, clear_prefix, redis_prefix, require_redis
    from tokenomy.budgets.counters_redis import RedisCounterStore

    await require_redis()
    prefix = redis_prefix()
    store = RedisCounterStore(REDIS_URL, prefix=prefix, clock=clock, settle_delay_s=60)
    await store.start()
    a = Charge(prefix + "a", 10, 1000, (prefix + "a",), ttl_s=3600, report=False)
    assert (await store.reserve("r1", [a], ttl_s=60)).admitted
    pending = store.settle_soon("r1", [a], [3])
    await store.aclose()
    assert pending.done() and pending.result() == (0,)
    again = RedisCounterStore(REDIS_URL, prefix=prefix, clock=clock)
    await again.start()
    try:
        assert await again.read([(a.key,)]) == [3]
    finally:
        await again.aclose()
        await clear_prefix(prefix)


async def test_redis_store_loads_its_script_again_when_redis_lost_it(clock: FakeClock) -> None:
    from tests.fakes.resp_server import RespServer
    from tokenomy.budgets.counters_redis import RedisCounterStore

    async with RespServer() as server:
        store = RedisCounterStore(server.url, prefix="p:", clock=clock)
        a = Charge("p:a", 5, 10, ("p:a",), ttl_s=60)
        reserving = asyncio.ensure_future(store.reserve("r1", [a], ttl_s=60))
        await server.wait_for(1)
        assert server.commands[0][0] == b"EVALSHA"
        server.reply(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        await server.wait_for(2)
        assert server.commands[1][:2] == [b"SCRIPT", b"LOAD"]
        sha = server.commands[0][1]
        server.reply(b"$40\r\n" + sha + b"\r\n")
        await server.wait_for(3)
        assert server.commands[2] == server.commands[0]  # the same command, sent again
        server.reply(b"*2\r\n:1\r\n:5\r\n")
        assert await reserving == Admission(True, (5,))
        await store.aclose()


async def test_redis_store_releases_expired_reservations_of_the_earlier_format(clock: FakeClock) -> None:
    """Reservations made by an earlier version (id in the sorted set, holdings under ``res:<id>``) still expire."""
    import redis.asyncio as aioredis

    from tests.budget_fixtures import REDIS_URL, clear_prefix, redis_prefix, require_redis
    from tokenomy.budgets.counters_redis import RedisCounterStore

    await require_redis()
    prefix = redis_prefix()
    client = aioredis.Redis.from_url(REDIS_URL)
    store = RedisCounterStore(REDIS_URL, prefix=prefix, clock=clock)
    try:
        await client.incrby(prefix + "a", 70)
        await client.set(prefix + "res:old1", "a\0" + "70")
        await client.zadd(prefix + "resv", {"old1": clock() - 5})
        await store.start()
        a = Charge(prefix + "a", 40, 100, (prefix + "a",), ttl_s=3600)
        admitted = await store.reserve("r1", [a], ttl_s=60)  # sweeps first: the old 70 is released
        assert admitted.admitted and admitted.totals == (40,)
        assert await client.exists(prefix + "res:old1") == 0
        assert await client.zscore(prefix + "resv", "old1") is None
    finally:
        await store.aclose()
        await client.aclose()
        await clear_prefix(prefix)
