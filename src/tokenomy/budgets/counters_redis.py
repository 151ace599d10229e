"""``CounterStore`` on Redis: every replica shares the same counters, atomically.

Each operation is one Lua script, so a reservation checks and increments all of
a call's counters (budgets of key, team, org…, rate limits, concurrency) in a
single round trip with no other client interleaving: two replicas can never
both take the last dollar. Reservations are kept in a hash per reservation and
a sorted set by deadline; ``reserve`` releases a few expired ones each time, so
a crashed replica's reservations come back on their own.

Keys are passed in ARGV rather than KEYS because a call's counters are only
known at run time; that is fine on a single Redis (or Sentinel), not on Redis
Cluster (which would need every key in one hash slot).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, TimeoutError as RedisTimeoutError

from tokenomy.budgets.counters import Admission, Charge, CounterStore, CounterStoreUnavailable

Clock = Callable[[], float]

_NUL = "\0"

#: How many expired reservations one ``reserve`` releases at most (keeps the script short).
SWEEP_BATCH = 16

# Wire format. Each charge travels as ONE argument, its fields joined by NUL:
#   key, amount, limit (-1: none), ttl, window base, window suffixes…
# and every key is relative to the store's prefix (sent once). A rolling
# window's twelve slot keys share a long base and differ in a few digits, so
# this sends a few dozen bytes per charge instead of a dozen full keys: the
# cost of a reservation was dominated by encoding and sending arguments
# (measured: bench/budget_overhead.py), not by the script.
_COMMON = """
local P = ARGV[1]
local function split(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, '\\0', i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local function total(f, first, key)
  if #f < first then
    local v = redis.call('GET', key)
    return v and tonumber(v) or 0
  end
  local base, sum = P .. f[first], 0
  for w = first + 1, #f do
    local v = redis.call('GET', base .. f[w])
    if v then sum = sum + tonumber(v) end
  end
  return sum
end
local function release(rkey)
  local held = redis.call('GET', rkey)
  if not held then return end
  local f = split(held)
  for j = 1, #f - 1, 2 do redis.call('DECRBY', P .. f[j], f[j + 1]) end
  redis.call('DEL', rkey)
end
"""

# ARGV: prefix, reservation id, now, deadline, charge…
RESERVE = _COMMON + """
local rid, now, deadline = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local zset = P .. 'resv'
local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, %d)
for _, old in ipairs(expired) do
  release(P .. 'res:' .. old)
  redis.call('ZREM', zset, old)
