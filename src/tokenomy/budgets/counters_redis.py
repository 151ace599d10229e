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

import asyncio
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokenomy.budgets.counters import Admission, Charge, CounterStore, CounterStoreUnavailable
from tokenomy.store.redis_connection import RedisCommandError, RedisConnection, RedisUnavailable

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
  local base, keys = P .. f[first], {}
  for w = first + 1, #f do keys[#keys + 1] = base .. f[w] end
  local sum = 0
  for _, v in ipairs(redis.call('MGET', unpack(keys))) do
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
-- settle the groups in ARGV[first .. last]: reservation id, charge count, charges
-- (key, reserved, actual, ttl[, window…]); append each charge's window total
-- (0 for charges sent without a window) to out
local function settle_groups(first, last, out)
  local i = first
  while i <= last do
    local rid, n = ARGV[i], tonumber(ARGV[i + 1])
    -- still held: replace the reservation by the actual amount; expired (and
    -- released by a sweep): add the actual amount in full
    local held = redis.call('DEL', P .. 'res:' .. rid) == 1
    redis.call('ZREM', P .. 'resv', rid)
    for c = i + 2, i + 1 + n do
      local f = split(ARGV[c])
      local key, ttl = P .. f[1], tonumber(f[4])
      local delta = tonumber(f[3])
      if held then delta = delta - tonumber(f[2]) end
      if delta ~= 0 and redis.call('INCRBY', key, delta) == delta and ttl > 0 then
        redis.call('EXPIRE', key, ttl)
      end
      if #f >= 5 then out[#out + 1] = total(f, 5, key) else out[#out + 1] = 0 end
    end
    i = i + 2 + n
  end
end
"""

# ARGV: prefix, reservation id, now, deadline, sweep (1: release expired reservations first),
#       S, S arguments of settle groups, charge…
# Returns {n, reserve answer (n items), settle totals…}; the reserve answer is
# {1, total…} when admitted, {0, refused index, total} when not.
RESERVE = _COMMON + """
local rid, now, deadline, S = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[6])
local settled = {}
settle_groups(7, 6 + S, settled)
local zset = P .. 'resv'
if ARGV[5] == '1' then
  local expired = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, %d)
  for _, old in ipairs(expired) do
    release(P .. 'res:' .. old)
    redis.call('ZREM', zset, old)
  end
