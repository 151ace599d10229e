"""``CounterStore`` on Redis: every replica shares the same counters, atomically.

Each operation is one Lua script (``budgets/redis_scripts.py``), so a
reservation checks and increments all of a call's counters (budgets of key,
team, org…, rate limits, concurrency) in a single round trip with no other
client interleaving: two replicas can never both take the last dollar. Each
held reservation is one member of a sorted set scored by its deadline; the
member itself lists what it holds, so a settle removes it (and learns whether
it was still held) in one command, and ``reserve`` releases expired ones — a
crashed replica's reservations come back on their own.

Settles leave the request's path: ``settle_soon`` queues them and sends
those queued within ``settle_delay_s`` as one script call, after the answers
have gone out; ``aclose`` sends what is still queued and waits for it.

Measured with ``bench/budget_overhead.py`` (docs/budgets.md), each choice here:
the hot path runs on one pipelined connection (``store.redis_connection``),
because a general-purpose client's pool and per-read timeouts cost more than
the round trip; arguments are flat (one ARGV per field, full keys), because
splitting packed fields in Lua cost more Redis CPU than the increments
themselves; and a command is joined from parts encoded once per window (a
charge's key, limit, lifetime and window keys), because packing some sixty
arguments per call cost more than the rest of the client side together.

Keys are passed in ARGV rather than KEYS because a call's counters are only
known at run time; that is fine on a single Redis (or Sentinel), not on Redis
Cluster (which would need every key in one hash slot).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokenomy.budgets.counters import Admission, Charge, CounterStore, CounterStoreUnavailable
from tokenomy.budgets.redis_scripts import ADD, READ, RESERVE, SETTLE
from tokenomy.store.redis_connection import RedisCommandError, RedisConnection, RedisUnavailable, bulk, packed

Clock = Callable[[], float]

#: Settles sent at once at most (a longer script would hold Redis up for the reservations behind it).
SETTLE_BATCH = 64

#: Entries of the per-charge argument cache before it is cleared (windows change once a slot or period).
_ARGS_CACHE_LIMIT = 20_000


class _Script:
    """A Lua script, and the encoded start of its ``EVALSHA`` call (a script's SHA1 is known in advance)."""

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.head = bulk("EVALSHA") + bulk(self.sha) + bulk(0)


_RESERVE = _Script("reserve", RESERVE)
_SETTLE = _Script("settle", SETTLE)
_READ = _Script("read", READ)
_ADD = _Script("add", ADD)
_SWEEP = (bulk(0), bulk(1))
#: small integers, encoded in advance (request counts, zero meters, most token counts)
_SMALL = tuple(bulk(i) for i in range(4096))


def _int(value: int) -> bytes:
    """``bulk(value)`` for an integer, faster."""
    if 0 <= value < 4096:
        return _SMALL[value]
    digits = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(digits), digits)


class _Settle:
    """One queued settle: what to send (encoded when it is sent) and who waits for its totals."""

    __slots__ = ("reservation_id", "charges", "actual", "positions", "future")

    def __init__(
        self,
        reservation_id: str,
        charges: Sequence[Charge],
        actual: Sequence[int],
        future: asyncio.Future[tuple[int, ...]],
    ) -> None:
        self.reservation_id = reservation_id
        self.charges = charges
        self.actual = actual
        self.positions: list[int] = []  # which charges report a total (the others get 0)
        self.future = future