end
local charges, totals = {}, {}
for c = 5, #ARGV do
  local f = split(ARGV[c])
  local key, amount, limit = P .. f[1], tonumber(f[2]), tonumber(f[3])
  local sum = total(f, 5, key)
  if limit >= 0 and sum + amount > limit then return {0, c - 5, sum} end
  charges[#charges + 1] = f
  totals[#totals + 1] = sum + amount
end
local held = {}
for _, f in ipairs(charges) do
  local amount = tonumber(f[2])
  if amount ~= 0 then
    local key = P .. f[1]
    local ttl = tonumber(f[4])
    -- a counter equal to what was just added is new: give it its lifetime once
    if redis.call('INCRBY', key, amount) == amount and ttl > 0 then redis.call('EXPIRE', key, ttl) end
    held[#held + 1] = f[1]
    held[#held + 1] = f[2]
  end
end
if #held > 0 then
  redis.call('SET', P .. 'res:' .. rid, table.concat(held, '\\0'), 'EX', math.ceil(deadline - now) + 3600)
  redis.call('ZADD', zset, deadline, rid)
end
table.insert(totals, 1, 1)
return totals
""" % SWEEP_BATCH

# ARGV: prefix, reservation id, charge… (key, actual, ttl, window base, suffixes…)
SETTLE = _COMMON + """
local rid = ARGV[2]
release(P .. 'res:' .. rid)
redis.call('ZREM', P .. 'resv', rid)
local out = {}
for c = 3, #ARGV do
  local f = split(ARGV[c])
  local key, actual, ttl = P .. f[1], tonumber(f[2]), tonumber(f[3])
  if actual ~= 0 and redis.call('INCRBY', key, actual) == actual and ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  out[#out + 1] = total(f, 4, key)
end
return out
"""

# ARGV: prefix, window… (base, suffixes…)
READ = _COMMON + """
local out = {}
for c = 2, #ARGV do
  out[#out + 1] = total(split(ARGV[c]), 1, nil)
end
return out
"""


def _window(prefix: str, window: tuple[str, ...] | list[str] | Sequence[str]) -> list[str]:
    """``[base, suffix…]`` relative to ``prefix``: the common start is sent once."""
    keys = [key[len(prefix):] if key.startswith(prefix) else key for key in window]
    if len(keys) == 1:
        return [keys[0], ""]
    base = os.path.commonprefix(keys)
    return [base, *(key[len(base):] for key in keys)]


def _relative(prefix: str, key: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


class RedisCounterStore(CounterStore):
    """Counters in Redis under ``prefix`` (one prefix per gateway deployment, or per test)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tokenomy:",
        clock: Clock = time.time,
        timeout_s: float = 2.0,
        max_connections: int = 32,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._client = client
        self._owns_client = client is None
        self._shas: dict[str, str] = {}

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            # A blocking pool: under a burst, callers wait for a free connection
            # (up to the timeout) instead of failing with "too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.timeout_s * 4,
                socket_timeout=self.timeout_s,
                socket_connect_timeout=self.timeout_s,
            )
            self._client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        return self._client

    async def start(self) -> None:
        for name, script in (("reserve", RESERVE), ("settle", SETTLE), ("read", READ)):
            self._shas[name] = await self._guard(self.client.script_load(script))

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisError as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc

    async def _run(self, name: str, script: str, args: list[Any]) -> Any:
        sha = self._shas.get(name)
        try:
            if sha is None:
                raise NoScriptError("not loaded")
            return await self._guard(self.client.evalsha(sha, 0, *args))
        except NoScriptError:
            # Redis restarted (or SCRIPT FLUSH): load again once
            self._shas[name] = await self._guard(self.client.script_load(script))
            return await self._guard(self.client.evalsha(self._shas[name], 0, *args))

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        now = self.clock()
        p = self.prefix
        args: list[Any] = [p, reservation_id, repr(now), repr(now + ttl_s)]
        for charge in charges:
            key = _relative(p, charge.key)
            head = [key, str(charge.amount), "-1" if charge.limit is None else str(charge.limit), str(charge.ttl_s)]
            if not (len(charge.window) == 1 and charge.window[0] == charge.key):
                head += _window(p, charge.window)
            args.append(_NUL.join(head))
        result = await self._run("reserve", RESERVE, args)
        if result[0] == 1:
            return Admission(True, tuple(int(v) for v in result[1:]))
        refused = int(result[1])
        return Admission(False, (0,) * refused + (int(result[2]),), refused)

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        p = self.prefix
        args: list[Any] = [p, reservation_id]
        for charge, amount in zip(charges, actual):
            head = [_relative(p, charge.key), str(amount), str(charge.ttl_s)]
            if not (len(charge.window) == 1 and charge.window[0] == charge.key):
                head += _window(p, charge.window)
            args.append(_NUL.join(head))
        result = await self._run("settle", SETTLE, args)
        return tuple(int(v) for v in result)

    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        if not windows:
            return []
        p = self.prefix
        args: list[Any] = [p, *(_NUL.join(_window(p, window)) for window in windows)]
        result = await self._run("read", READ, args)
        return [int(v) for v in result]

    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.incrby(key, amount)
        if ttl_s > 0:
            pipe.expire(key, ttl_s, gt=True)
            pipe.expire(key, ttl_s, nx=True)
        result = await self._guard(pipe.execute())
        return int(result[0])

    async def claim(self, key: str, ttl_s: int) -> bool:
        return bool(await self._guard(self.client.set(key, b"1", nx=True, ex=max(1, ttl_s))))

    async def exists(self, key: str) -> bool:
        return bool(await self._guard(self.client.exists(key)))
