"""Alembic environment: runs on the connection ``upgrade_head`` hands over.

Online only and connection-provided only: the gateway owns its (async) engine,
and opens the connection and transaction; this script just runs the revisions
in it. Offline ``--sql`` mode is not supported (no URL is configured here).
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "tokenomy migrations run through tokenomy.store.migrations.upgrade_head(connection), "
        "or with config.attributes['connection'] set"
    )

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
