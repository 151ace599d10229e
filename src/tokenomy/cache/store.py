"""Where answers live: the ``AnswerStore`` contract and its two implementations.

``MemoryAnswerStore`` is a bounded LRU with TTL inside the process (the
default); ``RedisAnswerStore`` is shared by every replica. Both are keyed by the
exact cache key (see ``keys.py``); the semantic index points at the same keys,
so an answer is stored once whichever tier finds it.

Invalidation works the same on both: by entry (key), by namespace, by tag and by
age. Expired entries are dropped lazily on read and by the LRU bound.
"""

from __future__ import annotations

import abc
import time
from collections import OrderedDict
from typing import Any

from tokenomy.cache.answers import CachedAnswer


class AnswerStore(abc.ABC):
    """Cached answers by key."""

    @abc.abstractmethod
    async def get(self, key: str) -> CachedAnswer | None:
        """The live entry for ``key`` (``None`` if absent or expired); a read refreshes its LRU rank."""

    @abc.abstractmethod
    async def put(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> None:
        """Store (or replace) an entry; ``ttl_s=None`` keeps it until evicted."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Remove one entry; ``True`` if it existed."""

    @abc.abstractmethod
    async def invalidate(
        self, *, namespace: str | None = None, tag: str | None = None, older_than_s: float | None = None
    ) -> int:
        """Remove every entry matching all the given filters; returns how many went."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Entries held (expired ones may still be counted until they are read or evicted)."""

    async def start(self) -> None:
        """Connect (shared stores)."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryAnswerStore(AnswerStore):
    """In-process LRU bounded by ``max_entries``, with per-entry expiry."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[CachedAnswer, float | None]] = OrderedDict()

    async def get(self, key: str) -> CachedAnswer | None:
        found = self._entries.get(key)
        if found is None:
            return None
        answer, expires = found
        if expires is not None and expires <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> None:
        expires = time.time() + ttl_s if ttl_s else None
        self._entries[key] = (answer, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def delete(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    async def invalidate(
        self, *, namespace: str | None = None, tag: str | None = None, older_than_s: float | None = None
    ) -> int:
        now = time.time()
        doomed = [
            key
            for key, (answer, _) in self._entries.items()
            if _matches(answer, namespace, tag, older_than_s, now)
        ]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def count(self) -> int:
        return len(self._entries)


def _matches(
    answer: CachedAnswer, namespace: str | None, tag: str | None, older_than_s: float | None, now: float
) -> bool:
    if namespace is not None and answer.namespace != namespace:
        return False
    if tag is not None and tag not in answer.tags:
        return False
    if older_than_s is not None and now - answer.created_at < older_than_s:
        return False
    return True


class RedisAnswerStore(AnswerStore):
    """Answers in Redis, shared by replicas.

    Layout under ``prefix``: ``{p}:a:{key}`` the entry (with Redis TTL),
    ``{p}:age`` a sorted set key → created_at (LRU-ish bound and age
    invalidation), ``{p}:ns:{namespace}`` and ``{p}:tag:{tag}`` sets of keys.
    Redis' own ``maxmemory-policy allkeys-lru`` is the real memory bound; the
    ``max_entries`` bound trims the oldest entries on write.
    """

    def __init__(self, url: str, prefix: str = "tokenomy:cache", max_entries: int = 1_000_000, client: Any = None):
        self.url = url
        self.prefix = prefix
        self.max_entries = max_entries
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis.asyncio as redis

            self._client = redis.Redis.from_url(self.url)
        return self._client

    def _k(self, key: str) -> str:
        return f"{self.prefix}:a:{key}"

    async def get(self, key: str) -> CachedAnswer | None:
        data = await self.client.get(self._k(key))
        return None if data is None else CachedAnswer.loads(data)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> None:
        pipe = self.client.pipeline(transaction=False)
        if ttl_s:
            pipe.set(self._k(key), answer.dumps(), px=int(ttl_s * 1000))
        else:
            pipe.set(self._k(key), answer.dumps())
        pipe.zadd(f"{self.prefix}:age", {key: answer.created_at})
        pipe.sadd(f"{self.prefix}:ns:{answer.namespace}", key)
        for tag in answer.tags:
            pipe.sadd(f"{self.prefix}:tag:{tag}", key)
        pipe.zcard(f"{self.prefix}:age")
        results = await pipe.execute()
        size = int(results[-1])
        if size > self.max_entries:
            oldest = await self.client.zrange(f"{self.prefix}:age", 0, size - self.max_entries - 1)
            if oldest:
                await self._remove([k.decode() if isinstance(k, bytes) else k for k in oldest])

    async def _remove(self, keys: list[str]) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(*[self._k(k) for k in keys])
        pipe.zrem(f"{self.prefix}:age", *keys)
        results = await pipe.execute()
        return int(results[0])

    async def delete(self, key: str) -> bool:
        return await self._remove([key]) > 0

    async def invalidate(
        self, *, namespace: str | None = None, tag: str | None = None, older_than_s: float | None = None
    ) -> int:
        sets: list[set[str]] = []
        if namespace is not None:
            sets.append(_decode(await self.client.smembers(f"{self.prefix}:ns:{namespace}")))
        if tag is not None:
            sets.append(_decode(await self.client.smembers(f"{self.prefix}:tag:{tag}")))
        if older_than_s is not None:
            cutoff = time.time() - older_than_s
            sets.append(_decode(await self.client.zrangebyscore(f"{self.prefix}:age", "-inf", cutoff)))
        if not sets:
            sets.append(_decode(await self.client.zrange(f"{self.prefix}:age", 0, -1)))
        keys = set.intersection(*sets)
        removed = await self._remove(sorted(keys))
        if namespace is not None and tag is None and older_than_s is None:
            await self.client.delete(f"{self.prefix}:ns:{namespace}")
        if tag is not None and namespace is None and older_than_s is None:
            await self.client.delete(f"{self.prefix}:tag:{tag}")
        return removed

    async def count(self) -> int:
        return int(await self.client.zcard(f"{self.prefix}:age"))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _decode(values: Any) -> set[str]:
    return {v.decode() if isinstance(v, bytes) else v for v in values}
