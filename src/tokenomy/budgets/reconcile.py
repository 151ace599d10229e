"""Reconciliation: compare budget counters with the ledger, and rebuild what the counters lost.

The counters are the fast path; the ledger is the record. They drift when a
process dies before persisting (memory backend), when Redis loses data, or
when a settle failed. ``reconcile`` sums the ledger per budget and scope value
over the current period (in SQL) and compares with the counters:

- ledger > counters: spend the counters do not know about — with ``fix`` the
  difference is added back, so a budget is never reset by a crash;
- counters > ledger: normal in small amounts (reservations in flight, ledger
  rows not yet flushed) and reported only.

Budgets by ``org`` cannot be rebuilt (the ledger groups by team, key, feature,
customer, model, provider) and are skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from tokenomy.budgets.counters import NANO, CounterStore, from_nano, to_nano
from tokenomy.budgets.periods import period_start, window
from tokenomy.budgets.policy import EACH, BudgetRule
from tokenomy.store.ledger import NO_GROUP, Ledger

log = logging.getLogger(__name__)

#: ledger dimension that holds each budget scope's value
_DIMENSION = {"team": "team", "key": "key", "feature": "feature", "customer": "customer", "model": "model", "provider": "provider", "global": "provider"}

#: drift below this is noise (rounding of nano-dollars), never acted on
TOLERANCE_USD = 1e-6


@dataclass(frozen=True, slots=True)
class Drift:
    budget_id: str
    subject: str
    ledger_usd: float
    counter_usd: float
    fixed: bool

    @property
    def drift_usd(self) -> float:
        return self.ledger_usd - self.counter_usd


async def reconcile(
    rules: list[BudgetRule], ledger: Ledger, store: CounterStore, now: float, *, prefix: str = "", fix: bool = False
) -> list[Drift]:
    """Compare (and with ``fix``, repair) every reconcilable budget; returns the drifts found."""
    drifts: list[Drift] = []
    for rule in rules:
        dimension = _DIMENSION.get(rule.scope)
        if dimension is None:
            continue
        start = period_start(rule.period, now, rule.timezone or "UTC", rule.window_s)
        since = dt.datetime.fromtimestamp(start, dt.timezone.utc) if start is not None else None
        groups = await ledger.spend_summary(dimension, since=since)
        if rule.scope == "global":
            spent = {EACH: sum(g.cost_usd for g in groups)}
        else:
            spent = {g.group: g.cost_usd for g in groups if g.group != NO_GROUP}
            if rule.value not in (None, EACH):
                spent = {rule.value: spent.get(rule.value, 0.0)}
        win = window(rule.period, now, rule.timezone or "UTC", rule.window_s)
        subjects = list(spent)
        windows = [tuple(f"{prefix}b:{rule.id}:{s}:{bucket}" for bucket in win.buckets) for s in subjects]
        counted = await store.read(windows)
        for subject, keys, counter in zip(subjects, windows, counted):
            ledger_usd = spent[subject]
            counter_usd = counter / NANO
            if abs(ledger_usd - counter_usd) <= TOLERANCE_USD:
                continue
            repaired = False
            if fix and ledger_usd > counter_usd:
                await store.add(keys[0], to_nano(ledger_usd) - counter, win.ttl_s)
                repaired = True
            drift = Drift(rule.id, subject, ledger_usd, counter_usd, repaired)
            drifts.append(drift)
            log.warning(
                "budget %s %r: ledger $%.6f vs counters $%.6f (drift $%+.6f)%s",
                rule.id, subject, ledger_usd, from_nano(counter), drift.drift_usd, " — rebuilt" if repaired else "",
            )
    return drifts
