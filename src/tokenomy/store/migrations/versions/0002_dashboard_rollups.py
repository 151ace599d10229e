"""Dashboard rollups: hourly and daily pre-aggregated spend, and a cost index.

Revision ID: 0002_dashboard
Revises: 0001_ledger
Create Date: 2026-11-25

``ledger_hourly`` sums the ledger per hour and combination of low-cardinality
dimensions; ``ledger_daily_dim`` per day and customer / tag / key
(``tokenomy.store.rollup`` explains why). Existing ledger rows are rolled up
here, so upgrading a gateway with history shows it at once. The tables are
written out by hand, as in every revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_dashboard"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DIMS = ("model_served", "model_asked", "provider", "org", "team", "feature", "endpoint", "traffic_class",
         "cache_status", "outcome")
_HOURLY = (("requests", sa.BigInteger), ("input_tokens", sa.BigInteger), ("output_tokens", sa.BigInteger),
           ("cached_tokens", sa.BigInteger), ("cost_usd", sa.Float), ("baseline_usd", sa.Float),
           ("savings_usd", sa.Float), ("unknown_cost_count", sa.BigInteger), ("duration_ms_sum", sa.Float),
           ("upstream_ms_sum", sa.Float), ("upstream_count", sa.BigInteger))
_DAILY = (("requests", sa.BigInteger), ("input_tokens", sa.BigInteger), ("output_tokens", sa.BigInteger),
          ("cost_usd", sa.Float), ("baseline_usd", sa.Float), ("savings_usd", sa.Float),
          ("unknown_cost_count", sa.BigInteger))


def upgrade() -> None:
    op.create_table(
        "ledger_hourly",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.String(), nullable=False) for name in _DIMS),
        *(sa.Column(name, kind(), nullable=False) for name, kind in _HOURLY),
        sa.UniqueConstraint("bucket", *_DIMS, name="uq_ledger_hourly_key"),
    )
    op.create_table(
        "ledger_daily_dim",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dimension", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        *(sa.Column(name, kind(), nullable=False) for name, kind in _DAILY),
        sa.UniqueConstraint("bucket", "dimension", "value", name="uq_ledger_daily_dim_key"),
    )
    op.create_index("ix_ledger_cost_usd", "ledger", ["cost_usd"])
    dialect = op.get_bind().dialect.name
    for statement in _backfill(dialect):
        op.execute(statement)


def _backfill(dialect: str) -> list[str]:
    dims = ", ".join(_DIMS)
    if dialect == "postgresql":
        hour = "date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        day = "date_trunc('day', l.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
        tags = ("(SELECT DISTINCT l.id, t.value AS tag FROM ledger l "
                "LEFT JOIN LATERAL jsonb_array_elements_text(l.tags) AS t(value) ON true)")
    else:
        hour = "substr(created_at, 1, 13) || ':00:00.000000'"
        day = "substr(l.created_at, 1, 10) || ' 00:00:00.000000'"
        tags = "(SELECT DISTINCT l.id, t.value AS tag FROM ledger l LEFT JOIN json_each(l.tags) AS t ON 1)"
    savings = ("CASE WHEN {p}cost_usd IS NOT NULL AND {p}baseline_usd IS NOT NULL "
               "THEN {p}baseline_usd - {p}cost_usd ELSE 0 END")
    hourly = (
        f"INSERT INTO ledger_hourly (bucket, {dims}, {', '.join(n for n, _ in _HOURLY)}) "
        f"SELECT {hour}, {', '.join(f'COALESCE({d}, {chr(39) * 2})' for d in _DIMS)}, count(*), sum(input_tokens), "
        f"sum(output_tokens), sum(cached_tokens), COALESCE(sum(cost_usd), 0), COALESCE(sum(baseline_usd), 0), "
        f"sum({savings.format(p='')}), sum(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END), "
        f"COALESCE(sum(duration_ms), 0), COALESCE(sum(upstream_ms), 0), count(upstream_ms) "
        f"FROM ledger GROUP BY {', '.join(str(i) for i in range(1, len(_DIMS) + 2))}"
    )
    measures = (f"count(*), sum(l.input_tokens), sum(l.output_tokens), COALESCE(sum(l.cost_usd), 0), "
                f"COALESCE(sum(l.baseline_usd), 0), sum({savings.format(p='l.')}), "
                f"sum(CASE WHEN l.cost_usd IS NULL THEN 1 ELSE 0 END)")
    insert = f"INSERT INTO ledger_daily_dim (bucket, dimension, value, {', '.join(n for n, _ in _DAILY)}) "
    return [
        hourly,
        insert + f"SELECT {day}, 'customer', COALESCE(l.customer, ''), {measures} FROM ledger l GROUP BY 1, 3",
        insert + f"SELECT {day}, 'key', COALESCE(l.key_id, ''), {measures} FROM ledger l GROUP BY 1, 3",
        insert + f"SELECT {day}, 'tag', COALESCE(x.tag, ''), {measures} FROM {tags} x JOIN ledger l ON l.id = x.id "
        "GROUP BY 1, 3",
    ]


def downgrade() -> None:
    op.drop_index("ix_ledger_cost_usd", "ledger")
    op.drop_table("ledger_daily_dim")
    op.drop_table("ledger_hourly")
