"""Pre-aggregated spend for the dashboard, kept by the ledger writer.

Scanning a million ledger rows for every chart takes seconds, so each flush of
the writer also adds its rows, in the same transaction, into two small tables:

``ledger_dim_rollup`` — one row per (time bucket, dimension, value)
    Every dimension separately: model, team, feature, endpoint… per **hour**;
    customer, tag and key (thousands of values) per **day**; plus two derived
    dimensions, ``route`` (``asked → served``) and ``technique`` (the saving
    technique a call is attributed to, ``technique_of``). An unfiltered chart or
    breakdown reads one slice: a few thousand rows a month.
``ledger_daily`` — one row per day and *combination* of the low-cardinality
    dimensions, for filtered views (team = X, by model). Real traffic has far
    fewer combinations per day than calls.
``ledger_pair_daily`` — one row per day, filter dimension value (``PAIR_DIMENSIONS``:
    team, feature) and customer or tag (``PAIR_BY``): a filtered customer or tag
    breakdown (team = X, by customer) reads one team's slice instead of its raw
    calls. At most teams × customers rows a day; team × tag is tiny.

All carry the same sums (``MEASURES``), including cache hits, errors and
routed calls, so any slice answers the summary tiles too. Only rows the ledger
really inserted are added (``INSERT … RETURNING`` skips a duplicate
``request_id``): a retried batch is never counted twice. NULL values are stored
as ``''`` (unique keys would treat NULLs as distinct). ``rebuild_statements``
recomputes the tables from the ledger in SQL (after a bulk load).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

#: Low-cardinality dimensions → ledger column (``model`` is the model served).
ROLLUP_DIMENSIONS: dict[str, str] = {
    "model": "model_served",
    "model_asked": "model_asked",
    "provider": "provider",
    "org": "org",
    "team": "team",
    "feature": "feature",
    "endpoint": "endpoint",
    "traffic_class": "traffic_class",
    "cache_status": "cache_status",
    "outcome": "outcome",
}
#: High-cardinality dimensions, rolled up per day → ledger column.
DAILY_DIMENSIONS: dict[str, str] = {"customer": "customer", "tag": "tags", "key": "key_id"}
#: Dimensions computed from several columns.
DERIVED_DIMENSIONS = ("route", "technique")
#: The ``saving`` slice holds the ledger's per-call token-technique savings (``savings``
#: column: prune, summarize, compress, prompt_cache…), one value per technique; its
#: measures differ (see ``_saving_measures``), so it is not a general dimension.
SAVING_SLICE = "saving"
#: Low-cardinality filters crossed, per day, with each high-cardinality dimension in ``PAIR_BY``.
PAIR_DIMENSIONS = ("team", "feature")
PAIR_BY = ("customer", "tag")
ROUTE_ARROW = " → "

#: ``cache_status`` values that are not a hit (anything else is: ``hit-exact``, ``hit-semantic``, ``coalesced`` …).
CACHE_NOT_HIT = frozenset({"none", "miss", "bypass", "off", "error"})
#: ``cache_status`` values meaning no cache was consulted.
CACHE_NOT_LOOKED_UP = frozenset({"none", "off"})
#: Savings attributed to a technique, in the order a call is classified (first match wins).
TECHNIQUES = ("cache", "routing", "batch", "other")

MEASURES = (
    "requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd", "baseline_usd", "savings_usd",
    "unknown_cost_count", "duration_ms_sum", "upstream_ms_sum", "upstream_count", "cache_hits", "cache_lookups",
    "errors", "routed",
)
FLOAT_MEASURES = frozenset({"cost_usd", "baseline_usd", "savings_usd", "duration_ms_sum", "upstream_ms_sum"})


def technique_of(cache_status: str, model_asked: str, model_served: str | None, traffic_class: str) -> str:
    """The technique a call's savings are attributed to (see ``TECHNIQUES``)."""
    if cache_status not in CACHE_NOT_HIT and cache_status not in CACHE_NOT_LOOKED_UP:
        return "cache"
    if model_served and model_served != model_asked:
        return "routing"
    if traffic_class == "batch":
        return "batch"
    return "other"


def _measure(name: str) -> sa.Column[Any]:
    kind: sa.types.TypeEngine[Any] = sa.Float() if name in FLOAT_MEASURES else sa.BigInteger()
    return sa.Column(name, kind, nullable=False)


