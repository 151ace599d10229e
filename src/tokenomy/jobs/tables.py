"""The live job tables; their shape must match the migrations' head (a test compares them).

They share ``sql_ledger.metadata`` so one schema comparison covers the whole database.
"""

from __future__ import annotations

import sqlalchemy as sa

from tokenomy.store.sql_ledger import metadata

JOBS = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("api", sa.String(), nullable=False),
    sa.Column("traffic_class", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("model", sa.String(), nullable=True),
    sa.Column("body", sa.JSON(), nullable=True),
    sa.Column("headers", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("started_at", sa.Float(), nullable=True),
    sa.Column("completed_at", sa.Float(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("result", sa.JSON(), nullable=True),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("webhook_url", sa.String(), nullable=True),
    sa.Column("webhook_status", sa.String(), nullable=True),
    sa.Column("webhook_attempts", sa.Integer(), nullable=False),
    sa.Column("webhook_error", sa.Text(), nullable=True),
    sa.Column("batch_id", sa.String(), nullable=True),
    #: the virtual key that submitted it (``None``: master key or open gateway)
    sa.Column("owner", sa.String(), nullable=True),
    sa.Index("ix_jobs_status_created", "status", "created_at"),
)

JOB_QUEUE = sa.Table(
    "job_queue",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(), nullable=False),
    sa.Column("job_id", sa.String(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("visible_at", sa.Float(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("lease", sa.String(), nullable=True),
    sa.Column("enqueued_at", sa.Float(), nullable=False),
    sa.Column("dead_reason", sa.Text(), nullable=True),
    sa.Index("ix_job_queue_ready", "queue", "state", "priority", "visible_at"),
)

FILES = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("filename", sa.String(), nullable=False),
    sa.Column("purpose", sa.String(), nullable=False),
    sa.Column("bytes", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("path", sa.String(), nullable=False),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("owner", sa.String(), nullable=True),
    sa.Index("ix_files_owner_created", "owner", "created_at"),
)

BATCHES = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(), primary_key=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("endpoint", sa.String(), nullable=False),
    sa.Column("input_file_id", sa.String(), nullable=False),
    sa.Column("output_file_id", sa.String(), nullable=True),
    sa.Column("error_file_id", sa.String(), nullable=True),
    sa.Column("completion_window", sa.String(), nullable=False),
    sa.Column("created_at", sa.Float(), nullable=False),
    sa.Column("in_progress_at", sa.Float(), nullable=True),
    sa.Column("finalizing_at", sa.Float(), nullable=True),
    sa.Column("completed_at", sa.Float(), nullable=True),
    sa.Column("failed_at", sa.Float(), nullable=True),
    sa.Column("cancelling_at", sa.Float(), nullable=True),
    sa.Column("cancelled_at", sa.Float(), nullable=True),
    sa.Column("expires_at", sa.Float(), nullable=True),
    sa.Column("total", sa.Integer(), nullable=False),
    sa.Column("completed", sa.Integer(), nullable=False),
    sa.Column("failed", sa.Integer(), nullable=False),
    sa.Column("deduplicated", sa.Integer(), nullable=False),
    sa.Column("metadata", sa.JSON(), nullable=True),
    sa.Column("errors", sa.JSON(), nullable=True),
    sa.Column("headers", sa.JSON(), nullable=False),
    sa.Column("execution", sa.String(), nullable=True),
    sa.Column("upstream_id", sa.String(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=True),
    sa.Column("owner", sa.String(), nullable=True),
    #: a pass-through batch's budget reservation (``tokenomy.budgets.batch``)
    sa.Column("reservation", sa.JSON(), nullable=True),
    sa.Index("ix_batches_created", "created_at"),
    sa.Index("ix_batches_owner_created", "owner", "created_at"),
)