class RedisCounterStore(CounterStore):
    """Counters in Redis under ``prefix`` (one prefix per gateway deployment, or per test)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tokenomy:",
        clock: Clock = time.time,
        timeout_s: float = 2.0,
        settle_delay_s: float = 0.005,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.clock = clock
        self.timeout_s = timeout_s
        #: how long a settle may wait for others to go out with (one script call for all)
        self.settle_delay_s = settle_delay_s
        # one pipelined connection: every caller shares it, no pool checkout per command
        self.connection = RedisConnection(url, timeout_s=timeout_s)
        self._zset = bulk(f"{prefix}resv")
        self._next_sweep = 0.0
        # a charge's fixed arguments, encoded: (key, limit, ttl, window, report) -> (bytes, count)
        self._reserve_parts: dict[tuple[str, int | None, int, tuple[str, ...], bool], tuple[bytes, int]] = {}
        self._settle_parts: dict[tuple[str, int, tuple[str, ...], bool], tuple[bytes, int]] = {}
        self._member_parts: dict[str, bytes] = {}
        self._queued: list[_Settle] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        for script in (_RESERVE, _SETTLE, _READ, _ADD):
            await self._load(script)

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

    async def _load(self, script: _Script) -> None:
        sha = await self._guard(self.connection.execute("SCRIPT", "LOAD", script.source))
        if sha.decode() != script.sha:  # cannot happen with a real Redis; would make every EVALSHA miss
            raise CounterStoreUnavailable(f"Redis at {self.url} named the {script.name} script {sha!r}, not {script.sha}")

    async def _call(self, script: _Script, command: bytes) -> Any:
        """Run an encoded ``EVALSHA`` of ``script``; load the script once if Redis does not have it."""
        try:
            return await self.connection.execute_packed(command)
        except RedisCommandError as exc:
            if not exc.no_script:
                raise CounterStoreUnavailable(f"Redis at {self.url} failed: {exc}") from exc
        except RedisUnavailable as exc:
            raise CounterStoreUnavailable(f"Redis at {self.url} is unreachable: {exc}") from exc
        # Redis restarted (or SCRIPT FLUSH): load again once; the SHA1, hence the command, stays the same
        await self._load(script)
        return await self._guard(self.connection.execute_packed(command))

    async def _run(self, script: _Script, args: list[Any]) -> Any:
        parts = [script.head, *(bulk(arg) for arg in args)]
        return await self._call(script, packed(len(parts) + 2, parts))

    def _reserve_part(self, charge: Charge, report: bool) -> tuple[bytes, int]:
        """``key, limit, ttl, n, window keys…`` of a charge, encoded once per window."""
        cache_key = (charge.key, charge.limit, charge.ttl_s, charge.window, report)
        part = self._reserve_parts.get(cache_key)
        if part is None:
            limit = -1 if charge.limit is None else charge.limit
            fields: list[Any] = [charge.key, limit, charge.ttl_s, *_window_fields(charge, report)]
            part = (b"".join(bulk(field) for field in fields), len(fields))
            if len(self._reserve_parts) >= _ARGS_CACHE_LIMIT:
                self._reserve_parts.clear()
            self._reserve_parts[cache_key] = part
        return part

    def _settle_part(self, charge: Charge) -> tuple[bytes, int]:
        """``key, ttl, n, window keys…`` of a charge at settle, encoded once per window."""
        cache_key = (charge.key, charge.ttl_s, charge.window, charge.report)
        part = self._settle_parts.get(cache_key)
        if part is None:
            fields: list[Any] = [charge.key, charge.ttl_s, *_window_fields(charge, charge.report)]
            part = (b"".join(bulk(field) for field in fields), len(fields))
            if len(self._settle_parts) >= _ARGS_CACHE_LIMIT:
                self._settle_parts.clear()
            self._settle_parts[cache_key] = part
        return part

    def _member(self, reservation_id: str, charges: Sequence[Charge]) -> bytes:
        """The sorted-set member of a reservation: its id and what it holds (the same at reserve and settle)."""
        names = self._member_parts
        pieces = [reservation_id.encode()]
        for charge in charges:
            if charge.amount:
                name = names.get(charge.key)
                if name is None:
                    if len(names) >= _ARGS_CACHE_LIMIT:
                        names.clear()
                    name = names[charge.key] = b"\0%s\0" % charge.key.encode()
                pieces.append(name)
                pieces.append(b"%d" % charge.amount)
        return b"".join(pieces)

    # operations -----------------------------------------------------------------

    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        now = self.clock()
        sweep = now >= self._next_sweep  # expired reservations are looked for at most once a second
        if sweep:
            self._next_sweep = now + 1.0
        parts = [_RESERVE.head, self._zset, bulk(self._member(reservation_id, charges)), bulk(now), bulk(now + ttl_s), _SWEEP[sweep]]
        argc = 8
        for charge in charges:
            # an unlimited charge that reports nothing (a meter) is only counted, never read
            part, count = self._reserve_part(charge, charge.report or charge.limit is not None)
            parts.append(_int(charge.amount))
            parts.append(part)
            argc += 1 + count
        answer = await self._call(_RESERVE, packed(argc, parts))
        if answer[0] == 1:
            return Admission(True, tuple(answer[1:]))
        refused = answer[1]
        return Admission(False, (0,) * refused + (answer[2],), refused)

    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        return await self.settle_soon(reservation_id, charges, actual)

    def settle_soon(
        self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]
    ) -> asyncio.Future[tuple[int, ...]]:
        """Queue the settle; the settles queued within ``settle_delay_s`` go out as one script call.

        Waiting a few milliseconds costs nothing a caller sees (the answer has
        gone) and only holds a call's worst case that much longer — the safe
        side; in exchange Redis runs one script for many settles instead of one
        each, and the reservations of the calls in between are not queued behind them.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, ...]] = loop.create_future()
        self._queued.append(_Settle(reservation_id, charges, actual, future))
        if len(self._queued) >= SETTLE_BATCH:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            if self.settle_delay_s > 0:
                self._timer = loop.call_later(self.settle_delay_s, self._flush)
            else:
                loop.call_soon(self._flush)
        return future

    def _encode(self, settle: _Settle, parts: list[bytes]) -> int:
        """Append a settle's group (member, argument count, charges) to ``parts``; return its argument count."""
        group: list[bytes] = []
        argc = 0
        for index, (charge, amount) in enumerate(zip(settle.charges, settle.actual)):
            if amount == charge.amount and not charge.report:
                continue  # nothing changes and nothing to report: a request count, a block check
            part, count = self._settle_part(charge)
            group.append(_int(amount - charge.amount))
            group.append(_int(amount))
            group.append(part)
            argc += 2 + count
            if charge.report:
                settle.positions.append(index)
        parts.append(bulk(self._member(settle.reservation_id, settle.charges)))
        parts.append(_int(argc))
        parts.extend(group)
        return argc + 2

    def _flush(self) -> None:
        """Send every queued settle as one script call (no task: the reply resolves them).

        The settles are encoded here, not when queued: this runs after the
        answers have gone, and once for the whole batch.
        """
        self._flush_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued = self._queued, []
        if not queued:
            return
        parts = [_SETTLE.head, self._zset]
        argc = 4
        for settle in queued:
            argc += self._encode(settle, parts)
        command = packed(argc, parts)
        sent = self.connection.send_packed(command)
        if sent is None:  # not connected: the slow path connects first
            self._track(asyncio.ensure_future(self._send_slowly(queued, command)))
            return
        self._track(sent)
        sent.add_done_callback(lambda reply: self._on_reply(queued, command, reply))

    def _on_reply(self, queued: list[_Settle], command: bytes, reply: asyncio.Future[Any]) -> None:
        if reply.cancelled():
            _fail(queued, CounterStoreUnavailable("settling was cancelled"))
            return
        exc = reply.exception()
        if exc is None:
            _resolve(queued, reply.result())
        elif isinstance(exc, RedisCommandError) and exc.no_script:
            self._track(asyncio.ensure_future(self._send_slowly(queued, command)))
        else:
            _fail(queued, exc)

    async def _send_slowly(self, queued: list[_Settle], command: bytes) -> None:
        try:
            totals = await self._call(_SETTLE, command)
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
        return list(await self._run(_READ, args))

    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        return int(await self._run(_ADD, [key, amount, ttl_s]))

    async def claim(self, key: str, ttl_s: int) -> bool:
        return await self._guard(self.connection.execute("SET", key, "1", "NX", "EX", max(1, ttl_s))) is not None

    async def exists(self, key: str) -> bool:
        return bool(await self._guard(self.connection.execute("EXISTS", key)))


def _window_fields(charge: Charge, report: bool) -> list[Any]:
    """``n, window keys…``: -1 (count only), 0 (the key alone) or the window's keys."""
    if not report:
        return [-1]
    if len(charge.window) == 1 and charge.window[0] == charge.key:
        return [0]
    return [len(charge.window), *charge.window]


def _resolve(queued: list[_Settle], totals: list[Any]) -> None:
    """Hand each waiting settle its slice of the script's totals."""
    at = 0
    for settle in queued:
        count = len(settle.positions)
        if not settle.future.done():
            out = [0] * len(settle.charges)
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
