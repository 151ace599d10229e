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

import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, TimeoutError as RedisTimeoutError

from tokenomy.budgets.counters import Admission, Charge, CounterStore, CounterStoreUnavailable

Clock = Callable[[], float]

#: How many expired reservations one ``reserve`` releases at most (keeps the script short).
SWEEP_BATCH = 16

_COMMON = """
local function total(i, nwin)
  local sum = 0
  for w = 1, nwin do
    local v = redis.call('GET', ARGV[i + w - 1])
    if v then sum = sum + tonumber(v) end
  end
  return sum
end
"""

RESERVE = _COMMON + """
local rid, now, deadline, n, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local zset = prefix .. 'resv'
local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, %d)
for _, old in ipairs(expired) do
  local hkey = prefix .. 'res:' .. old
  local held = redis.call('HGETALL', hkey)
  for j = 1, #held, 2 do redis.call('DECRBY', held[j], held[j + 1]) end
  redis.call('DEL', hkey)
  redis.call('ZREM', zset, old)
end
local totals = {}
local i = 6
for c = 1, n do
  local amount, limit, nwin = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4])
  local sum = total(i + 5, nwin)
  if limit >= 0 and sum + amount > limit then return {0, c - 1, sum} end
  totals[c] = sum + amount
  i = i + 5 + nwin
end
local hkey = prefix .. 'res:' .. rid
local held = false
i = 6
for c = 1, n do
  local key, amount, ttl, nwin = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  if amount ~= 0 then
    redis.call('INCRBY', key, amount)
    redis.call('HINCRBY', hkey, key, amount)
    held = true
  end
  if ttl > 0 and redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
  i = i + 5 + nwin
end
if held then
  redis.call('ZADD', zset, deadline, rid)
  redis.call('EXPIRE', hkey, math.ceil(deadline - now) + 3600)
end
local out = {1}
for c = 1, n do out[c + 1] = totals[c] end
return out
""" % SWEEP_BATCH

SETTLE = _COMMON + """
local rid, n, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local hkey = prefix .. 'res:' .. rid
local held = redis.call('HGETALL', hkey)
for j = 1, #held, 2 do redis.call('DECRBY', held[j], held[j + 1]) end
redis.call('DEL', hkey)
redis.call('ZREM', prefix .. 'resv', rid)
local out = {}
local i = 4
for c = 1, n do
  local key, actual, ttl, nwin = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  if actual ~= 0 then redis.call('INCRBY', key, actual) end
  if ttl > 0 and redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
  out[c] = total(i + 4, nwin)
  i = i + 4 + nwin
end
return out
"""

READ = """
local out = {}
local i = 1
local c = 0
while i <= #ARGV do
  local nwin = tonumber(ARGV[i])
  local sum = 0
  for w = 1, nwin do
    local v = redis.call('GET', ARGV[i + w])
    if v then sum = sum + tonumber(v) end
  end
  c = c + 1
  out[c] = sum
  i = i + 1 + nwin
end
return out
"""


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
        args: list[Any] = [reservation_id, repr(now), repr(now + ttl_s), len(charges), self.prefix]
        for charge in charges:
            args += [charge.key, charge.amount, -1 if charge.limit is None else charge.limit, charge.ttl_s, len(charge.window)]
            args += charge.window
        result = await self._run("reserve", RESERVE, args)
        if result[0] == 1:
            return Admission(True, tuple(int(v) for v in result[1:]))
        refused = int(result[1])
        return Admission(False, (0,) * refused + (int(result[2]),), refused)

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        args: list[Any] = [reservation_id, len(charges), self.prefix]
        for charge, amount in zip(charges, actual):
            args += [charge.key, amount, charge.ttl_s, len(charge.window), *charge.window]
        result = await self._run("settle", SETTLE, args)
        return tuple(int(v) for v in result)

    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        if not windows:
            return []
        args: list[Any] = []
        for window in windows:
            args += [len(window), *window]
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
