"""Token policies: finish reason, output cap, prompt version and savings per technique.

Revision ID: 0002_tokens
Revises: 0001_ledger
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_tokens"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(sa.Column("finish_reason", sa.String(), nullable=True))
        batch.add_column(sa.Column("output_cap", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prompt", sa.String(), nullable=True))
        # JSONB on PostgreSQL so reports can unnest techniques with jsonb_each.
        savings = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
        batch.add_column(sa.Column("savings", savings, nullable=False, server_default=sa.text("'{}'")))
    op.create_index("ix_ledger_prompt_created_at", "ledger", ["prompt", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_prompt_created_at", table_name="ledger")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("savings")
        batch.drop_column("prompt")
        batch.drop_column("output_cap")
        batch.drop_column("finish_reason")
