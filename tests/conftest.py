"""Shared pytest fixtures."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest_plugins = ["tests.conftest_gateway", "tests.budget_fixtures"]

from tokenomy.store.ledger import LedgerRow
from tokenomy.store.sql_ledger import SQLLedger

# ledger fixtures ------------------------------------------------------------

#: The PostgreSQL used by tests marked ``postgres`` (trust auth on this machine).
PG_URL = os.environ.get("TOKENOMY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_PG_HINT = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

_row_ids = itertools.count()


def ledger_row(**overrides: Any) -> LedgerRow:
    """A complete, plausible ledger row; every field can be overridden."""
    n = next(_row_ids)
    values: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "created_at": dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=n),
        "duration_ms": 123.25,
        "api": "openai",
        "kind": "chat",
        "endpoint": "/v1/chat/completions",
        "traffic_class": "realtime",
        "stream": False,
        "key_id": "key-1",
        "org": "acme",
        "team": "search",
        "feature": "autocomplete",
        "customer": "cust-1",
        "tags": ["beta"],
        "model_asked": "gpt-4o",
        "model_served": "gpt-4o-mini",
        "provider": "openai",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": 0.0003,
        "baseline_usd": 0.0045,
        "cache_status": "miss",
        "outcome": "ok",
        "status": 200,
        "error_message": None,
        "upstream_ms": 98.5,
        "stage_ms": {"route": 0.12, "execute": 98.7},
        "cost_items": [{"step": "generation", "model": "gpt-4o-mini", "usd": 0.0003}],
    }
    values.update(overrides)
    return LedgerRow(**values)


@pytest.fixture
def make_row() -> Callable[..., LedgerRow]:
    """Factory of ledger rows: ``make_row(team=None, cost_usd=0.5)``."""
    return ledger_row


async def _pg_admin(sql: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(PG_URL)
    except OSError as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({exc}); {_PG_HINT}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards (tests never share tables)."""
    schema = f"test_{uuid.uuid4().hex[:16]}"
    await _pg_admin(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        await _pg_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """Which ledger database a test runs on; tests using ``ledger`` run once per backend."""
    return str(request.param)


@pytest.fixture
def ledger_factory(ledger_backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[], SQLLedger]:
    """Makes unstarted ledgers on the current backend, all sharing one fresh database."""
    if ledger_backend == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger/ledger.db"
        return lambda: SQLLedger(url)
    schema = request.getfixturevalue("pg_schema")
    return lambda: SQLLedger(PG_URL, schema=schema)


@pytest.fixture
async def ledger(ledger_factory: Callable[[], SQLLedger]) -> AsyncIterator[SQLLedger]:
    """A started, empty ``SQLLedger``: SQLite in ``tmp_path``, or the real PostgreSQL in its own schema."""
    store = ledger_factory()
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


# end of ledger fixtures -----------------------------------------------------
