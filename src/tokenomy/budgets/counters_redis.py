"""``CounterStore`` on Redis: every replica shares the same counters, atomically.

Each operation is one Lua script, so a reservation checks and increments all of
a call's counters (budgets of key, team, org…, rate limits, concurrency) in a
single round trip with no other client interleaving: two replicas can never
both take the last dollar. Each held reservation is one member of a sorted set
scored by its deadline; the member itself lists what it holds, so a settle
removes it (and learns whether it was still held) in one command, and
``reserve`` releases expired ones — a crashed replica's reservations come back
on their own.

Settles leave the request's path: ``settle_soon`` queues them and sends
everything queued in one event-loop turn as one script call, after the answer
has gone out; ``aclose`` sends what is still queued and waits for it.

The hot path runs on one pipelined connection (``store.redis_connection``):
``bench/budget_overhead.py`` showed a general-purpose client's pool and
timeouts costing more than the round trip. Arguments are flat (one ARGV per
field, full keys): splitting packed fields in Lua cost more Redis CPU than the
increments themselves, and with hiredis packing the command, sending more
arguments costs next to nothing.

Keys are passed in ARGV rather than KEYS because a call's counters are only
known at run time; that is fine on a single Redis (or Sentinel), not on Redis
Cluster (which would need every key in one hash slot).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokenomy.budgets.counters import Admission, Charge, CounterStore, CounterStoreUnavailable
from tokenomy.store.redis_connection import RedisCommandError, RedisConnection, RedisUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: How many expired reservations one ``reserve`` releases at most (keeps the script short).
SWEEP_BATCH = 16

#: Entries of the per-charge argument cache before it is cleared (windows change once a slot or period).
_ARGS_CACHE_LIMIT = 20_000

# Wire format of a charge (flat, one ARGV per field):
#   key, amount, limit (-1: none), ttl (0: forever), n, then n window keys.
# n = 0: the window is the key alone; n = -1: the charge is only counted, its
# total is neither read nor returned (reserve: unlimited charges that report
# nothing, such as runaway meters; settle: charges that report nothing).
# At settle, ``amount`` is the delta to apply if the reservation is still held
# (actual - reserved) and ``limit`` is the actual amount (applied in full when
# the reservation expired and was released).

# Reserve. ARGV: zset, member, now, deadline, sweep (1: release expired first), charges…
# Returns {1, total…} when admitted (0 for count-only charges); {0, refused index, total before} when not.
RESERVE = """
local zset, member, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[5] == '1' then
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, %d)) do
    -- the member: reservation id, then (key, amount) pairs, NUL-separated
    local f, at = {}, 1
    while true do
      local j = string.find(old, '\\0', at, true)
      if not j then f[#f + 1] = string.sub(old, at); break end
      f[#f + 1] = string.sub(old, at, j - 1)
      at = j + 1
    end
    for k = 2, #f - 1, 2 do redis.call('DECRBY', f[k], f[k + 1]) end
    redis.call('ZREM', zset, old)
  end
end
local last, totals, i = #ARGV, {1}, 6
while i <= last do
  local key, amount, limit, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4])
  local sum = 0
  if n == 0 then
    sum = tonumber(redis.call('GET', key) or '0')
  elseif n > 0 then
    for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 5, i + 4 + n))) do
      if v then sum = sum + tonumber(v) end
    end
  end
  if limit >= 0 and sum + amount > limit then return {0, #totals - 1, sum} end
  totals[#totals + 1] = n >= 0 and sum + amount or 0
  if n > 0 then i = i + 5 + n else i = i + 5 end
end
local held = false
i = 6
while i <= last do
  local amount, n = ARGV[i + 1], tonumber(ARGV[i + 4])
  if amount ~= '0' then
    local key, ttl = ARGV[i], ARGV[i + 3]
    -- a counter equal to what was just added is new: give it its lifetime once
    if redis.call('INCRBY', key, amount) == tonumber(amount) and ttl ~= '0' then redis.call('EXPIRE', key, ttl) end
    held = true
  end
  if n > 0 then i = i + 5 + n else i = i + 5 end
end
if held then redis.call('ZADD', zset, deadline, member) end
return totals
""" % SWEEP_BATCH

# Settle. ARGV: zset, then groups: member, number of charge arguments, charges…
# Returns the window total of every charge sent with n >= 0, in order.
SETTLE = """
local zset, out, i, last = ARGV[1], {}, 2, #ARGV
while i <= last do
  -- still held: apply actual - reserved; expired (and released by a sweep): apply actual in full
  local held = redis.call('ZREM', zset, ARGV[i]) == 1
  local stop = i + 1 + tonumber(ARGV[i + 1])
  i = i + 2
  while i <= stop do
    local key, n = ARGV[i], tonumber(ARGV[i + 4])
    local delta = held and ARGV[i + 1] or ARGV[i + 2]
    if delta ~= '0' then
      local ttl = ARGV[i + 3]
      if redis.call('INCRBY', key, delta) == tonumber(delta) and ttl ~= '0' then redis.call('EXPIRE', key, ttl) end
    end
    if n == 0 then
      out[#out + 1] = tonumber(redis.call('GET', key) or '0')
    elseif n > 0 then
      local sum = 0
      for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 5, i + 4 + n))) do
        if v then sum = sum + tonumber(v) end
      end
      out[#out + 1] = sum
    end
    if n > 0 then i = i + 5 + n else i = i + 5 end
  end
end
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

# ARGV: windows, each as n, then n keys
READ = """
local out, i = {}, 1
while i <= #ARGV do
  local n, sum = tonumber(ARGV[i]), 0
  if n > 0 then
    for _, v in ipairs(redis.call('MGET', unpack(ARGV, i + 1, i + n))) do
      if v then sum = sum + tonumber(v) end
    end
  end
  out[#out + 1] = sum
  i = i + 1 + n
end
return out
"""


class _Settle:
    """One queued settle: its script arguments and who waits for its totals."""

    __slots__ = ("args", "positions", "size", "future")

    def __init__(self, args: list[Any], positions: list[int], size: int, future: asyncio.Future[tuple[int, ...]]) -> None:
        self.args = args
        self.positions = positions  # which charges report a total (the others get 0)
        self.size = size
        self.future = future


def member_of(reservation_id: str, charges: Sequence[Charge]) -> str:
    """The sorted-set member of a reservation: its id and what it holds (the same at reserve and settle)."""
    held = [f"{charge.key}\0{charge.amount}" for charge in charges if charge.amount]
    return "\0".join((reservation_id, *held))


class RedisCounterStore(CounterStore):
    """Counters in Redis under ``prefix`` (one prefix per gateway deployment, or per test)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tokenomy:",
        clock: Clock = time.time,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self.timeout_s = timeout_s
        # one pipelined connection: every caller shares it, no pool checkout per command
        self.connection = RedisConnection(url, timeout_s=timeout_s)
        self._zset = f"{prefix}resv"
        self._shas: dict[str, str] = {}
        self._next_sweep = 0.0
        # the fixed arguments of a charge (limit, ttl, window), by (limit, ttl, window, report)
        self._tails: dict[tuple[int | None, int, tuple[str, ...], bool], tuple[Any, ...]] = {}
        self._queued: list[_Settle] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        for name, script in (("reserve", RESERVE), ("settle", SETTLE), ("read", READ), ("add", ADD)):
            self._shas[name] = await self._guard(self.connection.execute("SCRIPT", "LOAD", script))

    async def aclose(self) -> None:
        """Send the settles still queued, wait for every one in flight, then close the connection."""
        self._flush()
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await self.connection.aclose()

    # plumbing -------------------------------------------------------------------

    async def _guard(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisUnavailable as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        except RedisCommandError as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc

    async def _run(self, name: str, script: str, args: list[Any]) -> Any:
        sha = self._shas.get(name)
        if sha is not None:
            try:
                return await self.connection.execute("EVALSHA", sha, 0, *args)
            except RedisCommandError as exc:
                if not exc.no_script:
                    raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc
            except RedisUnavailable as exc:
                raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        # not loaded yet, or Redis restarted (or SCRIPT FLUSH): load again once
        self._shas[name] = await self._guard(self.connection.execute("SCRIPT", "LOAD", script))
        return await self._guard(self.connection.execute("EVALSHA", self._shas[name], 0, *args))

    def _tail(self, charge: Charge, report: bool) -> tuple[Any, ...]:
        """``(limit, ttl, n, window keys…)`` of a charge: built once per window, reused by every call."""
        cache_key = (charge.limit, charge.ttl_s, charge.window, report)
        tail = self._tails.get(cache_key)
        if tail is None:
            if not report:
                tail = (-1 if charge.limit is None else charge.limit, charge.ttl_s, -1)
            elif len(charge.window) == 1 and charge.window[0] == charge.key:
                tail = (-1 if charge.limit is None else charge.limit, charge.ttl_s, 0)
            else:
                tail = (-1 if charge.limit is None else charge.limit, charge.ttl_s, len(charge.window), *charge.window)
            if len(self._tails) >= _ARGS_CACHE_LIMIT:
                self._tails.clear()
            self._tails[cache_key] = tail
        return tail

    # operations -----------------------------------------------------------------

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        now = self.clock()
        sweep = now >= self._next_sweep  # expired reservations are looked for at most once a second
        if sweep:
            self._next_sweep = now + 1.0
        args: list[Any] = [self._zset, member_of(reservation_id, charges), now, now + ttl_s, 1 if sweep else 0]
        for charge in charges:
            # an unlimited charge that reports nothing (a meter) is only counted, never read
            args.append(charge.key)
            args.append(charge.amount)
            args.extend(self._tail(charge, charge.report or charge.limit is not None))
        answer = await self._run("reserve", RESERVE, args)
        if answer[0] == 1:
            return Admission(True, tuple(answer[1:]))
        refused = answer[1]
        return Admission(False, (0,) * refused + (answer[2],), refused)

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        return await self.settle_soon(reservation_id, charges, actual)

    def settle_soon(
        self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]
    ) -> asyncio.Future[tuple[int, ...]]:
        """Queue the settle; every settle queued in this event-loop turn goes out as one script call."""
        args: list[Any] = [member_of(reservation_id, charges), 0]
        positions: list[int] = []
        for index, (charge, amount) in enumerate(zip(charges, actual)):
            if amount == charge.amount and not charge.report:
                continue  # nothing changes and nothing to report: a request count, a block check
            args.append(charge.key)
            args.append(amount - charge.amount)
            args.append(amount)
            args.extend(self._tail(charge, charge.report)[1:])
            if charge.report:
                positions.append(index)
        args[1] = len(args) - 2
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self._queued.append(_Settle(args, positions, len(charges), future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Send every queued settle as one script call (no task: the reply resolves them)."""
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        if not queued:
            return
        args: list[Any] = [self._zset]
        for settle in queued:
            args.extend(settle.args)
        sha = self._shas.get("settle")
        sent = self.connection.send("EVALSHA", sha, 0, *args) if sha is not None else None
        if sent is None:  # not connected (or scripts not loaded): the slow path connects first
            self._track(asyncio.ensure_future(self._send_slowly(queued, args)))
            return
        self._track(sent)
        sent.add_done_callback(lambda reply: self._on_reply(queued, args, reply))

    def _on_reply(self, queued: list[_Settle], args: list[Any], reply: asyncio.Future[Any]) -> None:
        if reply.cancelled():
            _fail(queued, CounterStoreUnavailable("settling was cancelled"))
            return
        exc = reply.exception()
        if exc is None:
            _resolve(queued, reply.result())
        elif isinstance(exc, RedisCommandError) and exc.no_script:
            self._track(asyncio.ensure_future(self._send_slowly(queued, args)))
        else:
            _fail(queued, exc)

    async def _send_slowly(self, queued: list[_Settle], args: list[Any]) -> None:
        try:
            totals = await self._run("settle", SETTLE, args)
        except BaseException as exc:  # handed to every waiting settle (logged by the enforcer)
            _fail(queued, exc)
            return
        _resolve(queued, totals)

    def _track(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)

    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        if not windows:
            return []
        args: list[Any] = []
        for window in windows:
            args.append(len(window))
            args.extend(window)
        return list(await self._run("read", READ, args))

    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        return int(await self._run("add", ADD, [key, amount, ttl_s]))

    async def claim(self, key: str, ttl_s: int) -> bool:
        return await self._guard(self.connection.execute("SET", key, "1", "NX", "EX", max(1, ttl_s))) is not None

    async def exists(self, key: str) -> bool:
        return bool(await self._guard(self.connection.execute("EXISTS", key)))


def _resolve(queued: list[_Settle], totals: list[Any]) -> None:
    """Hand each waiting settle its slice of the script's totals."""
    at = 0
    for settle in queued:
        count = len(settle.positions)
        if not settle.future.done():
            out = [0] * settle.size
            for index, value in zip(settle.positions, totals[at : at + count]):
                out[index] = value
            settle.future.set_result(tuple(out))
        at += count


def _fail(queued: list[_Settle], exc: BaseException) -> None:
    if isinstance(exc, CounterStoreUnavailable):
        error = exc
    elif isinstance(exc, RedisUnavailable):
        error = CounterStoreUnavailable(f"Redis is unreachable: {exc}")
    else:
        error = CounterStoreUnavailable(f"settling failed: {exc!r}")
    for settle in queued:
        if not settle.future.done():
            settle.future.set_exception(error)
