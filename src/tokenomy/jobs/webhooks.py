"""Completion webhooks: signed with HMAC-SHA256, retried with backoff, outcome recorded.

Each delivery is a ``POST`` of the job object with::

    x-tokenomy-event-id: <job id>          (the same on every retry: receivers deduplicate on it)
    x-tokenomy-signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

Verify with ``verify_signature(secret, body, header)``: it recomputes the HMAC and
rejects timestamps older than ``tolerance_s`` (replays). A receiver answering
2xx has it; anything else (or no answer within the timeout) is retried up to
``max_attempts`` times, then the job's ``webhook_status`` becomes ``failed``. The
job's result is never touched by webhook failures: poll ``GET /v1/async/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-tokenomy-signature"
EVENT_ID_HEADER = "x-tokenomy-event-id"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``x-tokenomy-signature`` header value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_signature(secret: str, body: bytes, header: str, *, tolerance_s: float = 300.0) -> bool:
    """Whether ``header`` is a valid, recent signature of ``body`` under ``secret``."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        ts = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


@dataclass(slots=True)
class WebhookOutcome:
    delivered: bool
    attempts: int
    error: str | None


class WebhookSender:
    """Delivers one event with retries; one pooled HTTP session per worker."""

    def __init__(self, secret: str | None, *, max_attempts: int, backoff_s: float, timeout_s: float) -> None:
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, url: str, event_id: str, payload: dict[str, Any]) -> WebhookOutcome:
        if self.secret is None:
            return WebhookOutcome(False, 0, "jobs.webhook_secret is not set: webhooks are not sent unsigned")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        body = orjson.dumps(payload)
        error: str | None = None
        for attempt in range(1, self.max_attempts + 1):
            headers = {
                "content-type": "application/json",
                EVENT_ID_HEADER: event_id,
                SIGNATURE_HEADER: sign(self.secret, body),
            }
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
                    if 200 <= response.status < 300:
                        return WebhookOutcome(True, attempt, None)
                    error = f"HTTP {response.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("webhook %s for %s failed (attempt %d/%d): %s", url, event_id, attempt, self.max_attempts, error)
            if attempt < self.max_attempts:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
        return WebhookOutcome(False, self.max_attempts, error)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
