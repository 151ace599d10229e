"""Build the enforcement pieces from settings: counter store, rules, keys, alerts, runaway detector.

Kept apart from ``app.py`` so the composition root stays a list of parts; the
choice between embedded and shared state is made here, from settings alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenomy.budgets.alerts import AlertChannel, AlertDispatcher, LogChannel, WebhookChannel
from tokenomy.budgets.book import PolicyBook
from tokenomy.budgets.counters import CounterStore
from tokenomy.budgets.counters_memory import MemoryCounterStore
from tokenomy.budgets.counters_redis import RedisCounterStore
from tokenomy.budgets.enforcer import BudgetEnforcer
from tokenomy.budgets.keys import KeyService, resolve_pepper
from tokenomy.budgets.reconcile import reconcile
from tokenomy.budgets.runaway import RunawayDetector
from tokenomy.config import Settings, resolve_secret
from tokenomy.models import ModelRegistry
from tokenomy.routing.attempts import AttemptPlanner
from tokenomy.store.access import AccessStore
from tokenomy.store.ledger import Ledger

log = logging.getLogger(__name__)


@dataclass
class Enforcement:
    """Everything budgets, keys and alerts need, started and stopped with the gateway."""

    access: AccessStore
    keys: KeyService
    book: PolicyBook
    counters: CounterStore
    alerts: AlertDispatcher
    enforcer: BudgetEnforcer
    settings: Settings
    ledger: Ledger | None = None
    clock: Callable[[], float] = time.time
    _reconciler: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        await self.access.start()
        await self.counters.start()
        await self.book.start()
        self.alerts.start()
        if self.ledger is not None and self.settings.budgets.reconcile_interval_s > 0:
            await self.reconcile()  # a restart after a crash gets back what the counters lost
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="budget-reconcile")

    async def reconcile(self) -> list:
        """Compare counters with the ledger now (and rebuild lost spend if ``reconcile_fix``)."""
        assert self.ledger is not None
        return await reconcile(
            self.book.current().budgets, self.ledger, self.counters, self.clock(),
            prefix=self.enforcer.prefix, fix=self.settings.budgets.reconcile_fix,
        )

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.budgets.reconcile_interval_s)
            try:
                await self.reconcile()
            except Exception:  # a failed report must not stop the next one; it is logged with its trace
                log.exception("budget reconciliation failed")

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconciler
        await self.enforcer.drain()
        await self.alerts.aclose()
        await self.book.aclose()
        await self.counters.aclose()
        await self.access.aclose()


def make_access_store(settings: Settings) -> AccessStore:
    """Keys, teams and budgets: in ``keys.database_url``, else next to the ledger (same URL and schema)."""
    if settings.keys.database_url:
        return AccessStore(settings.keys.database_url)
    return AccessStore(settings.ledger.url, schema=settings.ledger.schema_)


def make_counter_store(settings: Settings, clock: Callable[[], float] = time.time) -> CounterStore:
    budgets = settings.budgets
    if budgets.backend == "redis":
        return RedisCounterStore(
            budgets.redis_url,
            prefix=budgets.redis_prefix,
            clock=clock,
            timeout_s=budgets.redis_timeout_s,
            settle_delay_s=budgets.settle_delay_s,
        )
    return MemoryCounterStore(budgets.state_path, persist_interval_s=budgets.persist_interval_s, clock=clock)


def make_alerts(settings: Settings) -> AlertDispatcher:
    channels: list[AlertChannel] = []
    if settings.alerts.log:
        channels.append(LogChannel())
    for hook in settings.alerts.webhooks:
        secret = resolve_secret(hook.secret_env)
        channels.append(WebhookChannel(hook.url, fmt=hook.format, secret=secret, timeout_s=settings.alerts.timeout_s))
    return AlertDispatcher(channels, attempts=settings.alerts.attempts, backoff_s=settings.alerts.backoff_s)


def build_enforcement(
    settings: Settings,
    registry: ModelRegistry,
    clock: Callable[[], float] = time.time,
    *,
    ledger: Ledger | None = None,
) -> Enforcement:
    access = make_access_store(settings)
    keys = KeyService(access, resolve_pepper(settings), cache_ttl_s=settings.keys.cache_ttl_s, clock=clock)
    book = PolicyBook(settings.budgets, access)
    counters = make_counter_store(settings, clock)
    alerts = make_alerts(settings)
    prefix = settings.budgets.redis_prefix if settings.budgets.backend == "redis" else ""
    runaway = (
        RunawayDetector(settings.runaway, counters, alerts, prefix=prefix, clock=clock)
        if settings.runaway.enabled
        else None
    )
    enforcer = BudgetEnforcer(
        settings.budgets,
        counters,
        book.current,
        registry=registry,
        alerts=alerts,
        runaway=runaway,
        planner=AttemptPlanner(registry, settings.routing),
        clock=clock,
    )
    return Enforcement(access, keys, book, counters, alerts, enforcer, settings, ledger, clock)
