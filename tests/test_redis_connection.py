"""``RedisConnection``: pipelined replies in order, timeouts, lost connections, reconnects."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.budget_fixtures import REDIS_URL, clear_prefix, redis_prefix, require_redis
from tests.fakes.resp_server import RespServer
from tokenomy.store.redis_connection import RedisCommandError, RedisConnection, RedisUnavailable, bulk, packed


async def test_concurrent_callers_share_one_connection_and_get_their_own_replies() -> None:
    await require_redis()
    prefix = redis_prefix()
    conn = RedisConnection(REDIS_URL)
    try:
        counts = await asyncio.gather(*(conn.execute("INCR", prefix + "n") for _ in range(200)))
        assert sorted(counts) == list(range(1, 201))
        assert counts == sorted(counts)  # answered in the order sent
        assert await conn.execute("GET", prefix + "n") == b"200"
    finally:
        await conn.aclose()
        await clear_prefix(prefix)


async def test_error_replies_raise_and_leave_the_connection_usable() -> None:
    await require_redis()
    conn = RedisConnection(REDIS_URL)
    try:
        with pytest.raises(RedisCommandError) as info:
            await conn.execute("EVALSHA", "0" * 40, 0)
        assert info.value.no_script
        assert await conn.execute("PING") == b"PONG"
    finally:
        await conn.aclose()


async def test_packed_commands_equal_packed_arguments() -> None:
    await require_redis()
    prefix = redis_prefix()
    conn = RedisConnection(REDIS_URL)
    try:
        command = packed(4, [bulk("SET"), bulk(prefix + "k"), bulk(-12), bulk(b"XX")])
        assert await conn.execute_packed(command) is None  # XX: the key did not exist
        assert await conn.execute("SET", prefix + "k", 1.5) == b"OK"
        assert await conn.execute("GET", prefix + "k") == b"1.5"
    finally:
        await conn.aclose()
        await clear_prefix(prefix)


async def test_unanswered_command_times_out_and_the_next_one_reconnects() -> None:
    async with RespServer() as server:
        conn = RedisConnection(server.url, timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="did not answer"):
            await conn.execute("PING")
        assert 0.15 < time.monotonic() - started < 1.0
        # the silent connection was dropped: replies arriving late could not be matched any more
        pending = asyncio.ensure_future(conn.execute("PING"))
        await server.wait_for(2)
        server.reply(b"+PONG\r\n")
        assert await pending == b"PONG"
        assert server.connections == 2
        await conn.aclose()


async def test_lost_connection_fails_waiting_commands_then_reconnects() -> None:
    async with RespServer() as server:
        conn = RedisConnection(server.url, timeout_s=5)
        waiting = [asyncio.ensure_future(conn.execute("PING")) for _ in range(3)]
        await server.wait_for(3)
        server.drop()
        for future in waiting:
            with pytest.raises(RedisUnavailable):
                await future
        again = asyncio.ensure_future(conn.execute("PING"))
        await server.wait_for(4)
        server.reply(b"+PONG\r\n")
        assert await again == b"PONG"
        await conn.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_others() -> None:
    async with RespServer() as server:
        conn = RedisConnection(server.url, timeout_s=5)
        first = asyncio.ensure_future(conn.execute("GET", "a"))
        second = asyncio.ensure_future(conn.execute("GET", "b"))
        await server.wait_for(2)
        first.cancel()
        server.reply(b"$1\r\nA\r\n$1\r\nB\r\n")
        assert await second == b"B"
        await conn.aclose()


async def test_replies_split_across_reads_are_reassembled() -> None:
    async with RespServer() as server:
        conn = RedisConnection(server.url, timeout_s=5)
        pending = asyncio.ensure_future(conn.execute("LRANGE", "l", 0, -1))
        await server.wait_for(1)
        server.reply(b"*2\r\n$3\r\nfo")
        await asyncio.sleep(0.05)
        assert not pending.done()
        server.reply(b"o\r\n:7\r\n")
        assert await pending == [b"foo", 7]
        await conn.aclose()


async def test_unreachable_redis_fails_fast() -> None:
    conn = RedisConnection("redis://127.0.0.1:1/0", timeout_s=1)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="cannot connect"):
        await conn.execute("PING")
    assert time.monotonic() - started < 1.0
    await conn.aclose()


async def test_password_and_database_from_the_url_are_sent_first() -> None:
    async with RespServer() as server:
        url = server.url.replace("redis://", "redis://:s3cret@").replace("/0", "/3")
        conn = RedisConnection(url, timeout_s=5)
        pending = asyncio.ensure_future(conn.execute("PING"))
        await server.wait_for(1)
        assert server.commands[0] == [b"AUTH", b"s3cret"]
        server.reply(b"+OK\r\n")
        await server.wait_for(2)
        assert server.commands[1] == [b"SELECT", b"3"]
        server.reply(b"+OK\r\n")
        await server.wait_for(3)
        server.reply(b"+PONG\r\n")
        assert await pending == b"PONG"
        await conn.aclose()


async def test_a_refused_password_is_an_error_reply() -> None:
    async with RespServer() as server:
        conn = RedisConnection(server.url.replace("redis://", "redis://:wrong@"), timeout_s=5)
        pending = asyncio.ensure_future(conn.execute("PING"))
        await server.wait_for(1)
        server.reply(b"-WRONGPASS invalid username-password pair\r\n")
        with pytest.raises(RedisCommandError, match="WRONGPASS"):
            await pending
        await conn.aclose()