def define_tables(
    metadata: sa.MetaData, datetime_type: sa.types.TypeEngine[Any]
) -> tuple[sa.Table, sa.Table, sa.Table]:
    dims = list(ROLLUP_DIMENSIONS.values())
    # Keyed value first: a breakdown groups by value in key order (no sort), and a
    # time series of a few values seeks straight to them. On SQLite the table *is*
    # that key (WITHOUT ROWID): no lookups from an index into a table.
    by_dimension = sa.Table(
        "ledger_dim_rollup",
        metadata,
        sa.Column("dimension", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), primary_key=True),
        sa.Column("bucket", datetime_type, primary_key=True),
        *(_measure(name) for name in MEASURES),
        sqlite_with_rowid=False,
    )
    daily = sa.Table(
        "ledger_daily",
        metadata,
        sa.Column("bucket", datetime_type, nullable=False),
        *(sa.Column(column, sa.String(), nullable=False) for column in dims),
        *(_measure(name) for name in MEASURES),
        sa.UniqueConstraint("bucket", *dims, name="uq_ledger_daily_key"),
        *(sa.Index(f"ix_ledger_daily_{column}", column, "bucket") for column in ("team", "feature", "model_served")),
    )
    # (team, X, customer) first: one filtered breakdown is one key range, grouped in key order.
    pair = sa.Table(
        "ledger_pair_daily",
        metadata,
        sa.Column("dimension", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), primary_key=True),
        sa.Column("by_dimension", sa.String(), primary_key=True),
        sa.Column("by_value", sa.String(), primary_key=True),
        sa.Column("bucket", datetime_type, primary_key=True),
        *(_measure(name) for name in MEASURES),
        sqlite_with_rowid=False,
    )
    return by_dimension, daily, pair


def _row_measures(row: Any) -> list[float]:
    cost, baseline = row.cost_usd, row.baseline_usd
    status = row.cache_status
    served = row.model_served
    return [
        1, row.input_tokens, row.output_tokens, row.cached_tokens, cost or 0.0, baseline or 0.0,
        baseline - cost if cost is not None and baseline is not None else 0.0,
        1 if cost is None else 0, row.duration_ms or 0.0,
        row.upstream_ms or 0.0, 0 if row.upstream_ms is None else 1,
        0 if status in CACHE_NOT_HIT or status in CACHE_NOT_LOOKED_UP else 1,
        0 if status in CACHE_NOT_LOOKED_UP else 1,
        0 if row.outcome == "ok" else 1,
        1 if served and served != row.model_asked else 0,
    ]


def _saving_measures(saving: dict[str, Any]) -> list[float]:
    """The ``saving`` slice: calls that used a token technique, tokens it saved (in
    ``input_tokens``) and USD (in ``savings_usd``); the other sums stay 0."""
    values: list[float] = [0] * len(MEASURES)
    values[0] = 1
    values[1] = int(saving.get("tokens") or 0)
    values[6] = float(saving.get("usd") or 0.0)
    return values


def _add(target: dict[tuple[Any, ...], list[float]], key: tuple[Any, ...], values: list[float]) -> None:
    # Lists are never changed in place, so one row's values can start several sums.
    sums = target.get(key)
    target[key] = values if sums is None else list(map(operator.add, sums, values))


