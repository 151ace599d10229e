"""The dashboard's questions, answered in SQL from the rollups (or the ledger).

Every aggregate picks the smallest table that can answer it (``_Source``):

- ``ledger_hourly`` for totals, time series and breakdowns by model, team,
  feature, endpoint, traffic class, cache status, outcome… with filters on those
  (hour resolution: windows are widened to whole hours);
- ``ledger_daily_dim`` for breakdowns by customer, tag or key with no other
  filter (day resolution);
- the raw ``ledger`` when a filter names a customer, tag or key, or a customer /
  tag / key breakdown is filtered (exact, indexed by time; slower on big windows).

Rows and requests (most expensive, detail) always come from the raw ledger.
Values absent from a row (no team, no tag) are reported as ``NONE`` in every answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tokenomy.observe.metrics import CACHE_NOT_HIT, CACHE_NOT_LOOKED_UP
from tokenomy.store.ledger import NO_GROUP
from tokenomy.store.rollup import DAILY_DIMENSIONS, ROLLUP_DIMENSIONS
from tokenomy.store.sql_ledger import LEDGER, LEDGER_DAILY_DIM, LEDGER_HOURLY, SQLLedger

NONE = NO_GROUP
#: Every dimension the dashboard can group or filter by.
DIMENSIONS: tuple[str, ...] = (*ROLLUP_DIMENSIONS, *DAILY_DIMENSIONS)
MEASURES = (
    "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "baseline_usd", "savings_usd",
    "unknown_cost_count", "duration_ms_sum", "upstream_ms_sum", "upstream_count", "cache_hits", "cache_lookups",
    "errors",
)
_INT_MEASURES = {"requests", "input_tokens", "output_tokens", "cached_tokens", "unknown_cost_count",
                 "upstream_count", "cache_hits", "cache_lookups", "errors"}
#: savings attributed to a technique, in the order a call is classified (first match wins)
TECHNIQUES = ("cache", "routing", "batch", "other")


@dataclass(frozen=True, slots=True)
class Query:
    """A time window ``[since, until)`` (``None``: open) and ``dimension → value`` filters."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    filters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.filters:
            if name not in DIMENSIONS:
                raise ValueError(f"cannot filter by {name!r}; choose one of {', '.join(DIMENSIONS)}")


def _check_dimension(by: str) -> None:
    if by not in DIMENSIONS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(DIMENSIONS)}")


def _hour(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)


