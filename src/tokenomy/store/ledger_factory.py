"""Build the configured ``Ledger`` from ``LedgerSettings``.

The URL alone picks the implementation (SQLite file or PostgreSQL), so moving
from one process to N replicas is a one-line settings change.
"""

from __future__ import annotations

from tokenomy.config import LedgerSettings
from tokenomy.store.ledger import Ledger
from tokenomy.store.sql_ledger import SQLLedger


def make_ledger(settings: LedgerSettings) -> Ledger:
    """The ledger at ``settings.url`` (not started: call ``await ledger.start()``).

    ``settings.enabled`` is not consulted here: it decides whether the gateway
    *records* calls, while reports still read an existing ledger.
    Raises ``ConfigError`` for an unsupported URL.
    """
    return SQLLedger(settings.url, schema=settings.schema_)
