"""Budgets as the dashboard shows them: spent so far, burn rate, projected exhaustion.

Reads the ``budgets`` table when the budgets feature has created it (its columns:
``id, scope, value, amount_usd, period, window_s``); without it there is
nothing to show and ``budget_status`` returns ``None``. Spend comes from the
hourly rollup (so the period start is rounded down to the hour; ``customer``
and ``key`` scopes from the raw ledger), and periods are calendar periods in UTC.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from tokenomy.store.dashboard_queries import DashboardQueries, Query

_SCOPE_DIMENSION = {"model": "model", "team": "team", "org": "org", "feature": "feature", "endpoint": "endpoint",
                    "customer": "customer", "key": "key", "traffic_class": "traffic_class", "provider": "provider"}
_GLOBAL_SCOPES = {"global", "all", "gateway", "*"}


def period_bounds(period: str, now: dt.datetime, window_s: int | None = None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``[start, end)`` of the budget period containing ``now`` (UTC); ``None`` when unbounded."""
    period = (period or "").lower()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period in ("hour", "hourly"):
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(hours=1)
    if period in ("day", "daily"):
        return day, day + dt.timedelta(days=1)
    if period in ("week", "weekly"):
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    if period in ("month", "monthly"):
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        return start, end
    if period in ("rolling", "window") and window_s:
        return now - dt.timedelta(seconds=window_s), now
    return None, None


async def budget_status(queries: DashboardQueries, now: dt.datetime | None = None) -> list[dict[str, Any]] | None:
    """Every budget with its spend in the current period; ``None`` if there are no budgets (or no table)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    engine = queries.ledger.engine

    def reflect(conn: sa.Connection) -> sa.Table | None:
        if not sa.inspect(conn).has_table("budgets"):
            return None
        return sa.Table("budgets", sa.MetaData(), autoload_with=conn)

    async with engine.connect() as conn:
        table = await conn.run_sync(reflect)
        if table is None:
            return None
        budgets = [dict(row._mapping) for row in await conn.execute(sa.select(table))]
    if not budgets:  # the budgets migration creates the table; no rows still means nothing to show
        return None
    out = []
    for budget in budgets:
        scope = str(budget.get("scope") or "")
        value = str(budget.get("value") or "")
        amount = float(budget.get("amount_usd") or 0.0)
        start, end = period_bounds(str(budget.get("period") or ""), now, budget.get("window_s"))
        filters: dict[str, str] = {}
        dimension = _SCOPE_DIMENSION.get(scope)
        if dimension is not None and scope not in _GLOBAL_SCOPES:
            filters[dimension] = value
        elif scope not in _GLOBAL_SCOPES:
            out.append({**_plain(budget), "spent_usd": None, "note": f"scope {scope!r} is not shown"})
            continue
        # customer / key scopes read the raw ledger (indexed), the others the hourly rollup
        spent = (await queries.summary(Query(start, None, filters)))["cost_usd"]
        elapsed_days = max(((now - start).total_seconds() if start else 0.0) / 86400.0, 1 / 24)
        burn = spent / elapsed_days if start else None
        exhausts = None
        if burn and amount > spent:
            moment = now + dt.timedelta(days=(amount - spent) / burn)
            if end is None or moment < end:
                exhausts = moment.isoformat()
        elif amount and spent >= amount:
            exhausts = now.isoformat()
        out.append({
            **_plain(budget),
            "period_start": start.isoformat() if start else None,
            "period_end": end.isoformat() if end else None,
            "spent_usd": spent,
            "used_fraction": spent / amount if amount else None,
            "burn_usd_per_day": burn,
            "projected_exhaustion": exhausts,
        })
    return out


def _plain(budget: dict[str, Any]) -> dict[str, Any]:
    return {key: value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
            for key, value in budget.items()}
