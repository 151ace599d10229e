"""Budget threshold alerts: 50 / 80 / 100 % of a budget, each once per period.

After a settle the enforcer hands over each budget's new total; a threshold
crossed for the first time in the period is claimed in the counter store (so
one replica, and one only, sends it) and published to the alert dispatcher.
A refused call counts as 100 %.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tokenomy.budgets.alerts import Alert, AlertDispatcher
from tokenomy.budgets.counters import NANO, CounterStore, CounterStoreUnavailable, from_nano
from tokenomy.budgets.periods import format_reset
from tokenomy.budgets.policy import BudgetRule
from tokenomy.budgets.ticket import ChargeInfo

log = logging.getLogger(__name__)

#: Markers of fired alerts live this long when the period never resets (lifetime budgets).
FOREVER_S = 10 * 365 * 86400
#: Markers this process already knows are taken (spares the store a claim per settle).
_KNOWN_LIMIT = 10_000


class ThresholdAlerts:
    def __init__(
        self, store: CounterStore, alerts: AlertDispatcher, *, prefix: str = "", clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.alerts = alerts
        self.prefix = prefix
        self.clock = clock
        self._known: dict[str, None] = {}

    def due(self, info: ChargeInfo, total: int) -> bool:
        """Whether ``check`` could fire anything: a threshold reached whose alert this process has not seen taken."""
        rule: BudgetRule = info.rule
        if not rule.thresholds or rule.amount_usd <= 0 or info.window is None:
            return False
        fraction = total / (rule.amount_usd * NANO)
        return any(
            fraction + 1e-12 >= threshold and self._marker(info, threshold) not in self._known
            for threshold in rule.thresholds
        )

    def _marker(self, info: ChargeInfo, threshold: float) -> str:
        assert info.window is not None
        return f"{self.prefix}al:{info.rule.id}:{info.subject}:{info.window.bucket}:{threshold:g}"

    async def check(self, info: ChargeInfo, total: int) -> None:
        """Fire every threshold the budget's ``total`` (nano-dollars) has reached."""
        rule: BudgetRule = info.rule
        if not rule.thresholds or rule.amount_usd <= 0:
            return
        fraction = total / (rule.amount_usd * NANO)
        for threshold in rule.thresholds:
            if fraction + 1e-12 >= threshold:
                await self.fire(info, threshold, total)

    async def exhausted(self, info: ChargeInfo, total: int) -> None:
        """A refused call: the 100 % alert, if the budget has one and it has not fired."""
        if 1.0 in info.rule.thresholds:
            await self.fire(info, 1.0, total)

    async def fire(self, info: ChargeInfo, threshold: float, total: int) -> None:
        rule: BudgetRule = info.rule
        assert info.window is not None
        marker = self._marker(info, threshold)
        if marker in self._known:
            return
        try:
            first = await self.store.claim(marker, info.window.ttl_s or FOREVER_S)
        except CounterStoreUnavailable as exc:
            log.error("could not record budget alert %s: %s", marker, exc)
            return
        self._known[marker] = None
        if len(self._known) > _KNOWN_LIMIT:
            self._known.pop(next(iter(self._known)))
        if not first:
            return  # another replica (or this one before a restart) sent it
        spent = from_nano(total)
        reset = format_reset(info.window.reset_at)
        self.alerts.publish(
            Alert(
                kind="budget_threshold",
                scope=rule.scope,
                subject=info.subject,
                budget_id=rule.id,
                threshold=threshold,
                spent_usd=spent,
                limit_usd=rule.amount_usd,
                period=rule.period_label(),
                reset_at=reset,
                message=(
                    f"{rule.describe(info.subject)} has used {threshold:.0%} of its {rule.period_label()} budget "
                    f"{rule.id} (${spent:.4f} of ${rule.amount_usd:.2f}; resets {reset})."
                ),
                at=self.clock(),
            )
        )
