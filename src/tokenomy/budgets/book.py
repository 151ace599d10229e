"""``PolicyBook``: the budget and rate-limit rules in force, kept fresh off the request path.

Rules from the config file are fixed; rules from the database (admin API, CLI)
are re-read every ``refresh_s`` by a background task, so ``current()`` is a
plain attribute read on the request path and a new budget takes effect on every
replica within ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

import sqlalchemy as sa

from tokenomy.budgets.policy import BudgetRule, PolicySet, RateLimitRule
from tokenomy.config import BudgetSettings
from tokenomy.store.access import AccessStore

log = logging.getLogger(__name__)


def rules_from_settings(settings: BudgetSettings) -> tuple[list[BudgetRule], list[RateLimitRule]]:
    budgets = [
        BudgetRule(
            id=b.id,
            scope=b.scope,
            value=b.value,
            amount_usd=b.amount_usd,
            period=b.period,
            window_s=b.window_s,
            timezone=b.timezone or settings.timezone,
            mode=b.mode,
            downgrade_to=b.downgrade_to,
            thresholds=tuple(sorted(b.alert_thresholds)),
        )
        for b in settings.budgets
    ]
    limits = [RateLimitRule(r.id, r.scope, r.value, r.rpm, r.tpm, r.concurrent) for r in settings.rate_limits]
    return budgets, limits


class PolicyBook:
    def __init__(self, settings: BudgetSettings, store: AccessStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self._fixed = rules_from_settings(settings)
        self._current = PolicySet(*self._fixed)
        self._task: asyncio.Task[None] | None = None

    def current(self) -> PolicySet:
        return self._current

    async def refresh(self) -> None:
        """Re-read the database's rules (config rules are always included)."""
        if self.store is None:
            return
        budgets = await self.store.list_budgets()
        limits = await self.store.list_rate_limits()
        tz = self.settings.timezone
        budgets = [b if b.timezone else replace(b, timezone=tz) for b in budgets]  # "": the default zone
        self._current = PolicySet([*self._fixed[0], *budgets], [*self._fixed[1], *limits])

    async def start(self) -> None:
        await self.refresh()
        if self.store is not None:
            self._task = asyncio.create_task(self._loop(), name="policy-refresh")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self.refresh()
            except (OSError, sa.exc.SQLAlchemyError):
                log.exception("re-reading budgets failed; keeping the previous rules")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
