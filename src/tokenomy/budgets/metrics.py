"""Prometheus metrics of enforcement (process-wide, as prometheus-client's registry is)."""

from __future__ import annotations

from prometheus_client import Counter

STORE_UNAVAILABLE = Counter(
    "tokenomy_budget_store_unavailable_total",
    "Calls that found the budget counter store unreachable, by what was done (fail open or closed).",
    ["fail_mode"],
)
REJECTED = Counter(
    "tokenomy_budget_rejected_total",
    "Calls refused by budgets, rate limits or runaway throttling.",
    ["reason", "scope"],
)
DOWNGRADED = Counter(
    "tokenomy_budget_downgraded_total",
    "Calls sent to a cheaper model because a downgrade budget would have been exceeded.",
    ["scope"],
)
ALERTS = Counter("tokenomy_alerts_total", "Alerts raised.", ["kind"])