end
local function answer(reply)
  local out = {#reply}
  for _, v in ipairs(reply) do out[#out + 1] = v end
  for _, v in ipairs(settled) do out[#out + 1] = v end
  return out
end
local charges, totals = {}, {1}
for c = 7 + S, #ARGV do
  local f = split(ARGV[c])
  local key, amount, limit = P .. f[1], tonumber(f[2]), tonumber(f[3])
  local sum = total(f, 5, key)
  if limit >= 0 and sum + amount > limit then return answer({0, c - 7 - S, sum}) end
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
return answer(totals)
""" % SWEEP_BATCH

# ARGV: prefix, settle groups (reservation id, charge count, charges…)
SETTLE = _COMMON + """
local out = {}
settle_groups(2, #ARGV, out)
return out
"""

# ARGV: key, amount, ttl — add without a reservation; never shortens a lifetime
# (works on Redis 6, which has no EXPIRE GT/NX)
ADD = """
local v = redis.call('INCRBY', ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 and redis.call('TTL', ARGV[1]) < ttl then redis.call('EXPIRE', ARGV[1], ttl) end
return v
"""

# ARGV: prefix, window… (base, suffixes…)
READ = _COMMON + """
local out = {}
for c = 2, #ARGV do
  out[#out + 1] = total(split(ARGV[c]), 1, nil)
end
return out
"""


@functools.lru_cache(maxsize=8192)
def _window_cached(prefix: str, window: tuple[str, ...]) -> tuple[str, ...]:
    keys = [key[len(prefix):] if key.startswith(prefix) else key for key in window]
    if len(keys) == 1:
        return (keys[0], "")
    base = os.path.commonprefix(keys)
    return (base, *(key[len(base):] for key in keys))


def _window(prefix: str, window: Sequence[str]) -> tuple[str, ...]:
    """``(base, suffix…)`` relative to ``prefix``: the common start is sent once.

    Cached: a window's keys stay the same for a whole slot or period.
    """
    return _window_cached(prefix, window if isinstance(window, tuple) else tuple(window))


def _resolve(settles: list[tuple[list[str], int, asyncio.Future[tuple[int, ...]]]], totals: list[Any]) -> None:
    """Hand each waiting settle its slice of the script's totals."""
    at = 0
    for _, count, future in settles:
        if not future.done():
            future.set_result(tuple(int(v) for v in totals[at : at + count]))
        at += count


def _fail(settles: list[tuple[list[str], int, asyncio.Future[tuple[int, ...]]]], exc: BaseException) -> None:
    error = exc if isinstance(exc, CounterStoreUnavailable) else CounterStoreUnavailable(f"settling failed: {exc!r}")
    for _, _, future in settles:
        if not future.done():
            future.set_exception(error)


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
        settle_delay_s: float = 0.002,
    ) -> None:
        self.url = url
        self.settle_delay_s = settle_delay_s
        # Settles wait here to ride along with the next reservation (one round trip
        # per request instead of two), or are flushed together after settle_delay_s.
        self._settles: list[tuple[list[str], int, asyncio.Future[tuple[int, ...]]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._next_sweep = 0.0
        self.prefix = prefix
        self.clock = clock
        self.timeout_s = timeout_s
        # one pipelined connection: every caller shares it, no pool checkout per command
        self.connection = RedisConnection(url, timeout_s=timeout_s)
        self._shas: dict[str, str] = {}

    async def start(self) -> None:
        for name, script in (("reserve", RESERVE), ("settle", SETTLE), ("read", READ), ("add", ADD)):
            self._shas[name] = await self._guard(self.connection.execute("SCRIPT", "LOAD", script))

    async def aclose(self) -> None:
        await self._flush(self._take_settles())
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self.connection.aclose()

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisUnavailable as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisCommandError as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc

    async def _run(self, name: str, script: str, args: list[Any]) -> Any:
        sha = self._shas.get(name)
        try:
            if sha is None:
                raise RedisCommandError("NOSCRIPT not loaded")
            return await self.connection.execute("EVALSHA", sha, 0, *args)
        except RedisCommandError as exc:
            if not exc.no_script:
                raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc
        except RedisUnavailable as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        # Redis restarted (or SCRIPT FLUSH): load again once
        self._shas[name] = await self._guard(self.connection.execute("SCRIPT", "LOAD", script))
        return await self._guard(self.connection.execute("EVALSHA", self._shas[name], 0, *args))

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        now = self.clock()
        p = self.prefix
        settles = self._take_settles()
        groups = [arg for group, _, _ in settles for arg in group]
        sweep = now >= self._next_sweep  # expired reservations are looked for at most once a second
        if sweep:
            self._next_sweep = now + 1.0
        args: list[Any] = [p, reservation_id, repr(now), repr(now + ttl_s), "1" if sweep else "0", len(groups), *groups]
        for charge in charges:
            head = [_relative(p, charge.key), str(charge.amount), "-1" if charge.limit is None else str(charge.limit), str(charge.ttl_s)]
            if not (len(charge.window) == 1 and charge.window[0] == charge.key):
                head += _window(p, charge.window)
            args.append(_NUL.join(head))
        try:
            result = await self._run("reserve", RESERVE, args)
        except BaseException as exc:
            _fail(settles, exc)
            raise
        size = int(result[0])
        answer = result[1 : 1 + size]
        _resolve(settles, result[1 + size :])
        if answer[0] == 1:
            return Admission(True, tuple(int(v) for v in answer[1:]))
        refused = int(answer[1])
        return Admission(False, (0,) * refused + (int(answer[2]),), refused)

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        p = self.prefix
        sent: list[str] = []
        positions: list[int] = []  # which charges travel (the others return 0)
        for index, (charge, amount) in enumerate(zip(charges, actual)):
            if amount == charge.amount and not charge.report:
                continue  # nothing changes and nothing to report: a request count, a block check
            head = [_relative(p, charge.key), str(charge.amount), str(amount), str(charge.ttl_s)]
            if charge.report:
                head += _window(p, charge.window)
            sent.append(_NUL.join(head))
            positions.append(index)
        group: list[str] = [reservation_id, str(len(sent)), *sent]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self._settles.append((group, len(sent), future))
        if self._flush_timer is None:
            self._flush_timer = loop.call_later(self.settle_delay_s, self._flush_soon)
        totals = await future
        out = [0] * len(charges)
        for index, value in zip(positions, totals):
            out[index] = value
        return tuple(out)

    def _take_settles(self) -> list[tuple[list[str], int, asyncio.Future[tuple[int, ...]]]]:
        settles, self._settles = self._settles, []
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        return settles

    def _flush_soon(self) -> None:
        self._flush_timer = None
        task = asyncio.ensure_future(self._flush(self._take_settles()))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, settles: list[tuple[list[str], int, asyncio.Future[tuple[int, ...]]]]) -> None:
        """Send waiting settles on their own (no reservation came along to carry them)."""
        if not settles:
            return
        args: list[Any] = [self.prefix, *(arg for group, _, _ in settles for arg in group)]
        try:
            result = await self._run("settle", SETTLE, args)
        except BaseException as exc:
            _fail(settles, exc)
            return
        _resolve(settles, result)

    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        if not windows:
            return []
        p = self.prefix
        args: list[Any] = [p, *(_NUL.join(_window(p, window)) for window in windows)]
        result = await self._run("read", READ, args)
        return [int(v) for v in result]

    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        return int(await self._run("add", ADD, [key, amount, ttl_s]))

    async def claim(self, key: str, ttl_s: int) -> bool:
        return await self._guard(self.connection.execute("SET", key, "1", "NX", "EX", max(1, ttl_s))) is not None

    async def exists(self, key: str) -> bool:
        return bool(await self._guard(self.connection.execute("EXISTS", key)))
