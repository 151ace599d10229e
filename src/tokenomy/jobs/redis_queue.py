"""``JobQueue`` on Redis Streams consumer groups: the shared queue.

Keys (``prefix`` lets several deployments share one Redis):

- ``{prefix}:q:{class}`` — one stream per traffic class (``async`` before ``batch``),
  read by the consumer group ``workers``; each message is ``{job_id, base}``.
- ``{prefix}:delayed`` — a sorted set of retries waiting for their time
  (score = when); any consumer moves the due ones into their stream (Lua, atomic).
- ``{prefix}:dead`` — a stream of dead letters ``{job_id, class, reason}``.

The visibility timeout is the consumer group's pending-entries list: a message
read with ``XREADGROUP`` stays pending until ``XACK``; ``XAUTOCLAIM`` hands
entries idle longer than the timeout to a live consumer (a dead worker's jobs
come back), and a heartbeat ``XCLAIM … JUSTID`` by the owner resets the idle
time of a long job. Acked messages are also ``XDEL``-ed so streams stay short.
``base`` carries the attempts a message had before a retry re-added it, so
``Delivery.attempt`` counts every execution.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from tokenomy.jobs.queue import QUEUE_CLASSES, DeadLetter, Delivery, JobQueue, QueueError

GROUP = "workers"

# Move due retries from the delayed set into their streams.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 200)
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local cls, job, base = string.match(member, '^([^|]*)|([^|]*)|([^|]*)|')
  redis.call('XADD', ARGV[2] .. cls, '*', 'job_id', job, 'base', base)
end
return #due
"""