class RollupWriter:
    """Adds freshly inserted ledger rows into the rollups (inside the writer's transaction)."""

    def __init__(self, dialect: str, by_dimension: sa.Table, daily: sa.Table, pair: sa.Table) -> None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._dim_keys = ["dimension", "value", "bucket"]
        self._daily_keys = ["bucket", *ROLLUP_DIMENSIONS.values()]
        self._pair_keys = ["dimension", "value", "by_dimension", "by_value", "bucket"]
        self._dim_upsert = self._upsert(insert, by_dimension, self._dim_keys)
        self._daily_upsert = self._upsert(insert, daily, self._daily_keys)
        self._pair_upsert = self._upsert(insert, pair, self._pair_keys)
        names = list(ROLLUP_DIMENSIONS)
        self._pair_index = [(name, names.index(name)) for name in PAIR_DIMENSIONS]

    @staticmethod
    def _upsert(insert: Any, table: sa.Table, keys: list[str]) -> Any:
        stmt = insert(table)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={name: table.c[name] + stmt.excluded[name] for name in MEASURES}
        )

    async def add(self, conn: Any, rows: Iterable[Any]) -> None:
        by_dimension: dict[tuple[Any, ...], list[float]] = {}
        daily: dict[tuple[Any, ...], list[float]] = {}
        pair: dict[tuple[Any, ...], list[float]] = {}
        pair_index = self._pair_index
        columns = list(ROLLUP_DIMENSIONS.items())
        for row in rows:
            values = _row_measures(row)
            hour = row.created_at.replace(minute=0, second=0, microsecond=0)
            day = hour.replace(hour=0)
            dims = [getattr(row, column) or "" for _, column in columns]
            _add(daily, (day, *dims), values)
            for (name, _), value in zip(columns, dims):
                _add(by_dimension, (name, value, hour), values)
            served = row.model_served or ""
            _add(by_dimension, ("route", row.model_asked + ROUTE_ARROW + served, hour), values)
            technique = technique_of(row.cache_status, row.model_asked, row.model_served, row.traffic_class)
            _add(by_dimension, ("technique", technique, hour), values)
            customer = row.customer or ""
            _add(by_dimension, ("customer", customer, day), values)
            _add(by_dimension, ("key", row.key_id or "", day), values)
            tags = tuple(dict.fromkeys(row.tags)) or ("",)
            for tag in tags:
                _add(by_dimension, ("tag", tag, day), values)
            for name, index in pair_index:
                value = dims[index]
                _add(pair, (name, value, "customer", customer, day), values)
                for tag in tags:
                    _add(pair, (name, value, "tag", tag, day), values)
            for technique, saving in (getattr(row, "savings", None) or {}).items():
                _add(by_dimension, ("saving", technique, hour), _saving_measures(saving))
        # Sorted keys: concurrent writers (replicas) lock rollup rows in one order,
        # so their upserts queue instead of deadlocking.
        if by_dimension:
            await conn.execute(self._dim_upsert, _params(by_dimension, self._dim_keys, lambda k: (k[0], k[1], k[2].timestamp())))
        if daily:
            await conn.execute(self._daily_upsert, _params(daily, self._daily_keys, lambda k: (k[0].timestamp(), *k[1:])))
        if pair:
            await conn.execute(self._pair_upsert, _params(pair, self._pair_keys, lambda k: (*k[:4], k[4].timestamp())))


def _params(sums: dict[tuple[Any, ...], list[float]], keys: Sequence[str], order: Any) -> list[dict[str, Any]]:
    names = [*keys, *MEASURES]
    return [dict(zip(names, (*key, *sums[key]))) for key in sorted(sums, key=order)]


def _rebuild_parts(dialect: str) -> tuple[str, str, str]:
    """The day bucket, the (call id, tag) subquery and the measures, in ``dialect``'s SQL."""
    q = _sql_list
    if dialect == "postgresql":
        day = "date_trunc('day', l.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        tags = ("(SELECT DISTINCT l.id, t.value AS tag FROM ledger l "
                "LEFT JOIN LATERAL jsonb_array_elements_text(l.tags) AS t(value) ON true)")
    else:
        day = "substr(l.created_at, 1, 10) || ' 00:00:00.000000'"
        tags = "(SELECT DISTINCT l.id, t.value AS tag FROM ledger l LEFT JOIN json_each(l.tags) AS t ON 1)"
    hit = f"l.cache_status NOT IN ({q(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP)})"
    routed = "l.model_served IS NOT NULL AND l.model_served <> '' AND l.model_served <> l.model_asked"
    measures = ", ".join([
        "count(*)", "sum(l.input_tokens)", "sum(l.output_tokens)", "sum(l.cached_tokens)",
        "COALESCE(sum(l.cost_usd), 0)", "COALESCE(sum(l.baseline_usd), 0)",
        "COALESCE(sum(CASE WHEN l.cost_usd IS NOT NULL AND l.baseline_usd IS NOT NULL "
        "THEN l.baseline_usd - l.cost_usd ELSE 0 END), 0)",
        "sum(CASE WHEN l.cost_usd IS NULL THEN 1 ELSE 0 END)", "COALESCE(sum(l.duration_ms), 0)",
        "COALESCE(sum(l.upstream_ms), 0)", "count(l.upstream_ms)",
        f"sum(CASE WHEN {hit} THEN 1 ELSE 0 END)",
        f"sum(CASE WHEN l.cache_status IN ({q(CACHE_NOT_LOOKED_UP)}) THEN 0 ELSE 1 END)",
        "sum(CASE WHEN l.outcome = 'ok' THEN 0 ELSE 1 END)",
        f"sum(CASE WHEN {routed} THEN 1 ELSE 0 END)",
    ])
    return day, tags, measures