class _Source:
    """One table the aggregates can read, with its columns and sums under common names."""

    def __init__(self, kind: str, dialect: str) -> None:
        self.kind, self.dialect = kind, dialect
        self.table = {"hourly": LEDGER_HOURLY, "daily": LEDGER_DAILY_DIM, "raw": LEDGER}[kind]
        self.time = self.table.c.bucket if kind != "raw" else LEDGER.c.created_at

    def dim(self, name: str) -> sa.ColumnElement[Any]:
        if self.kind == "hourly":
            return self.table.c[ROLLUP_DIMENSIONS[name]]
        if self.kind == "daily":
            return self.table.c.value
        return sa.func.coalesce(LEDGER.c[ROLLUP_DIMENSIONS.get(name) or DAILY_DIMENSIONS[name]], "")

    def bucket(self, step: str) -> sa.ColumnElement[Any]:
        """The time bucket as text: ``YYYY-MM-DD HH`` (hour) or ``YYYY-MM-DD`` (day)."""
        column = self.time
        if self.dialect == "postgresql":
            fmt = "YYYY-MM-DD HH24" if step == "hour" else "YYYY-MM-DD"
            return sa.func.to_char(sa.func.timezone("UTC", column), fmt)
        return sa.func.substr(column, 1, 13 if step == "hour" else 10)

    def measures(self) -> list[sa.ColumnElement[Any]]:
        c, sum_, raw = self.table.c, sa.func.sum, self.kind == "raw"
        zero = sa.literal(0)
        if self.kind == "daily":
            cache_hits = cache_lookups = errors = cached = duration = upstream = upstream_n = zero
        else:
            weight = sa.literal(1) if raw else c.requests
            status = c.cache_status
            cache_hits = sum_(sa.case((status.in_(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP), 0), else_=weight))
            cache_lookups = sum_(sa.case((status.in_(CACHE_NOT_LOOKED_UP), 0), else_=weight))
            errors = sum_(sa.case((c.outcome == "ok", 0), else_=weight))
            cached = sum_(c.cached_tokens)
            duration = sum_(c.duration_ms if raw else c.duration_ms_sum)
            upstream = sum_(c.upstream_ms if raw else c.upstream_ms_sum)
            upstream_n = sa.func.count(c.upstream_ms) if raw else sum_(c.upstream_count)
        if raw:
            both = sa.and_(c.cost_usd.is_not(None), c.baseline_usd.is_not(None))
            requests = sa.func.count()
            savings = sum_(sa.case((both, c.baseline_usd - c.cost_usd), else_=0.0))
            unknown = sum_(sa.case((c.cost_usd.is_(None), 1), else_=0))
        else:
            requests, savings, unknown = sum_(c.requests), sum_(c.savings_usd), sum_(c.unknown_cost_count)
        values = [requests, sum_(c.input_tokens), sum_(c.output_tokens), cached, sum_(c.cost_usd),
                  sum_(c.baseline_usd), savings, unknown, duration, upstream, upstream_n, cache_hits,
                  cache_lookups, errors]
        return [sa.func.coalesce(value, 0).label(name) for name, value in zip(MEASURES, values)]

    def where(self, stmt: sa.Select[Any], query: Query, by: str | None = None) -> sa.Select[Any]:
        if query.since is not None:
            since = _hour(query.since) if self.kind == "hourly" else query.since
            if self.kind == "daily":
                since = _hour(query.since).replace(hour=0)
            stmt = stmt.where(self.time >= since)
        if query.until is not None:
            stmt = stmt.where(self.time < query.until)
        if self.kind == "daily":
            assert by is not None
            stmt = stmt.where(self.table.c.dimension == by)
        for name, value in query.filters.items():
            stmt = stmt.where(self._matches(name, "" if value == NONE else value))
        return stmt

    def _matches(self, name: str, value: str) -> sa.ColumnElement[bool]:
        if self.kind == "raw" and name == "tag":
            if not value:
                return sa.func.json_array_length(LEDGER.c.tags) == 0 if self.dialect != "postgresql" else (
                    sa.func.jsonb_array_length(LEDGER.c.tags) == 0
                )
            if self.dialect == "postgresql":
                return sa.type_coerce(LEDGER.c.tags, postgresql.JSONB()).contains([value])
            each = sa.func.json_each(LEDGER.c.tags).table_valued("value").alias("t")
            return sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == value))
        return self.dim(name) == value


def _positions(count: int) -> list[sa.ColumnElement[Any]]:
    # GROUP BY 1, 2: the grouped expressions carry bound parameters, and PostgreSQL
    # would not see a repeated expression with fresh parameters as the same one.
    return [sa.literal_column(str(i)) for i in range(1, count + 1)]


def _plain_keys(mapping: Any) -> dict[str, Any]:
    # SQLAlchemy's keys are ``quoted_name`` (a str subclass) that orjson refuses.
    return {str(key): value for key, value in mapping.items()}


def _number(name: str, value: Any) -> int | float:
    return int(value or 0) if name in _INT_MEASURES else float(value or 0.0)


def _measures_of(row: Any) -> dict[str, Any]:
    mapping = row._mapping
    return {name: _number(name, mapping[name]) for name in MEASURES}


def _label(value: Any) -> str:
    return str(value) if value not in (None, "") else NONE


def _iso(bucket: str) -> str:
    return bucket.replace(" ", "T") + (":00:00Z" if len(bucket) == 13 else "T00:00:00Z")