# Reset the idle time of an entry only if this consumer still owns it.
_EXTEND = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamQueue(JobQueue):
    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "tokenomy",
        visibility_timeout_s: float = 60.0,
        client: aioredis.Redis | None = None,
        max_connections: int = 64,
    ) -> None:
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self.visibility_timeout_s = visibility_timeout_s
        self._client = client
        self._streams = {cls: f"{prefix}:q:{cls}" for cls in QUEUE_CLASSES}
        self._class_of = {key: cls for cls, key in self._streams.items()}
        self._delayed = f"{prefix}:delayed"
        self._dead = f"{prefix}:dead"
        self._promote: Any = None
        self._extend: Any = None
        self._last_reclaim = 0.0

    @property
    def redis(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisStreamQueue.start() has not been called")
        return self._client

    async def start(self) -> None:
        if self._client is None:
            # A blocking pool: a burst of submissions waits for a free connection
            # instead of failing with "Too many connections".
            pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=self.max_connections, timeout=30)
            self._client = aioredis.Redis(connection_pool=pool)
        try:
            for stream in self._streams.values():
                try:
                    await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
        except RedisError as exc:
            raise QueueError(f"cannot reach the job queue at {self.url}: {exc}") from exc
        self._promote = self.redis.register_script(_PROMOTE)
        self._extend = self.redis.register_script(_EXTEND)

    async def enqueue(self, job_id: str, traffic_class: str = "async", *, delay_s: float = 0.0) -> None:
        await self._add(job_id, traffic_class, 0, delay_s)

    async def _add(self, job_id: str, traffic_class: str, base: int, delay_s: float, pipe: Any = None) -> None:
        cls = traffic_class if traffic_class in self._streams else QUEUE_CLASSES[0]
        target = pipe if pipe is not None else self.redis
        if delay_s > 0:
            member = f"{cls}|{job_id}|{base}|{uuid.uuid4().hex[:8]}"
            await _maybe(target.zadd(self._delayed, {member: time.time() + delay_s}))
        else:
            await _maybe(target.xadd(self._streams[cls], {"job_id": job_id, "base": str(base)}))

    async def receive(self, consumer: str, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        try:
            await self._promote(keys=[self._delayed], args=[time.time(), f"{self.prefix}:q:"])
            deliveries = await self._reclaim(consumer, max_messages)
            if deliveries:
                return deliveries
            block = int(wait_s * 1000) if wait_s > 0 else None
            reply = await self.redis.xreadgroup(
                GROUP, consumer, {stream: ">" for stream in self._streams.values()}, count=max_messages, block=block
            )
        except RedisError as exc:
            raise QueueError(f"job queue receive failed: {exc}") from exc
        out: list[Delivery] = []
        for stream, messages in reply or ():
            stream_key = _text(stream)
            for msg_id, fields in messages:
                out.append(self._delivery(stream_key, msg_id, fields, consumer, delivered=1))
        out.sort(key=lambda d: QUEUE_CLASSES.index(d.traffic_class))
        return out[: max(max_messages, 1)] if len(out) > max_messages else out

    async def _reclaim(self, consumer: str, max_messages: int) -> list[Delivery]:
        """Entries idle past the visibility timeout (their consumer died): ours now."""
        now = time.monotonic()
        if now - self._last_reclaim < min(self.visibility_timeout_s / 4, 1.0):
            return []
        self._last_reclaim = now
        min_idle = int(self.visibility_timeout_s * 1000)
        out: list[Delivery] = []
        for stream in self._streams.values():
            reply = await self.redis.xautoclaim(stream, GROUP, consumer, min_idle, "0-0", count=max_messages)
            for msg_id, fields in reply[1]:
                if not fields:
                    continue
                pending = await self.redis.xpending_range(stream, GROUP, msg_id, msg_id, 1)
                delivered = int(pending[0]["times_delivered"]) if pending else 2
                out.append(self._delivery(stream, msg_id, fields, consumer, delivered=delivered))
            if len(out) >= max_messages:
                break
        return out

    def _delivery(self, stream: str, msg_id: Any, fields: dict[Any, Any], consumer: str, delivered: int) -> Delivery:
        values = {_text(k): _text(v) for k, v in fields.items()}
        base = int(values.get("base") or 0)
        return Delivery(
            job_id=values["job_id"],
            traffic_class=self._class_of[stream],
            attempt=base + delivered,
            receipt=f"{stream}|{_text(msg_id)}|{consumer}",
        )

    @staticmethod
    def _parts(delivery: Delivery) -> tuple[str, str, str]:
        stream, msg_id, consumer = delivery.receipt.split("|", 2)
        return stream, msg_id, consumer

    async def extend(self, delivery: Delivery) -> bool:
        stream, msg_id, consumer = self._parts(delivery)
        try:
            return bool(await self._extend(keys=[stream], args=[GROUP, msg_id, consumer]))
        except RedisError as exc:
            raise QueueError(f"job queue extend failed: {exc}") from exc

    async def ack(self, delivery: Delivery) -> None:
        stream, msg_id, _ = self._parts(delivery)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, msg_id)
                pipe.xdel(stream, msg_id)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"job queue ack failed: {exc}") from exc

    async def retry(self, delivery: Delivery, delay_s: float) -> None:
        stream, msg_id, _ = self._parts(delivery)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, msg_id)
                pipe.xdel(stream, msg_id)
                await self._add(delivery.job_id, delivery.traffic_class, delivery.attempt, max(delay_s, 0.001), pipe)
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"job queue retry failed: {exc}") from exc

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        stream, msg_id, _ = self._parts(delivery)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, msg_id)
                pipe.xdel(stream, msg_id)
                pipe.xadd(
                    self._dead, {"job_id": delivery.job_id, "class": delivery.traffic_class, "reason": reason[:2000]}
                )
                await pipe.execute()
        except RedisError as exc:
            raise QueueError(f"job queue dead-letter failed: {exc}") from exc

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        entries = await self.redis.xrange(self._dead, count=limit)
        out = []
        for _, fields in entries:
            values = {_text(k): _text(v) for k, v in fields.items()}
            out.append(DeadLetter(values["job_id"], values.get("class", "async"), values.get("reason", "")))
        return out

    async def depth(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in self._streams.values():
                pipe.xlen(stream)
            pipe.zcard(self._delayed)
            counts = await pipe.execute()
        return int(sum(counts))

    async def delete_keys(self) -> None:
        """Remove every key of this queue (tests, ``prefix`` teardown)."""
        await self.redis.delete(*self._streams.values(), self._delayed, self._dead)

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


async def _maybe(result: Any) -> Any:
    """Await a client call; a pipeline's queued call returns the pipeline, not an awaitable."""
    if hasattr(result, "__await__"):
        return await result
    return result
