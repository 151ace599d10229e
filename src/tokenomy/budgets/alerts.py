"""Budget alerts and their delivery: signed JSON webhooks, Slack-compatible webhooks, the log.

Alerts are raised on the request path but delivered off it: ``publish`` puts
the alert on a queue and returns; a background task sends it to every channel,
retrying failed webhooks with exponential backoff. De-duplication ("once per
threshold per period") happens before, in the counter store, so it holds
across replicas.

JSON webhooks are signed like Stripe's: header
``x-tokenomy-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
Receivers check it with ``verify_signature`` (or the same three lines in any
language) and reject old timestamps to stop replays.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from tokenomy.budgets import metrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-tokenomy-signature"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something a human should hear about: a budget threshold crossed, a runaway spend rate."""

    kind: str  # budget_threshold | runaway
    scope: str
    subject: str
    message: str
    at: float
    budget_id: str | None = None
    threshold: float | None = None
    spent_usd: float | None = None
    limit_usd: float | None = None
    period: str | None = None
    reset_at: str | None = None
    rate_usd_per_min: float | None = None
    baseline_usd_per_min: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """Check a webhook's signature header (constant-time) and that it is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        ts = int(parts["t"])
        given = parts["v1"]
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


class AlertChannel(abc.ABC):
    """Somewhere alerts go."""

    name = "channel"

    @abc.abstractmethod
    async def send(self, alert: Alert) -> None:
        """Deliver one alert; raise on failure (the dispatcher retries)."""

    async def aclose(self) -> None:
        """Release connections."""


class LogChannel(AlertChannel):
    name = "log"

    async def send(self, alert: Alert) -> None:
        log.warning("ALERT %s: %s", alert.kind, alert.message)


class WebhookChannel(AlertChannel):
    """POST the alert: signed JSON (``format="json"``) or ``{"text": …}`` for Slack-compatible hooks."""

    def __init__(self, url: str, *, fmt: str = "json", secret: str | None = None, timeout_s: float = 5.0) -> None:
        self.url = url
        self.format = fmt
        self.secret = secret
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.name = f"webhook {url}"
        self._session: aiohttp.ClientSession | None = None

    def render(self, alert: Alert) -> tuple[bytes, dict[str, str]]:
        if self.format == "slack":
            return orjson.dumps({"text": f":rotating_light: {alert.message}"}), {"content-type": "application/json"}
        body = orjson.dumps({"type": f"tokenomy.{alert.kind}", "alert": alert.as_dict()})
        headers = {"content-type": "application/json"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        return body, headers

    async def send(self, alert: Alert) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body, headers = self.render(alert)
        async with self._session.post(self.url, data=body, headers=headers) as response:
            if response.status >= 300:
                raise RuntimeError(f"{self.url} answered {response.status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AlertDispatcher:
    """Queues alerts and delivers them to every channel in the background."""

    def __init__(self, channels: Sequence[AlertChannel], *, attempts: int = 4, backoff_s: float = 0.5) -> None:
        self.channels = list(channels)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sent: list[Alert] = []  # recent alerts, newest last (admin API, tests)
        self._queue: asyncio.Queue[Alert] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=10_000)
        self._task = asyncio.create_task(self._run(), name="alert-dispatcher")

    def publish(self, alert: Alert) -> None:
        """Queue an alert (never blocks the request)."""
        metrics.ALERTS.labels(alert.kind).inc()
        self.sent.append(alert)
        del self.sent[:-200]
        if self._queue is None:
            log.warning("ALERT (dispatcher not started) %s: %s", alert.kind, alert.message)
            return
        try:
            self._queue.put_nowait(alert)
            self._inflight += 1
        except asyncio.QueueFull:
            log.error("alert queue full; dropped: %s", alert.message)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            alert = await self._queue.get()
            try:
                await asyncio.gather(*(self._deliver(channel, alert) for channel in self.channels))
            finally:
                self._inflight -= 1

    async def _deliver(self, channel: AlertChannel, alert: Alert) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                await channel.send(alert)
                return
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError, OSError) as exc:
                if attempt == self.attempts:
                    log.error("alert to %s failed after %d attempts: %s", channel.name, attempt, exc)
                    return
                log.warning("alert to %s failed (attempt %d): %s; retrying in %.1fs", channel.name, attempt, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued alert has been delivered or given up on."""
        deadline = time.monotonic() + timeout_s
        while self._inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        await self.drain(5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for channel in self.channels:
            await channel.aclose()