class DashboardQueries:
    """Aggregates for ``/dashboard/api/...``; every method is one or two SQL statements."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.dialect = ledger.dialect

    def _source(self, query: Query, by: str | None = None) -> _Source:
        if any(name in DAILY_DIMENSIONS for name in query.filters):
            return _Source("raw", self.dialect)
        if by in DAILY_DIMENSIONS:
            return _Source("raw" if query.filters else "daily", self.dialect)
        return _Source("hourly", self.dialect)

    async def _rows(self, stmt: sa.Select[Any]) -> list[Any]:
        async with self.ledger.engine.connect() as conn:
            return list(await conn.execute(stmt))

    async def summary(self, query: Query) -> dict[str, Any]:
        """Totals over the window: spend, baseline, savings, tokens, cache hits, errors, routed calls."""
        source = self._source(query)
        c = source.table.c
        routed_weight = sa.literal(1) if source.kind == "raw" else c.requests
        served = c.model_served if source.kind == "raw" else c.model_served
        routed = sa.func.coalesce(
            sa.func.sum(sa.case((sa.and_(served.is_not(None), served != "", served != c.model_asked), routed_weight),
                                else_=0)), 0,
        ).label("routed")
        stmt = source.where(sa.select(*source.measures(), routed).select_from(source.table), query)
        row = (await self._rows(stmt))[0]
        out = _measures_of(row)
        out["routed"] = int(row.routed or 0)
        return out

    async def timeseries(self, query: Query, by: str | None = None, step: str = "day", top: int = 8) -> dict[str, Any]:
        """Spend per time bucket, split by ``by`` (its ``top`` most expensive values; the rest as ``other``)."""
        if step not in ("hour", "day"):
            raise ValueError("step must be hour or day")
        if by is not None:
            _check_dimension(by)
        source = self._source(query, by)
        bucket = source.bucket(step).label("bucket")
        columns: list[Any] = [bucket]
        if by is not None:
            columns.append(source.dim(by).label("grp"))
        stmt = sa.select(*columns, *source.measures()).select_from(source.table).group_by(*_positions(len(columns)))
        rows = await self._rows(source.where(stmt, query, by).order_by(bucket))
        totals: dict[str, float] = {}
        for row in rows:
            group = _label(row.grp) if by is not None else "total"
            totals[group] = totals.get(group, 0.0) + float(row.cost_usd or 0)
        ranked = sorted(totals, key=lambda g: (-totals[g], g))
        keep = set(ranked[:top])
        buckets: dict[str, dict[str, dict[str, float]]] = {}
        for row in rows:
            group = _label(row.grp) if by is not None else "total"
            group = group if group in keep else "other"
            cell = buckets.setdefault(_iso(row.bucket), {}).setdefault(group, {"cost_usd": 0.0, "baseline_usd": 0.0,
                                                                              "savings_usd": 0.0, "requests": 0})
            cell["cost_usd"] += float(row.cost_usd or 0)
            cell["baseline_usd"] += float(row.baseline_usd or 0)
            cell["savings_usd"] += float(row.savings_usd or 0)
            cell["requests"] += int(row.requests or 0)
        groups = [g for g in ranked if g in keep] + (["other"] if len(ranked) > top else [])
        return {"step": step, "by": by, "groups": groups,
                "buckets": [{"t": t, "groups": cells} for t, cells in sorted(buckets.items())]}

    async def breakdown(self, query: Query, by: str, limit: int = 100) -> list[dict[str, Any]]:
        """Spend per value of ``by``, most expensive first."""
        _check_dimension(by)
        source = self._source(query, by)
        if source.kind == "raw" and by == "tag":
            return await self._raw_tag_breakdown(query, limit)
        group = source.dim(by).label("grp")
        cost = sa.func.sum(source.table.c.cost_usd)
        stmt = sa.select(group, *source.measures()).select_from(source.table).group_by(*_positions(1))
        stmt = source.where(stmt, query, by).order_by(sa.func.coalesce(cost, 0).desc(), group).limit(limit)
        return [{"group": _label(row.grp), **_measures_of(row)} for row in await self._rows(stmt)]

    async def _raw_tag_breakdown(self, query: Query, limit: int) -> list[dict[str, Any]]:
        """Per tag from the raw ledger: a call counts once in each distinct tag it carries."""
        source = _Source("raw", self.dialect)
        if self.dialect == "postgresql":
            each = sa.func.jsonb_array_elements_text(LEDGER.c.tags).table_valued("value").render_derived(name="t")
            each = each.lateral()
        else:
            each = sa.func.json_each(LEDGER.c.tags).table_valued("value").alias("t")
        pairs = sa.select(LEDGER.c.id.label("rid"), each.c.value.label("tag")).select_from(
            LEDGER.outerjoin(each, sa.true())
        )
        pairs = source.where(pairs, query).distinct().subquery("p")
        group = sa.func.coalesce(pairs.c.tag, "").label("grp")
        stmt = (
            sa.select(group, *source.measures())
            .select_from(pairs.join(LEDGER, LEDGER.c.id == pairs.c.rid))
            .group_by(*_positions(1))
            .order_by(sa.func.coalesce(sa.func.sum(LEDGER.c.cost_usd), 0).desc(), group)
            .limit(limit)
        )
        return [{"group": _label(row.grp), **_measures_of(row)} for row in await self._rows(stmt)]

    async def savings(self, query: Query) -> list[dict[str, Any]]:
        """Baseline minus cost, attributed to the technique that changed the call.

        A call is classified by the first that applies: served from a cache
        (``cache``), served by another model than asked (``routing``), sent as
        batch traffic (``batch``); anything else (``other``: token pruning,
        prompt-cache discounts) keeps its own savings.
        """
        source = self._source(query)
        c = source.table.c
        technique = sa.case(
            (c.cache_status.not_in(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP), "cache"),
            (sa.and_(c.model_served.is_not(None), c.model_served != "", c.model_served != c.model_asked), "routing"),
            (c.traffic_class == "batch", "batch"),
            else_="other",
        ).label("technique")
        stmt = sa.select(technique, *source.measures()).select_from(source.table).group_by(*_positions(1))
        found = {row.technique: _measures_of(row) for row in await self._rows(source.where(stmt, query))}
        empty = dict.fromkeys(MEASURES, 0)
        return [{"technique": name, **found.get(name, empty)} for name in TECHNIQUES]

    async def routing(self, query: Query, limit: int = 50) -> list[dict[str, Any]]:
        """Calls per (model asked → model served)."""
        source = self._source(query)
        asked, served = source.dim("model_asked").label("asked"), source.dim("model").label("served")
        stmt = sa.select(asked, served, *source.measures()).select_from(source.table).group_by(*_positions(2))
        stmt = source.where(stmt, query).order_by(sa.desc("requests")).limit(limit)
        return [{"model_asked": _label(row.asked), "model_served": _label(row.served), **_measures_of(row)}
                for row in await self._rows(stmt)]

    async def dimension_values(self, query: Query, limit: int = 200) -> dict[str, list[str]]:
        """Values seen in the window for each filterable dimension (for the filter menus)."""
        out: dict[str, list[str]] = {}
        for name in ROLLUP_DIMENSIONS:
            source = _Source("hourly", self.dialect)
            column = source.dim(name)
            stmt = source.where(sa.select(column).distinct(), Query(query.since, query.until)).order_by(column)
            out[name] = [_label(row[0]) for row in await self._rows(stmt.limit(limit))]
        for name in DAILY_DIMENSIONS:
            source = _Source("daily", self.dialect)
            stmt = source.where(sa.select(source.table.c.value).distinct(), Query(query.since, query.until), name)
            out[name] = [_label(row[0]) for row in await self._rows(stmt.order_by(source.table.c.value).limit(limit))]
        return out

    async def requests(self, query: Query, order: str = "cost", limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Single calls, most expensive (``order="cost"``) or newest (``"recent"``) first."""
        source = _Source("raw", self.dialect)
        c = LEDGER.c
        columns = [c.request_id, c.created_at, c.model_asked, c.model_served, c.team, c.feature, c.customer,
                   c.endpoint, c.traffic_class, c.input_tokens, c.output_tokens, c.cost_usd, c.baseline_usd,
                   c.cache_status, c.outcome, c.duration_ms]
        stmt = source.where(sa.select(*columns), query)
        if order == "cost":
            stmt = stmt.where(c.cost_usd.is_not(None)).order_by(c.cost_usd.desc(), c.id.desc())
        elif order == "recent":
            stmt = stmt.order_by(c.created_at.desc(), c.id.desc())
        else:
            raise ValueError("order must be cost or recent")
        rows = await self._rows(stmt.limit(limit).offset(offset))
        return [{**_plain_keys(row._mapping), "created_at": row.created_at.isoformat()} for row in rows]

    async def request(self, request_id: str) -> dict[str, Any] | None:
        """One ledger row in full: identity, tokens, CostTrace items, per-stage timings."""
        stmt = sa.select(LEDGER).where(LEDGER.c.request_id == request_id)
        rows = await self._rows(stmt)
        if not rows:
            return None
        row = _plain_keys(rows[0]._mapping)
        row.pop("id", None)
        row["created_at"] = row["created_at"].isoformat()
        cost, baseline = row["cost_usd"], row["baseline_usd"]
        row["savings_usd"] = baseline - cost if cost is not None and baseline is not None else None
        return row
