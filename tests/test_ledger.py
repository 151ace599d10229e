"""SQLLedger on SQLite and on the real PostgreSQL: storage, idempotence, reports, migrations."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from tokenomy.config import ConfigError, LedgerSettings
from tokenomy.store.ledger import NO_GROUP, SPEND_DIMENSIONS, LedgerRow, SpendGroup
from tokenomy.store.ledger_factory import make_ledger
from tokenomy.store.migrations import alembic_config
import tokenomy.jobs.tables  # noqa: F401  (the job tables share the ledger's metadata)
from tokenomy.store.sql_ledger import SQLLedger, async_url, metadata

UTC = dt.timezone.utc
MakeRow = Callable[..., LedgerRow]


# --- storage -----------------------------------------------------------------


async def test_rows_round_trip_every_field(ledger: SQLLedger, make_row: MakeRow) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    full = make_row(
        created_at=dt.datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=paris),
        duration_ms=1234.5678,
        api="anthropic",
        kind="chat",
        stream=True,
        tags=["beta", "étude", "x y"],
        input_tokens=2**40,  # beyond 32 bits: BIGINT columns
        cached_tokens=512,
        cache_write_tokens=64,
        cost_usd=0.1 + 0.2,  # a float that is not a short decimal must survive unchanged
        baseline_usd=1 / 3,
        cache_status="semantic_hit",
        outcome="rate_limited",
        status=429,
        error_message="slow down — 'quoted' \"text\"",
        stage_ms={"identify": 0.01, "route": 1e-7, "execute": 98.0},
        cost_items=[
            {"step": "generation", "model": "m", "usd": None, "nested": {"a": [1, 2.5, None, True]}},
            {"step": "embedding", "model": "e", "usd": 1.5e-9},
        ],
    )
    sparse = make_row(
        duration_ms=None,
        endpoint=None,
        key_id=None,
        org=None,
        team=None,
        feature=None,
        customer=None,
        tags=[],
        model_served=None,
        provider=None,
        cost_usd=None,
        baseline_usd=None,
        upstream_ms=None,
        stage_ms={},
        cost_items=[],
    )
    await ledger.write_many([full, sparse])

    fetched = {row.request_id: row for row in await ledger.fetch()}
    assert fetched == {full.request_id: full, sparse.request_id: sparse}
    got = fetched[full.request_id]
    assert got.created_at.tzinfo == UTC
    assert got.created_at == dt.datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert got.cost_usd == 0.1 + 0.2 and got.baseline_usd == 1 / 3
    assert got.stream is True and isinstance(got.input_tokens, int)


async def test_naive_created_at_is_taken_as_utc(ledger: SQLLedger, make_row: MakeRow) -> None:
    row = make_row(created_at=dt.datetime(2026, 5, 1, 8, 0))
    await ledger.write_many([row])
    (got,) = await ledger.fetch()
    assert got.created_at == dt.datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


async def test_duplicate_request_ids_are_ignored_not_failed(ledger: SQLLedger, make_row: MakeRow) -> None:
    first = make_row(request_id="dup", team="first")
    await ledger.write_many([first, make_row(request_id="a")])
    # Duplicates across batches and inside one batch: the batch still goes in.
    await ledger.write_many([make_row(request_id="dup", team="second"), make_row(request_id="b"), make_row(request_id="b")])
    assert await ledger.count() == 3
    rows = {row.request_id: row for row in await ledger.fetch()}
    assert rows["dup"].team == "first"  # first write wins; a replay never rewrites history
    assert set(rows) == {"dup", "a", "b"}


async def test_fetch_is_newest_first_with_since_and_limit(ledger: SQLLedger, make_row: MakeRow) -> None:
    base = dt.datetime(2026, 2, 1, tzinfo=UTC)
    rows = [make_row(request_id=f"r{i}", created_at=base + dt.timedelta(hours=i)) for i in range(5)]
    await ledger.write_many(rows[::-1])
    assert [row.request_id for row in await ledger.fetch()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [row.request_id for row in await ledger.fetch(limit=2)] == ["r4", "r3"]
    since = base + dt.timedelta(hours=2)
    assert [row.request_id for row in await ledger.fetch(since=since)] == ["r4", "r3", "r2"]


async def test_empty_write_and_empty_ledger(ledger: SQLLedger) -> None:
    await ledger.write_many([])
    assert await ledger.count() == 0
    assert await ledger.fetch() == []
    assert await ledger.spend_summary("team") == []


async def test_a_batch_is_one_executemany_in_one_transaction(ledger: SQLLedger, make_row: MakeRow) -> None:
    statements: list[tuple[str, bool]] = []
    commits: list[int] = []
    engine = ledger.engine.sync_engine

    def on_execute(conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool) -> None:
        statements.append((statement, executemany))

    def on_commit(conn: Any) -> None:
        commits.append(1)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        await ledger.write_many([make_row() for _ in range(500)])
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)
    inserts = [(sql, many) for sql, many in statements if sql.lstrip().upper().startswith("INSERT")]
    ledger_inserts = [many for sql, many in inserts if sql.lstrip().upper().startswith("INSERT INTO LEDGER (")]
    # one multi-row insert (RETURNING the ids really inserted), plus one upsert per rollup table (3)
    assert len(ledger_inserts) == 1 and len(inserts) == 4
    assert len(commits) == 1
    assert await ledger.count() == 500


# --- spend summary -------------------------------------------------------------


def expected_summary(rows: Sequence[LedgerRow], by: str) -> dict[str, SpendGroup]:
    """The same aggregation in plain Python, the reference the SQL must agree with."""
    groups: dict[str, list[LedgerRow]] = defaultdict(list)
    for row in rows:
        if by == "tag":
            for tag in row.tags or [None]:
                groups[tag or NO_GROUP].append(row)
        else:
            value = getattr(row, SPEND_DIMENSIONS[by])
            groups[NO_GROUP if value is None else value].append(row)
    return {
        name: SpendGroup(
            group=name,
            requests=len(members),
            input_tokens=sum(r.input_tokens for r in members),
            output_tokens=sum(r.output_tokens for r in members),
            cost_usd=sum(r.cost_usd for r in members if r.cost_usd is not None),
            baseline_usd=sum(r.baseline_usd for r in members if r.baseline_usd is not None),
            savings_usd=sum(r.savings_usd for r in members if r.savings_usd is not None),
            unknown_cost_count=sum(r.cost_usd is None for r in members),
        )
        for name, members in groups.items()
    }


def spend_dataset(make_row: MakeRow) -> list[LedgerRow]:
    """Rows that vary every dimension, with NULLs, unknown costs and unknown baselines."""
    teams = ["search", "ads", None]
    features = ["chat", None, "summarize", "chat"]
    customers = [None, "c1", "c2"]
    models = ["gpt-4o-mini", "claude-haiku", None]
    endpoints = ["/v1/chat/completions", "/v1/messages", None, "/v1/embeddings", "/v1/chat/completions"]
    providers = ["openai", "anthropic", None, "simulated"]
    classes = ["realtime", "batch", "async"]
    keys = ["k1", None, "k2", "k3"]
    tag_sets: list[list[str]] = [["a", "b"], ["a"], [], ["c"], ["b", "c", "a"]]
    rows = []
    for i in range(60):
        rows.append(
            make_row(
                team=teams[i % 3],
                feature=features[i % 4],
                customer=customers[i % 3],
                model_served=models[i % 3],
                endpoint=endpoints[i % 5],
                provider=providers[i % 4],
                traffic_class=classes[i % 3],
                key_id=keys[i % 4],
                tags=tag_sets[i % 5],
                input_tokens=100 + i,
                output_tokens=10 * i,
                cost_usd=None if i % 7 == 0 else 0.001 * (i + 1),
                baseline_usd=None if i % 11 == 0 else 0.003 * (i + 1),
            )
        )
    return rows


def assert_groups_match(actual: list[SpendGroup], expected: dict[str, SpendGroup]) -> None:
    assert {group.group for group in actual} == set(expected)
    for group in actual:
        want = expected[group.group]
        assert (group.requests, group.input_tokens, group.output_tokens, group.unknown_cost_count) == (
            want.requests,
            want.input_tokens,
            want.output_tokens,
            want.unknown_cost_count,
        ), group.group
        assert group.cost_usd == pytest.approx(want.cost_usd, rel=1e-12, abs=1e-15)
        assert group.baseline_usd == pytest.approx(want.baseline_usd, rel=1e-12, abs=1e-15)
        assert group.savings_usd == pytest.approx(want.savings_usd, rel=1e-12, abs=1e-15)
        assert isinstance(group.requests, int) and isinstance(group.cost_usd, float)
    costs = [group.cost_usd for group in actual]
    assert costs == sorted(costs, reverse=True)  # most expensive first


@pytest.mark.parametrize("by", list(SPEND_DIMENSIONS))
async def test_spend_summary_matches_reference_per_dimension(ledger: SQLLedger, make_row: MakeRow, by: str) -> None:
    rows = spend_dataset(make_row)
    await ledger.write_many(rows)
    actual = await ledger.spend_summary(by)
    expected = expected_summary(rows, by)
    # Every nullable dimension has NULLs (or untagged rows) in the dataset.
    assert (NO_GROUP in expected) == (by != "traffic_class")
    assert_groups_match(actual, expected)


async def test_spend_summary_unnests_tags(ledger: SQLLedger, make_row: MakeRow) -> None:
    await ledger.write_many(
        [
            make_row(tags=["a", "b"], cost_usd=1.0, baseline_usd=2.0),
            make_row(tags=["a"], cost_usd=0.5, baseline_usd=0.5),
            make_row(tags=[], cost_usd=0.25, baseline_usd=1.0),
        ]
    )
    groups = {group.group: group for group in await ledger.spend_summary("tag")}
    assert {name: g.requests for name, g in groups.items()} == {"a": 2, "b": 1, NO_GROUP: 1}
    assert groups["a"].cost_usd == pytest.approx(1.5)
    assert groups["a"].savings_usd == pytest.approx(1.0)
    assert groups[NO_GROUP].cost_usd == pytest.approx(0.25)


async def test_unknown_costs_are_counted_not_summed_as_zero(ledger: SQLLedger, make_row: MakeRow) -> None:
    await ledger.write_many(
        [
            make_row(team="t", cost_usd=1.0, baseline_usd=3.0),  # savings 2
            make_row(team="t", cost_usd=None, baseline_usd=5.0),  # unknown cost: no savings
            make_row(team="t", cost_usd=0.5, baseline_usd=None),  # unknown baseline: no savings
            make_row(team="u", cost_usd=None, baseline_usd=None),
        ]
    )
    groups = {group.group: group for group in await ledger.spend_summary("team")}
    t = groups["t"]
    assert (t.requests, t.unknown_cost_count) == (3, 1)
    assert t.cost_usd == pytest.approx(1.5)
    assert t.baseline_usd == pytest.approx(8.0)
    assert t.savings_usd == pytest.approx(2.0)
    u = groups["u"]
    assert (u.requests, u.unknown_cost_count, u.cost_usd, u.baseline_usd, u.savings_usd) == (1, 1, 0.0, 0.0, 0.0)


async def test_spend_summary_time_window(ledger: SQLLedger, make_row: MakeRow) -> None:
    base = dt.datetime(2026, 1, 1, tzinfo=UTC)
    await ledger.write_many(
        [make_row(team="t", created_at=base + dt.timedelta(days=day), cost_usd=float(day)) for day in range(10)]
    )
    (group,) = await ledger.spend_summary("team", since=base + dt.timedelta(days=3), until=base + dt.timedelta(days=6))
    assert group.requests == 3 and group.cost_usd == pytest.approx(3 + 4 + 5)
    # Bounds in another time zone mean the same instants.
    tokyo = dt.timezone(dt.timedelta(hours=9))
    (group,) = await ledger.spend_summary("team", since=(base + dt.timedelta(days=8)).astimezone(tokyo))
    assert group.requests == 2


async def test_spend_summary_rejects_unknown_dimension(ledger: SQLLedger) -> None:
    with pytest.raises(ValueError, match="team"):
        await ledger.spend_summary("colour")


# --- migrations, URLs, start-up --------------------------------------------------


async def test_schema_is_at_head_and_matches_the_live_table(ledger: SQLLedger) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    from tokenomy.store.access import metadata as access_metadata

    # one database holds the ledger and the access tables (keys, budgets: issue #3)
    live = sa.MetaData()
    for table in (*metadata.tables.values(), *access_metadata.tables.values()):
        table.to_metadata(live)

    def inspect(conn: sa.Connection) -> tuple[str | None, list[Any]]:
        context = MigrationContext.configure(conn)
        return context.get_current_revision(), compare_metadata(context, live)

    async with ledger.engine.connect() as conn:
        revision, diff = await conn.run_sync(inspect)
    assert revision == head == "0008_owners"
    assert diff == []


async def test_start_is_idempotent_and_concurrent_starts_are_safe(
    ledger_factory: Callable[[], SQLLedger], make_row: MakeRow
) -> None:
    # Replicas starting together on one database: migrations must run once, not race.
    ledgers = [ledger_factory() for _ in range(3)]
    await asyncio.gather(*(store.start() for store in ledgers))
    try:
        await ledgers[0].write_many([make_row(request_id="x")])
        await ledgers[1].start()  # already started: no-op
        assert [await store.count() for store in ledgers] == [1, 1, 1]
    finally:
        await asyncio.gather(*(store.aclose() for store in ledgers))
    reopened = ledger_factory()
    await reopened.start()  # schema at head: upgrade does nothing, data kept
    try:
        assert await reopened.count() == 1
    finally:
        await reopened.aclose()


async def test_sqlite_creates_parent_dir_and_uses_wal(tmp_path: Any) -> None:
    store = SQLLedger(f"sqlite:///{tmp_path}/a/b/ledger.db")
    await store.start()
    try:
        assert (tmp_path / "a" / "b" / "ledger.db").exists()
        async with store.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:///.tokenomy/ledger.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/ledger.db", "sqlite+aiosqlite"),
        ("postgresql://u:p%40ss@db:5432/ledger", "postgresql+asyncpg"),
        ("postgres://u@db/ledger", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db/ledger", "postgresql+asyncpg"),
    ],
)
def test_plain_urls_get_the_async_driver(url: str, driver: str) -> None:
    converted = async_url(url)
    assert converted.drivername == driver
    assert converted.database == sa.make_url(url).database
    if "p%40ss" in url:
        assert converted.password == "p@ss"


@pytest.mark.parametrize("url", ["mysql://u@db/x", "postgresql+psycopg2://u@db/x", "not a url"])
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="ledger.url"):
        make_ledger(LedgerSettings(url=url))


def test_make_ledger_builds_sql_ledger(tmp_path: Any) -> None:
    store = make_ledger(LedgerSettings(url=f"sqlite:///{tmp_path}/l.db"))
    assert isinstance(store, SQLLedger) and store.dialect == "sqlite"
    assert make_ledger(LedgerSettings(url="postgresql://u@h/db")).dialect == "postgresql"  # type: ignore[attr-defined]


def test_using_a_ledger_before_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="start"):
        SQLLedger("sqlite:///x.db").engine
