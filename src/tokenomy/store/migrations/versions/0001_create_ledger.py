"""Create the ledger table and its report indexes.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-01-01

Written out by hand (not imported from ``sql_ledger.LEDGER``) so this revision
keeps describing the first schema whatever the live table becomes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tags_json() -> sa.types.TypeEngine:
    # JSONB on PostgreSQL so reports can unnest tags with jsonb_array_elements_text.
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("api", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=True),
        sa.Column("traffic_class", sa.String(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("key_id", sa.String(), nullable=True),
        sa.Column("org", sa.String(), nullable=True),
        sa.Column("team", sa.String(), nullable=True),
        sa.Column("feature", sa.String(), nullable=True),
        sa.Column("customer", sa.String(), nullable=True),
        sa.Column("tags", _tags_json(), nullable=False),
        sa.Column("model_asked", sa.String(), nullable=False),
        sa.Column("model_served", sa.String(), nullable=True),
        sa.Column("provider", sa.String(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("baseline_usd", sa.Float(), nullable=True),
        sa.Column("cache_status", sa.String(), nullable=False),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("upstream_ms", sa.Float(), nullable=True),
        sa.Column("stage_ms", sa.JSON(), nullable=False),
        sa.Column("cost_items", sa.JSON(), nullable=False),
        sa.UniqueConstraint("request_id", name="uq_ledger_request_id"),
    )
    op.create_index("ix_ledger_created_at", "ledger", ["created_at"])
    for dimension in ("team", "feature", "customer", "model_served"):
        op.create_index(f"ix_ledger_{dimension}_created_at", "ledger", [dimension, "created_at"])


def downgrade() -> None:
    op.drop_table("ledger")
