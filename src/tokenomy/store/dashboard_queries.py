"""The dashboard's questions, answered in SQL from the rollups (or the ledger).

Every aggregate reads the smallest table that can answer it (``_Source``):

- no filter: one slice of ``ledger_dim_rollup`` (the dimension grouped by, or
  any one for totals); hour resolution, day for customer / tag / key;
- filters on low-cardinality dimensions (team, model, feature…): ``ledger_daily``
  (day resolution);
- one filter on team or feature with a customer or tag grouping, daily steps:
  ``ledger_pair_daily`` (day resolution);
- a tag filter alone, totals: the day slice of that tag in ``ledger_dim_rollup``
  for the whole days of the window, the raw ledger for its partial first and
  last day (exact);
- a filter on customer, tag or key, a filtered customer / tag / key breakdown,
  or hourly steps with filters: the raw ``ledger`` (exact, indexed by time and
  by team / feature / customer / model; slower on big windows).

Windows are widened to the table's resolution (whole hours or days, UTC).
Single requests (most expensive, detail) always come from the raw ledger.
Values absent from a row (no team, no tag) are reported as ``NONE``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from tokenomy.store.ledger import NO_GROUP
from tokenomy.store.rollup import (
    CACHE_NOT_HIT,
    CACHE_NOT_LOOKED_UP,
    DAILY_DIMENSIONS,
    DERIVED_DIMENSIONS,
    FLOAT_MEASURES,
    MEASURES,
    PAIR_BY,
    PAIR_DIMENSIONS,
    ROLLUP_DIMENSIONS,
    ROUTE_ARROW,
    SAVING_SLICE,
    TECHNIQUES,
)
from tokenomy.store.sql_ledger import LEDGER, LEDGER_DAILY, LEDGER_DIM_ROLLUP, LEDGER_PAIR_DAILY, SQLLedger

NONE = NO_GROUP
#: Every dimension the dashboard can group by (filters: all but the derived ones).
DIMENSIONS: tuple[str, ...] = (*ROLLUP_DIMENSIONS, *DAILY_DIMENSIONS, *DERIVED_DIMENSIONS)
FILTERS: tuple[str, ...] = (*ROLLUP_DIMENSIONS, *DAILY_DIMENSIONS)


@dataclass(frozen=True, slots=True)
class Query:
    """A time window ``[since, until)`` (``None``: open) and ``dimension → value`` filters."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    filters: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.filters:
            if name not in FILTERS:
                raise ValueError(f"cannot filter by {name!r}; choose one of {', '.join(FILTERS)}")


def _check_dimension(by: str) -> None:
    if by not in DIMENSIONS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(DIMENSIONS)}")


