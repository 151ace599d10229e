"""Alembic migrations of the ledger schema, shipped inside the package.

There is no ``alembic.ini``: a gateway installed from a wheel has no project
folder to find one in, so ``alembic_config`` builds the configuration in code
with ``script_location`` pointing here. ``SQLLedger.start()`` calls
``upgrade_head`` on start-up; developers add a revision with::

    python -c "from alembic import command; from tokenomy.store.migrations import alembic_config; \\
               command.revision(alembic_config(), message='add column x')"

and then edit the generated file (the schema is written out by hand in each
revision, never imported from the live table, so old revisions never change).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

SCRIPT_LOCATION = Path(__file__).resolve().parent

# Any constant works: it only has to be the same in every replica of the gateway.
_PG_MIGRATION_LOCK = 0x70_6B_6E_6D  # "pknm"


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic ``Config`` for these migrations, optionally bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_head(connection: sa.Connection) -> None:
    """Bring the schema to the newest revision, inside ``connection``'s transaction.

    Several replicas may start at once against one database. On PostgreSQL a
    transaction-scoped advisory lock makes them take turns; on SQLite
    ``BEGIN IMMEDIATE`` takes the database write lock up front (the others wait
    ``busy_timeout``). Either way the second one finds the schema at head and
    does nothing. The caller commits (``engine.begin()``).
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    elif dialect == "sqlite":
        # pysqlite would not BEGIN before DDL on its own; without this the
        # version check and CREATE TABLE of two processes could interleave.
        # (So on SQLite this must be the first statement of the transaction.)
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    command.upgrade(alembic_config(connection), "head")
