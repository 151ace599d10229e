"""Dashboard rollups: per-dimension and daily pre-aggregated spend, and a cost index.

Revision ID: 0005_dashboard
Revises: 0004_jobs
Create Date: 2026-11-25

``ledger_dim_rollup`` sums the ledger per time bucket and value of each
dimension; ``ledger_daily`` per day and combination of the low-cardinality
dimensions (``tokenomy.store.rollup`` explains why). Written out by hand, as
in every revision. Existing ledger rows are rolled up by ``SQLLedger.start()``
right after the upgrade (it rebuilds the rollups when they are empty and the
ledger is not), so this revision carries no copy of the aggregation SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dashboard"
down_revision: str | None = "0004_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DIMS = ("model_served", "model_asked", "provider", "org", "team", "feature", "endpoint", "traffic_class",
         "cache_status", "outcome")
_MEASURES = (("requests", sa.BigInteger), ("input_tokens", sa.BigInteger), ("output_tokens", sa.BigInteger),
             ("cached_tokens", sa.BigInteger), ("cost_usd", sa.Float), ("baseline_usd", sa.Float),
             ("savings_usd", sa.Float), ("unknown_cost_count", sa.BigInteger), ("duration_ms_sum", sa.Float),
             ("upstream_ms_sum", sa.Float), ("upstream_count", sa.BigInteger), ("cache_hits", sa.BigInteger),
             ("cache_lookups", sa.BigInteger), ("errors", sa.BigInteger), ("routed", sa.BigInteger))


def upgrade() -> None:
    op.create_table(
        "ledger_dim_rollup",
        sa.Column("dimension", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), primary_key=True),
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(name, kind(), nullable=False) for name, kind in _MEASURES),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "ledger_daily",
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, sa.String(), nullable=False) for name in _DIMS),
        *(sa.Column(name, kind(), nullable=False) for name, kind in _MEASURES),
        sa.UniqueConstraint("bucket", *_DIMS, name="uq_ledger_daily_key"),
    )
    for column in ("team", "feature", "model_served"):
        op.create_index(f"ix_ledger_daily_{column}", "ledger_daily", [column, "bucket"])
    op.create_index("ix_ledger_cost_usd", "ledger", ["cost_usd"])


def downgrade() -> None:
    op.drop_index("ix_ledger_cost_usd", "ledger")
    op.drop_table("ledger_daily")
    op.drop_table("ledger_dim_rollup")
