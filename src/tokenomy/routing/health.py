"""Deployment health: a circuit breaker per deployment, in-process or shared through Redis.

A deployment's circuit *opens* after ``failures`` consecutive failures (timeouts,
connection errors, 5xx) and stays open for ``cooldown_s``; a 429 opens it for
the upstream's Retry-After. While open, the deployment is skipped (the next
healthy deployment or model in the chain serves). When the cooldown expires the
circuit closes again and the next request probes the deployment; one failure
re-opens it only once ``failures`` is reached again.

``MemoryHealth`` keeps the state in this process. ``RedisHealth`` shares it
across replicas: ``<prefix>open:<key>`` (a key with a TTL = the cooldown) and
``<prefix>fail:<key>`` (a counter, expiring after the cooldown so stale
failures are forgotten). A replica that sees an open circuit skips the
deployment without trying it. Reading the state is one ``MGET`` per call; while
Redis is unreachable each replica falls back to its own in-process state.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Iterable

from tokenomy.providers.base import Deployment

log = logging.getLogger(__name__)


def deployment_key(deployment: Deployment) -> str:
    """Stable identity of a deployment across replicas (same config → same key)."""
    return f"{deployment.name}|{deployment.provider}|{deployment.upstream_model}|{deployment.base_url or ''}"


class DeploymentHealth(abc.ABC):
    """Which deployments are cooling down, and the events that change it."""

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s

    @abc.abstractmethod
    async def open_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` whose circuit is open now."""

    @abc.abstractmethod
    async def record_failure(self, key: str) -> bool:
        """Count a failure; return True if the circuit is open after it."""

    @abc.abstractmethod
    async def record_success(self, key: str) -> None:
        """Reset the failure count."""

    @abc.abstractmethod
    async def trip(self, key: str, seconds: float) -> None:
        """Open the circuit for ``seconds`` now (429 with Retry-After)."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryHealth(DeploymentHealth):
    """Circuit state in this process only."""

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0, clock=time.monotonic) -> None:
        super().__init__(failures, cooldown_s)
        self._clock = clock
        self._open_until: dict[str, float] = {}
        self._fails: dict[str, int] = {}

    async def open_keys(self, keys: Iterable[str]) -> set[str]:
        if not self._open_until:
            return set()
        now = self._clock()
        out = set()
        for key in keys:
            until = self._open_until.get(key)
            if until is None:
                continue
            if until > now:
                out.add(key)
            else:
                del self._open_until[key]
        return out

    async def record_failure(self, key: str) -> bool:
        count = self._fails.get(key, 0) + 1
        if count >= self.failures:
            self._fails.pop(key, None)
            self._open_until[key] = self._clock() + self.cooldown_s
            log.warning("circuit open for %s (%d failures), cooling down %.1fs", key, count, self.cooldown_s)
            return True
        self._fails[key] = count
        return False

    async def record_success(self, key: str) -> None:
        self._fails.pop(key, None)

    async def trip(self, key: str, seconds: float) -> None:
        if seconds > 0:
            self._open_until[key] = max(self._open_until.get(key, 0.0), self._clock() + seconds)


# INCR the failure counter (with a TTL); at the threshold open the circuit for the cooldown.
_FAIL_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if n >= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  return 1
end
return 0
"""


class RedisHealth(DeploymentHealth):
    """Circuit state shared by every replica through Redis (``redis.asyncio``).

    When Redis cannot be reached, this replica keeps its own state in memory
    (``MemoryHealth``) and does not ask Redis again for ``retry_redis_s``: a dead
    Redis must not add its timeout to every request.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "tokenomy:health:",
        failures: int = 3,
        cooldown_s: float = 30.0,
        *,
        timeout_s: float = 0.25,
        retry_redis_s: float = 5.0,
    ) -> None:
        super().__init__(failures, cooldown_s)
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._fail = self._redis.register_script(_FAIL_SCRIPT)
        self._local = MemoryHealth(failures, cooldown_s)
        self._retry_redis_s = retry_redis_s
        self._redis_down_until = 0.0

    def _redis_ok(self) -> bool:
        return time.monotonic() >= self._redis_down_until

    def _redis_failed(self, what: str, exc: Exception) -> None:
        self._redis_down_until = time.monotonic() + self._retry_redis_s
        log.warning("health state in Redis unavailable (%s: %s); in-process for %.0fs", what, exc, self._retry_redis_s)

    def _open(self, key: str) -> str:
        return f"{self.prefix}open:{key}"

    async def open_keys(self, keys: Iterable[str]) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        local = await self._local.open_keys(keys)
        if not self._redis_ok():
            return local
        try:
            values = await self._redis.mget([self._open(k) for k in keys])
        except Exception as exc:  # never block traffic on our own bookkeeping
            self._redis_failed("read", exc)
            return local
        return local | {k for k, v in zip(keys, values, strict=True) if v is not None}

    async def record_failure(self, key: str) -> bool:
        if not self._redis_ok():
            return await self._local.record_failure(key)
        ms = max(1, int(self.cooldown_s * 1000))
        try:
            opened = await self._fail(keys=[f"{self.prefix}fail:{key}", self._open(key)], args=[self.failures, ms])
        except Exception as exc:
            self._redis_failed("count a failure", exc)
            return await self._local.record_failure(key)
        if opened:
            log.warning("circuit open for %s (shared), cooling down %.1fs", key, self.cooldown_s)
        return bool(opened)

    async def record_success(self, key: str) -> None:
        await self._local.record_success(key)
        if not self._redis_ok():
            return
        try:
            await self._redis.delete(f"{self.prefix}fail:{key}")
        except Exception as exc:
            self._redis_failed("reset failures", exc)

    async def trip(self, key: str, seconds: float) -> None:
        if seconds <= 0:
            return
        if not self._redis_ok():
            await self._local.trip(key, seconds)
            return
        try:
            await self._redis.set(self._open(key), "1", px=max(1, int(seconds * 1000)))
        except Exception as exc:
            self._redis_failed("open a circuit", exc)
            await self._local.trip(key, seconds)

    async def aclose(self) -> None:
        await self._redis.aclose()