def rebuild_statements(dialect: str) -> list[str]:
    """SQL that recomputes the rollups from the ledger."""
    if dialect == "postgresql":
        hour = "date_trunc('hour', l.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:
        hour = "substr(l.created_at, 1, 13) || ':00:00.000000'"
    day, tags, measures = _rebuild_parts(dialect)
    hit = f"l.cache_status NOT IN ({_sql_list(CACHE_NOT_HIT | CACHE_NOT_LOOKED_UP)})"
    routed = "l.model_served IS NOT NULL AND l.model_served <> '' AND l.model_served <> l.model_asked"
    into_dim = f"INSERT INTO ledger_dim_rollup (dimension, bucket, value, {', '.join(MEASURES)}) "
    statements = ["DELETE FROM ledger_dim_rollup", "DELETE FROM ledger_daily", *pair_rebuild_statements(dialect)]
    dims = list(ROLLUP_DIMENSIONS.values())
    statements.append(
        f"INSERT INTO ledger_daily (bucket, {', '.join(dims)}, {', '.join(MEASURES)}) "
        f"SELECT {day}, {', '.join(f'COALESCE(l.{d}, {chr(39) * 2})' for d in dims)}, {measures} "
        f"FROM ledger l GROUP BY {', '.join(str(i) for i in range(1, len(dims) + 2))}"
    )
    for name, column in ROLLUP_DIMENSIONS.items():
        statements.append(into_dim + f"SELECT '{name}', {hour}, COALESCE(l.{column}, ''), {measures} FROM ledger l GROUP BY 2, 3")
    statements.append(
        into_dim + f"SELECT 'route', {hour}, l.model_asked || '{ROUTE_ARROW}' || COALESCE(l.model_served, ''), "
        f"{measures} FROM ledger l GROUP BY 2, 3"
    )
    technique = (f"CASE WHEN {hit} THEN 'cache' WHEN {routed} THEN 'routing' "
                 "WHEN l.traffic_class = 'batch' THEN 'batch' ELSE 'other' END")
    statements.append(into_dim + f"SELECT 'technique', {hour}, {technique}, {measures} FROM ledger l GROUP BY 2, 3")
    for name, column in (("customer", "customer"), ("key", "key_id")):
        statements.append(into_dim + f"SELECT '{name}', {day}, COALESCE(l.{column}, ''), {measures} FROM ledger l GROUP BY 2, 3")
    statements.append(
        into_dim + f"SELECT 'tag', {day}, COALESCE(x.tag, ''), {measures} FROM {tags} x JOIN ledger l ON l.id = x.id "
        "GROUP BY 2, 3"
    )
    if dialect == "postgresql":
        saving = ("FROM ledger l CROSS JOIN LATERAL jsonb_each(l.savings) AS s(key, value)",
                  "COALESCE(sum((s.value->>'tokens')::bigint), 0)", "COALESCE(sum((s.value->>'usd')::float8), 0)")
    else:
        saving = ("FROM ledger l, json_each(l.savings) AS s",
                  "COALESCE(sum(json_extract(s.value, '$.tokens')), 0)", "COALESCE(sum(json_extract(s.value, '$.usd')), 0)")
    zeros = ", ".join("0" for _ in MEASURES[2:6])
    tail = ", ".join("0" for _ in MEASURES[7:])
    statements.append(
        into_dim + f"SELECT '{SAVING_SLICE}', {hour}, s.key, count(*), {saving[1]}, {zeros}, {saving[2]}, {tail} "
        f"{saving[0]} GROUP BY 2, 3"
    )
    return statements


def pair_rebuild_statements(dialect: str) -> list[str]:
    """SQL that recomputes ``ledger_pair_daily`` alone (backfill of a ledger older than it)."""
    day, tags, measures = _rebuild_parts(dialect)
    into = (f"INSERT INTO ledger_pair_daily (dimension, value, by_dimension, by_value, bucket, {', '.join(MEASURES)}) ")
    statements = ["DELETE FROM ledger_pair_daily"]
    for name in PAIR_DIMENSIONS:
        column = ROLLUP_DIMENSIONS[name]
        statements.append(
            into + f"SELECT '{name}', COALESCE(l.{column}, ''), 'customer', COALESCE(l.customer, ''), {day}, "
            f"{measures} FROM ledger l GROUP BY 2, 4, 5"
        )
        statements.append(
            into + f"SELECT '{name}', COALESCE(l.{column}, ''), 'tag', COALESCE(x.tag, ''), {day}, "
            f"{measures} FROM {tags} x JOIN ledger l ON l.id = x.id GROUP BY 2, 4, 5"
        )
    return statements


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + value.replace("'", "''") + "'" for value in sorted(values))
