"""Add the ledger's ``route`` column: the routing decision and its reason (issue #5).

Revision ID: 0003_route
Revises: 0002_tokens
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_route"
down_revision: str | None = "0002_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a nullable column: SQLite and PostgreSQL add it in place, existing rows get NULL
    op.add_column("ledger", sa.Column("route", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("route")