def _floor(moment: dt.datetime, unit: str) -> dt.datetime:
    moment = moment.astimezone(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if unit == "day" else moment


class _Source:
    """One table the aggregates read, with its columns and sums under common names.

    ``kind``: ``dim`` (one slice of ``ledger_dim_rollup``), ``daily``, ``pair``
    (``slice_`` the customer / tag grouping, ``pair`` the one team / feature
    filter) or ``raw``.
    """

    def __init__(self, kind: str, dialect: str, slice_: str | None = None, pair: str | None = None) -> None:
        self.kind, self.dialect, self.slice, self.pair = kind, dialect, slice_, pair
        self.table = {"dim": LEDGER_DIM_ROLLUP, "daily": LEDGER_DAILY, "pair": LEDGER_PAIR_DAILY, "raw": LEDGER}[kind]
        self.time = LEDGER.c.created_at if kind == "raw" else self.table.c.bucket
        self.unit = "day" if kind in ("daily", "pair") or slice_ in DAILY_DIMENSIONS else "hour"

    def dim(self, name: str) -> sa.ColumnElement[Any]:
        c = self.table.c
        if self.kind == "dim":
            assert name == self.slice, (name, self.slice)
            return c.value
        if self.kind == "pair":
            assert name == self.slice, (name, self.slice)
            return c.by_value
        raw = self.kind == "raw"
        if name == "route":
            return c.model_asked + ROUTE_ARROW + sa.func.coalesce(c.model_served, "")
        if name == "technique":
            hit = sa.and_(c.cache_status.not_in(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP))
            routed = sa.and_(c.model_served.is_not(None), c.model_served != "", c.model_served != c.model_asked)
            return sa.case((hit, "cache"), (routed, "routing"), (c.traffic_class == "batch", "batch"), else_="other")
        column = c[ROLLUP_DIMENSIONS.get(name) or DAILY_DIMENSIONS[name]]
        return sa.func.coalesce(column, "") if raw else column

    def bucket(self, step: str) -> sa.ColumnElement[Any]:
        """The time bucket as text: ``YYYY-MM-DD HH`` (hour) or ``YYYY-MM-DD`` (day)."""
        if self.dialect == "postgresql":
            fmt = "YYYY-MM-DD HH24" if step == "hour" else "YYYY-MM-DD"
            return sa.func.to_char(sa.func.timezone("UTC", self.time), fmt)
        return sa.func.substr(self.time, 1, 13 if step == "hour" else 10)

    def measures(self) -> list[sa.ColumnElement[Any]]:
        c, sum_ = self.table.c, sa.func.sum
        if self.kind != "raw":
            return [sa.func.coalesce(sum_(c[name]), 0).label(name) for name in MEASURES]
        both = sa.and_(c.cost_usd.is_not(None), c.baseline_usd.is_not(None))
        status = c.cache_status
        routed = sa.and_(c.model_served.is_not(None), c.model_served != "", c.model_served != c.model_asked)
        values = [
            sa.func.count(), sum_(c.input_tokens), sum_(c.output_tokens), sum_(c.cached_tokens), sum_(c.cost_usd),
            sum_(c.baseline_usd), sum_(sa.case((both, c.baseline_usd - c.cost_usd), else_=0.0)),
            sum_(sa.case((c.cost_usd.is_(None), 1), else_=0)), sum_(c.duration_ms), sum_(c.upstream_ms),
            sa.func.count(c.upstream_ms),
            sum_(sa.case((status.in_(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP), 0), else_=1)),
            sum_(sa.case((status.in_(CACHE_NOT_LOOKED_UP), 0), else_=1)),
            sum_(sa.case((c.outcome == "ok", 0), else_=1)),
            sum_(sa.case((routed, 1), else_=0)),
        ]
        return [sa.func.coalesce(value, 0).label(name) for name, value in zip(MEASURES, values)]

    def where(self, stmt: sa.Select[Any], query: Query, *, scan_by_cost: bool = False) -> sa.Select[Any]:
        if self.kind == "dim":
            stmt = stmt.where(self.table.c.dimension == self.slice)
        if self.kind == "pair":
            (name, value), = query.filters.items()
            assert name == self.pair, (name, self.pair)
            c = self.table.c
            stmt = stmt.where(c.dimension == name, c.value == ("" if value == NONE else value),
                              c.by_dimension == self.slice)
        if query.since is not None:
            stmt = stmt.where(self.time >= (query.since if self.kind == "raw" else _floor(query.since, self.unit)))
        if query.until is not None:
            stmt = stmt.where(self.time < query.until)
        for name, value in query.filters.items():
            if self.kind == "pair":
                break
            match = self._matches(name, "" if value == NONE else value, hide_index=scan_by_cost and name in ROLLUP_DIMENSIONS)
            stmt = stmt.where(match)
        return stmt

    def _matches(self, name: str, value: str, hide_index: bool = False) -> sa.ColumnElement[bool]:
        assert self.kind != "dim"
        if self.kind == "daily":
            return self.table.c[ROLLUP_DIMENSIONS[name]] == value
        if name == "tag":
            tags = LEDGER.c.tags
            if self.dialect == "postgresql":
                if not value:
                    return sa.func.jsonb_array_length(tags) == 0
                return sa.type_coerce(tags, postgresql.JSONB()).contains([value])
            if not value:
                return sa.func.json_array_length(tags) == 0
            each = sa.func.json_each(tags).table_valued("value").alias("t")
            exact = sa.exists(sa.select(sa.literal(1)).select_from(each).where(each.c.value == value))
            # a plain substring test first (no JSON parsing) rules out almost every row cheaply
            return sa.and_(sa.func.instr(tags, orjson.dumps(value).decode()) > 0, exact)
        # the bare column (not COALESCE'd) so its (column, created_at) index serves the filter
        column = LEDGER.c[ROLLUP_DIMENSIONS.get(name) or DAILY_DIMENSIONS[name]]
        if not value:
            return column.is_(None)
        if hide_index:
            # ``team || ''``: not indexable, so "most expensive where team = X" walks the cost
            # index and stops at the first matches instead of sorting all of the team's calls
            return (column + "") == value
        return column == value


def _positions(count: int) -> list[sa.ColumnElement[Any]]:
    # GROUP BY 1, 2: the grouped expressions carry bound parameters, and PostgreSQL
    # would not see a repeated expression with fresh parameters as the same one.
    return [sa.literal_column(str(i)) for i in range(1, count + 1)]


def _plain_keys(mapping: Any) -> dict[str, Any]:
    # SQLAlchemy's keys are ``quoted_name`` (a str subclass) that orjson refuses.
    return {str(key): value for key, value in mapping.items()}


def _number(name: str, value: Any) -> int | float:
    return float(value or 0.0) if name in FLOAT_MEASURES else int(value or 0)


def _measures_of(row: Any) -> dict[str, Any]:
    mapping = row._mapping
    return {name: _number(name, mapping[name]) for name in MEASURES}


def _cell(row: Any) -> dict[str, float]:
    return {"cost_usd": float(row.cost_usd or 0), "baseline_usd": float(row.baseline_usd or 0),
            "savings_usd": float(row.savings_usd or 0), "requests": int(row.requests or 0)}


def _label(value: Any) -> str:
    return str(value) if value not in (None, "") else NONE


def _iso(bucket: str) -> str:
    return bucket.replace(" ", "T") + (":00:00Z" if len(bucket) == 13 else "T00:00:00Z")


class DashboardQueries:
    """Aggregates for ``/dashboard/api/...``; each method is one or two SQL statements."""

    def __init__(self, ledger: SQLLedger) -> None:
        self.ledger = ledger
        self.dialect = ledger.dialect

    def source(self, query: Query, by: str | None = None, step: str = "day") -> _Source:
        """The smallest table that answers a ``by`` grouping (``None``: totals) at ``step`` resolution."""
        filters = query.filters
        if not filters:
            if by in DAILY_DIMENSIONS and step == "hour":
                return _Source("raw", self.dialect)
            # any one-value-per-call slice sums to the totals
            return _Source("dim", self.dialect, by or "traffic_class")
        if len(filters) == 1 and by in PAIR_BY and step == "day":
            (name,) = filters
            if name in PAIR_DIMENSIONS:
                return _Source("pair", self.dialect, by, pair=name)
        if any(name in DAILY_DIMENSIONS for name in filters) or by in DAILY_DIMENSIONS or step == "hour":
            return _Source("raw", self.dialect)
        return _Source("daily", self.dialect)

    async def _rows(self, stmt: sa.Select[Any]) -> list[Any]:
        async with self.ledger.engine.connect() as conn:
            return list(await conn.execute(stmt))

    async def summary(self, query: Query) -> dict[str, Any]:
        """Totals over the window: spend, baseline, savings, tokens, cache hits, errors, routed calls."""
        if set(query.filters) == {"tag"}:
            return await self._tag_summary(query)
        source = self.source(query)
        stmt = source.where(sa.select(*source.measures()).select_from(source.table), query)
        out = _measures_of((await self._rows(stmt))[0])
        out["resolution"] = source.unit if source.kind != "raw" else "exact"
        return out

    async def _tag_summary(self, query: Query) -> dict[str, Any]:
        """Totals for one tag, exact: the whole days of the window from the tag's day slice
        of ``ledger_dim_rollup``, the partial days at either edge from the raw ledger."""
        since, until = query.since, query.until
        first = None if since is None else _floor(since, "day")
        if first is not None and first < since.astimezone(dt.timezone.utc):
            first += dt.timedelta(days=1)
        last = None if until is None else _floor(until, "day")
        if first is not None and last is not None and first >= last:
            first = last = None  # under two days: no whole day worth a second statement
        parts: list[tuple[_Source, Query]] = []
        if first is None and last is None and (since is not None or until is not None):
            parts.append((_Source("raw", self.dialect), query))
        else:
            if since is not None and first is not None and since.astimezone(dt.timezone.utc) < first:
                parts.append((_Source("raw", self.dialect), Query(since, first, query.filters)))
            if until is not None and last is not None and last < until.astimezone(dt.timezone.utc):
                parts.append((_Source("raw", self.dialect), Query(last, until, query.filters)))
            parts.append((_Source("dim", self.dialect, "tag"), Query(first, last)))
        out = dict.fromkeys(MEASURES, 0)
        value = query.filters["tag"]
        for source, part in parts:
            stmt = source.where(sa.select(*source.measures()).select_from(source.table), part)
            if source.kind == "dim":
                stmt = stmt.where(source.table.c.value == ("" if value == NONE else value))
            for name, number in _measures_of((await self._rows(stmt))[0]).items():
                out[name] += number
        out["resolution"] = "exact"
        return out

    async def timeseries(self, query: Query, by: str | None = None, step: str = "day", top: int = 8) -> dict[str, Any]:
        """Spend per time bucket, split by ``by``: its ``top`` most expensive values, the rest as ``other``."""
        if step not in ("hour", "day"):
            raise ValueError("step must be hour or day")
        if by is not None:
            _check_dimension(by)
        source = self.source(query, by, step)
        if source.kind == "raw" and by == "tag":
            raise ValueError("a time series by tag cannot be filtered or hourly; use the tag breakdown")
        columns: list[Any] = [source.bucket(step).label("bucket")]
        groups: list[str] = []
        stmt_query = query
        others = False
        if by is not None:
            ranked = await self.breakdown(query, by, limit=top + 1)
            groups = [g["group"] for g in ranked[:top]]
            # tags overlap (a call counts in each of its tags): no meaningful "other"
            others = len(ranked) > top and by != "tag"
            key = source.dim(by)
            columns.append(key.label("grp"))
        stmt = sa.select(*columns, *source.measures()).select_from(source.table)
        stmt = source.where(stmt, stmt_query)
        if by is not None:
            # only the top values (an index seek on the rollup); "other" is the total minus them
            stmt = stmt.where(key.in_(["" if g == NONE else g for g in groups]))
        rows = await self._rows(stmt.group_by(*_positions(len(columns))).order_by(sa.literal_column("1")))
        buckets: dict[str, dict[str, dict[str, float]]] = {}
        for row in rows:
            group = "total" if by is None else _label(row.grp)
            buckets.setdefault(_iso(row.bucket), {})[group] = _cell(row)
        if others:
            since = query.since
            if since is not None and source.kind != "raw":
                since = _floor(since, source.unit)  # the same edges as the slice read above
            totals = await self.timeseries(Query(since, query.until, query.filters), None, step)
            for entry in totals["buckets"]:
                cells = buckets.setdefault(entry["t"], {})
                rest = dict(entry["groups"]["total"])
                for cell in cells.values():
                    for name in rest:
                        rest[name] -= cell[name]
                if rest["requests"] > 0:
                    cells["other"] = {name: max(value, 0) if name == "requests" else value for name, value in rest.items()}
            groups.append("other")
        return {"step": step, "by": by, "groups": groups if by is not None else ["total"],
                "resolution": source.unit if source.kind != "raw" else "exact",
                "buckets": [{"t": t, "groups": cells} for t, cells in sorted(buckets.items())]}

    async def breakdown(self, query: Query, by: str, limit: int = 100) -> list[dict[str, Any]]:
        """Spend per value of ``by``, most expensive first."""
        _check_dimension(by)
        source = self.source(query, by)
        if source.kind == "raw" and by == "tag":
            return await self._raw_tag_breakdown(query, limit)
        group = source.dim(by).label("grp")
        cost = sa.func.coalesce(sa.func.sum(source.table.c.cost_usd), 0)
        stmt = sa.select(group, *source.measures()).select_from(source.table).group_by(*_positions(1))
        stmt = source.where(stmt, query).order_by(cost.desc(), sa.literal_column("1")).limit(limit)
        return [{"group": _label(row.grp), **_measures_of(row)} for row in await self._rows(stmt)]

    async def _raw_tag_breakdown(self, query: Query, limit: int) -> list[dict[str, Any]]:
        """Per tag from the raw ledger, one join row per (call, tag).

        The gateway stores each call's tags without repeats (``IdentifyStage``),
        so no DISTINCT is needed: a call counts once in each of its tags.
        """
        source = _Source("raw", self.dialect)
        if self.dialect == "postgresql":
            each = sa.func.jsonb_array_elements_text(LEDGER.c.tags).table_valued("value").render_derived(name="t")
            each = each.lateral()
        else:
            each = sa.func.json_each(LEDGER.c.tags).table_valued("value").alias("t")
        group = sa.func.coalesce(each.c.value, "").label("grp")
        stmt = sa.select(group, *source.measures()).select_from(LEDGER.outerjoin(each, sa.true()))
        stmt = (
            source.where(stmt, query)
            .group_by(*_positions(1))
            .order_by(sa.func.coalesce(sa.func.sum(LEDGER.c.cost_usd), 0).desc(), sa.literal_column("1"))
            .limit(limit)
        )
        return [{"group": _label(row.grp), **_measures_of(row)} for row in await self._rows(stmt)]

    async def savings(self, query: Query) -> list[dict[str, Any]]:
        """Baseline minus cost, attributed to the technique that changed the call.

        A call counts for the first that applies: served from a cache (``cache``),
        served by another model than asked (``routing``), sent as batch traffic
        (``batch``); anything else (``other``: token pruning, prompt-cache
        discounts) keeps its own savings.
        """
        found = {g["group"]: g for g in await self.breakdown(query, "technique", limit=len(TECHNIQUES))}
        empty = dict.fromkeys(MEASURES, 0)
        return [{"technique": name, **{k: v for k, v in found.get(name, empty).items() if k != "group"}}
                for name in TECHNIQUES]

    async def token_savings(self, query: Query) -> list[dict[str, Any]] | None:
        """What each token technique saved (prune, summarize, compress, prompt_cache…), from
        the ledger's per-call ``savings``; ``None`` with filters (only the unfiltered slice is kept)."""
        if query.filters:
            return None
        source = _Source("dim", self.dialect, SAVING_SLICE)
        c = source.table.c
        stmt = sa.select(c.value, sa.func.sum(c.requests).label("requests"), sa.func.sum(c.input_tokens).label("tokens"),
                         sa.func.sum(c.savings_usd).label("usd")).group_by(c.value)
        rows = await self._rows(source.where(stmt, query).order_by(sa.desc("usd")))
        return [{"technique": row.value, "requests": int(row.requests or 0), "tokens": int(row.tokens or 0),
                 "savings_usd": float(row.usd or 0.0)} for row in rows]

    async def routing(self, query: Query, limit: int = 50) -> list[dict[str, Any]]:
        """Calls per route (model asked → model served), most requests first."""
        source = self.source(query, "route")
        group = source.dim("route").label("grp")
        stmt = sa.select(group, *source.measures()).select_from(source.table).group_by(*_positions(1))
        stmt = source.where(stmt, query).order_by(sa.desc("requests"), sa.literal_column("1")).limit(limit)
        out = []
        for row in await self._rows(stmt):
            asked, _, served = str(row.grp).partition(ROUTE_ARROW)
            out.append({"model_asked": _label(asked), "model_served": _label(served), **_measures_of(row)})
        return out

    async def dimension_values(self, query: Query, limit: int = 200) -> dict[str, list[str]]:
        """Values seen in the window for each filterable dimension (for the filter menus): one statement."""
        table = LEDGER_DIM_ROLLUP
        stmt = sa.select(table.c.dimension, table.c.value).distinct().where(table.c.dimension.in_(FILTERS))
        if query.since is not None:
            stmt = stmt.where(table.c.bucket >= _floor(query.since, "day"))
        if query.until is not None:
            stmt = stmt.where(table.c.bucket < query.until)
        out: dict[str, list[str]] = {name: [] for name in FILTERS}
        for dimension, value in await self._rows(stmt.order_by(table.c.dimension, table.c.value)):
            if len(out[dimension]) < limit:
                out[dimension].append(_label(value))
        return out

    async def requests(self, query: Query, order: str = "cost", limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """Single calls, most expensive (``order="cost"``) or newest (``"recent"``) first."""
        source = _Source("raw", self.dialect)
        c = LEDGER.c
        columns: list[Any] = [c.request_id, c.created_at, c.model_asked, c.model_served, c.team, c.feature, c.customer,
                   c.endpoint, c.traffic_class, c.input_tokens, c.output_tokens, c.cost_usd, c.baseline_usd,
                   c.cache_status, c.outcome, c.duration_ms]
        stmt = source.where(sa.select(*columns), query, scan_by_cost=order == "cost")
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
