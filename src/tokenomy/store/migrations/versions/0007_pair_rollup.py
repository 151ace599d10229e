"""Dashboard pair rollup: per day, a low-cardinality filter value crossed with customer or tag.

Revision ID: 0007_pair_rollup
Revises: 0006_access
Create Date: 2026-11-25

``ledger_pair_daily`` answers "team = X, by customer" and "team = X, by tag"
(and the same for feature) from a few thousand rows instead of the team's raw
calls (``tokenomy.store.rollup``). As in 0005, existing ledger rows are rolled up
by ``SQLLedger.start()`` right after the upgrade (it fills this table when it is
empty and the ledger is not), so this revision carries no aggregation SQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pair_rollup"
down_revision: str | None = "0006_access"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MEASURES = (("requests", sa.BigInteger), ("input_tokens", sa.BigInteger), ("output_tokens", sa.BigInteger),
             ("cached_tokens", sa.BigInteger), ("cost_usd", sa.Float), ("baseline_usd", sa.Float),
             ("savings_usd", sa.Float), ("unknown_cost_count", sa.BigInteger), ("duration_ms_sum", sa.Float),
             ("upstream_ms_sum", sa.Float), ("upstream_count", sa.BigInteger), ("cache_hits", sa.BigInteger),
             ("cache_lookups", sa.BigInteger), ("errors", sa.BigInteger), ("routed", sa.BigInteger))


def upgrade() -> None:
    op.create_table(
        "ledger_pair_daily",
        sa.Column("dimension", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), primary_key=True),
        sa.Column("by_dimension", sa.String(), primary_key=True),
        sa.Column("by_value", sa.String(), primary_key=True),
        sa.Column("bucket", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(name, kind(), nullable=False) for name, kind in _MEASURES),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("ledger_pair_daily")
