"""Pre-aggregated spend: hourly and daily rollups of the ledger, kept by the writer.

The dashboard must answer in well under a second on millions of calls, and
scanning the raw ledger for every chart does not (a full ``GROUP BY`` over a
million rows takes about a second on SQLite). So every flush of the ledger
writer also adds its rows into two small tables, in the same transaction:

``ledger_hourly``
    one row per hour and combination of the low-cardinality dimensions
    (``ROLLUP_DIMENSIONS``: model asked/served, provider, org, team, feature,
    endpoint, traffic class, cache status, outcome) with the sums the charts need.
    Real traffic has far fewer combinations than calls (a feature belongs to one
    team, an endpoint to one feature), which is what makes this small.
``ledger_daily_dim``
    one row per UTC day and value of a high-cardinality dimension (customer, tag,
    key). Crossing those with the others would make the rollup as big as the
    ledger, so breakdowns by them are by whole day, and filters on them read the
    raw ledger (indexed by time).

Only rows the ledger really inserted are added (``INSERT … RETURNING`` skips a
duplicate ``request_id``), so a retried batch is never counted twice. NULL
dimension values are stored as ``''`` (unique keys treat NULLs as distinct).
``rebuild_rollups`` recomputes both tables from the ledger in SQL (after a bulk
load, or by the migration that introduced them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

#: Dimension → ledger column, for the hourly rollup (public name: ``model`` is the model served).
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
#: High-cardinality dimensions rolled up per day only → ledger column.
DAILY_DIMENSIONS: dict[str, str] = {"customer": "customer", "tag": "tags", "key": "key_id"}

HOURLY_MEASURES = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "baseline_usd",
    "savings_usd",
    "unknown_cost_count",
    "duration_ms_sum",
    "upstream_ms_sum",
    "upstream_count",
)
DAILY_MEASURES = ("requests", "input_tokens", "output_tokens", "cost_usd", "baseline_usd", "savings_usd", "unknown_cost_count")

_FLOAT_MEASURES = {"cost_usd", "baseline_usd", "savings_usd", "duration_ms_sum", "upstream_ms_sum"}


def _measure(name: str) -> sa.Column[Any]:
    kind: sa.types.TypeEngine[Any] = sa.Float() if name in _FLOAT_MEASURES else sa.BigInteger()
    return sa.Column(name, kind, nullable=False)


def define_tables(metadata: sa.MetaData, datetime_type: sa.types.TypeEngine[Any]) -> tuple[sa.Table, sa.Table]:
    hourly_columns = list(ROLLUP_DIMENSIONS.values())
    hourly = sa.Table(
        "ledger_hourly",
        metadata,
        sa.Column("bucket", datetime_type, nullable=False),
        *(sa.Column(column, sa.String(), nullable=False) for column in hourly_columns),
        *(_measure(name) for name in HOURLY_MEASURES),
        sa.UniqueConstraint("bucket", *hourly_columns, name="uq_ledger_hourly_key"),
    )
    daily = sa.Table(
        "ledger_daily_dim",
        metadata,
        sa.Column("bucket", datetime_type, nullable=False),
        sa.Column("dimension", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        *(_measure(name) for name in DAILY_MEASURES),
        sa.UniqueConstraint("bucket", "dimension", "value", name="uq_ledger_daily_dim_key"),
    )
    return hourly, daily


class RollupWriter:
    """Adds freshly inserted ledger rows into the rollups (inside the writer's transaction)."""

    def __init__(self, dialect: str, hourly: sa.Table, daily: sa.Table) -> None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._hourly_keys = ["bucket", *ROLLUP_DIMENSIONS.values()]
        self._daily_keys = ["bucket", "dimension", "value"]
        self._hourly_upsert = self._upsert(insert, hourly, self._hourly_keys, HOURLY_MEASURES)
        self._daily_upsert = self._upsert(insert, daily, self._daily_keys, DAILY_MEASURES)

    @staticmethod
    def _upsert(insert: Any, table: sa.Table, keys: list[str], measures: Sequence[str]) -> Any:
        stmt = insert(table)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={name: table.c[name] + stmt.excluded[name] for name in measures}
        )

    async def add(self, conn: Any, rows: Iterable[Any]) -> None:
        hourly: dict[tuple[Any, ...], list[float]] = {}
        daily: dict[tuple[Any, ...], list[float]] = {}
        dims = list(ROLLUP_DIMENSIONS.values())
        for row in rows:
            created: dt.datetime = row.created_at
            hour = created.replace(minute=0, second=0, microsecond=0)
            cost, baseline = row.cost_usd, row.baseline_usd
            savings = baseline - cost if cost is not None and baseline is not None else 0.0
            unknown = 1 if cost is None else 0
            key = (hour, *(getattr(row, column) or "" for column in dims))
            sums = hourly.get(key)
            if sums is None:
                sums = hourly[key] = [0] * len(HOURLY_MEASURES)
            sums[0] += 1
            sums[1] += row.input_tokens
            sums[2] += row.output_tokens
            sums[3] += row.cached_tokens
            sums[4] += cost or 0.0
            sums[5] += baseline or 0.0
            sums[6] += savings
            sums[7] += unknown
            sums[8] += row.duration_ms or 0.0
            if row.upstream_ms is not None:
                sums[9] += row.upstream_ms
                sums[10] += 1
            day = hour.replace(hour=0)
            values = [("customer", row.customer or ""), ("key", row.key_id or "")]
            values += [("tag", tag) for tag in dict.fromkeys(row.tags)] or [("tag", "")]
            for dimension, value in values:
                dsums = daily.get((day, dimension, value))
                if dsums is None:
                    dsums = daily[(day, dimension, value)] = [0] * len(DAILY_MEASURES)
                dsums[0] += 1
                dsums[1] += row.input_tokens
                dsums[2] += row.output_tokens
                dsums[3] += cost or 0.0
                dsums[4] += baseline or 0.0
                dsums[5] += savings
                dsums[6] += unknown
        # Sorted keys: concurrent writers (replicas) then lock rollup rows in one
        # order, so their upserts queue instead of deadlocking.
        if hourly:
            names = self._hourly_keys + list(HOURLY_MEASURES)
            params = [dict(zip(names, (*key, *hourly[key]))) for key in sorted(hourly, key=_sort_key)]
            await conn.execute(self._hourly_upsert, params)
        if daily:
            names = self._daily_keys + list(DAILY_MEASURES)
            params = [dict(zip(names, (*key, *daily[key]))) for key in sorted(daily, key=_sort_key)]
            await conn.execute(self._daily_upsert, params)


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return (key[0].timestamp(), *key[1:])


