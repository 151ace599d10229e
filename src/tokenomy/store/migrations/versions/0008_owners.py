"""Owners of jobs, files and batches; a pass-through batch's budget reservation.

Revision ID: 0008_owners
Revises: 0007_pair_rollup
Create Date: 2026-11-26

``owner`` is the id of the virtual key that created the row (``NULL``: created
with the master key or on an open gateway). Another key is told such a row does
not exist; listings show a key its own rows only (``tokenomy.jobs.owner``).
Rows written before this revision have no owner, as on a gateway without keys.

``batches.reservation`` holds the budget reservation of a batch passed through
to a provider's batch API (its counters and how many lines it admitted), so
whichever worker collects the results settles it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_owners"
down_revision: str | None = "0007_pair_rollup"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("jobs", "files", "batches"):
        op.add_column(table, sa.Column("owner", sa.String(), nullable=True))
    op.add_column("batches", sa.Column("reservation", sa.JSON(), nullable=True))
    # listings are per owner, newest first
    op.create_index("ix_files_owner_created", "files", ["owner", "created_at"])
    op.create_index("ix_batches_owner_created", "batches", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_owner_created", table_name="batches")
    op.drop_index("ix_files_owner_created", table_name="files")
    # batch mode: SQLite before 3.35 cannot drop a column in place
    with op.batch_alter_table("batches") as batches:
        batches.drop_column("reservation")
        batches.drop_column("owner")
    for table in ("files", "jobs"):
        with op.batch_alter_table(table) as altered:
            altered.drop_column("owner")
