"""Pacing a worker's upstream calls: at most N at once and T tokens a minute.

Bursts then wait in the queue instead of hitting the provider's rate limits;
upstream capacity stays busy at a steady rate rather than sized for peaks.
Tokens are estimated before a call (prompt + max output) and the bucket is
corrected with the real usage after.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, concurrency: int, tokens_per_minute: int | None = None) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self.tokens_per_minute = tokens_per_minute
        self._tokens = float(tokens_per_minute or 0)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        assert self.tokens_per_minute is not None
        self._tokens = min(
            float(self.tokens_per_minute), self._tokens + (now - self._stamp) * self.tokens_per_minute / 60.0
        )
        self._stamp = now

    async def acquire(self, estimated_tokens: int) -> None:
        await self._slots.acquire()
        if self.tokens_per_minute is None:
            return
        need = min(float(estimated_tokens), float(self.tokens_per_minute))
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= need
                    return
                await asyncio.sleep((need - self._tokens) * 60.0 / self.tokens_per_minute)

    def release(self, estimated_tokens: int, actual_tokens: int | None) -> None:
        if self.tokens_per_minute is not None and actual_tokens is not None:
            self._tokens += estimated_tokens - actual_tokens  # correct the estimate (may go negative)
        self._slots.release()