def rebuild_statements(dialect: str) -> list[str]:
    """SQL that recomputes both rollups from the ledger (after deleting them)."""
    dims = list(ROLLUP_DIMENSIONS.values())
    if dialect == "postgresql":
        hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        day = "date_trunc('day', l.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    else:
        hour = "substr(created_at, 1, 13) || ':00:00.000000'"
        day = "substr(l.created_at, 1, 10) || ' 00:00:00.000000'"
    savings = "CASE WHEN {p}cost_usd IS NOT NULL AND {p}baseline_usd IS NOT NULL THEN {p}baseline_usd - {p}cost_usd ELSE 0 END"
    dim_select = ", ".join(f"COALESCE({d}, '')" for d in dims)
    hourly = (
        f"INSERT INTO ledger_hourly (bucket, {', '.join(dims)}, {', '.join(HOURLY_MEASURES)}) "
        f"SELECT {hour}, {dim_select}, count(*), sum(input_tokens), sum(output_tokens), sum(cached_tokens), "
        f"COALESCE(sum(cost_usd), 0), COALESCE(sum(baseline_usd), 0), sum({savings.format(p='')}), "
        f"sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END), COALESCE(sum(duration_ms), 0), "
        f"COALESCE(sum(upstream_ms), 0), count(upstream_ms) "
        f"FROM ledger GROUP BY {', '.join(str(i) for i in range(1, len(dims) + 2))}"
    )
    daily_measures = (
        f"count(*), sum(l.input_tokens), sum(l.output_tokens), COALESCE(sum(l.cost_usd), 0), "
        f"COALESCE(sum(l.baseline_usd), 0), sum({savings.format(p='l.')}), "
        f"sum(CASE WHEN l.cost_usd IS NULL THEN 1 ELSE 0 END)"
    )
    insert_daily = f"INSERT INTO ledger_daily_dim (bucket, dimension, value, {', '.join(DAILY_MEASURES)}) "
    statements = ["DELETE FROM ledger_hourly", "DELETE FROM ledger_daily_dim", hourly]
    for dimension, column in (("customer", "customer"), ("key", "key_id")):
        statements.append(
            insert_daily + f"SELECT {day}, '{dimension}', COALESCE(l.{column}, ''), {daily_measures} "
            f"FROM ledger l GROUP BY 1, 3"
        )
    # A row repeating a tag counts once in it, as the writer does: DISTINCT tags per row.
    if dialect == "postgresql":
        tags = (
            "(SELECT DISTINCT l.id, t.value AS tag FROM ledger l "
            "LEFT JOIN LATERAL jsonb_array_elements_text(l.tags) AS t(value) ON true)"
        )
    else:
        tags = "(SELECT DISTINCT l.id, t.value AS tag FROM ledger l LEFT JOIN json_each(l.tags) AS t ON 1)"
    statements.append(
        insert_daily + f"SELECT {day}, 'tag', COALESCE(x.tag, ''), {daily_measures} "
        f"FROM {tags} x JOIN ledger l ON l.id = x.id GROUP BY 1, 3"
    )
    return statements
