"""Dashboard aggregates (rollups and raw ledger) agree with the rows, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from tokenomy.store.budget_view import budget_status, period_bounds
from tokenomy.store.dashboard_queries import NONE, DashboardQueries, Query
from tokenomy.store.ledger import LedgerRow
from tokenomy.store.sql_ledger import LEDGER_DAILY, LEDGER_DIM_ROLLUP, LEDGER_PAIR_DAILY, SQLLedger

NOW = dt.datetime(2026, 3, 10, 12, 30, tzinfo=dt.timezone.utc)


def seeded_rows(make_row: Callable[..., LedgerRow], n: int = 3000, seed: int = 7) -> list[LedgerRow]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        cost = None if i % 97 == 0 else round(rnd.uniform(0.0001, 0.05), 6)
        asked = rnd.choice(["gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"])
        served = asked if rnd.random() < 0.7 else "gpt-4o-mini"
        rows.append(make_row(
            created_at=NOW - dt.timedelta(minutes=rnd.randrange(0, 14 * 24 * 60)),
            team=rnd.choice(["search", "support", None]),
            feature=rnd.choice(["faq", "summarize", None]),
            customer=rnd.choice([f"cust-{k}" for k in range(30)] + [None]),
            tags=rnd.choice([[], ["beta"], ["beta", "eu"], ["eu"]]),  # never repeated: IdentifyStage dedups
            model_asked=asked,
            model_served=served,
            cost_usd=cost,
            baseline_usd=None if cost is None else cost * rnd.choice([1.0, 1.0, 3.0]),
            cache_status=rnd.choice(["none", "miss", "hit-exact"]),
            traffic_class=rnd.choice(["realtime", "realtime", "batch"]),
            outcome="ok" if rnd.random() < 0.95 else "upstream_error",
            input_tokens=rnd.randrange(10, 5000),
            output_tokens=rnd.randrange(1, 800),
            savings=rnd.choice([{}, {}, {"prune": {"tokens": 120, "usd": 0.00125}},
                                {"prune": {"tokens": 40, "usd": 0.0005}, "compress": {"tokens": 7, "usd": None}}]),
        ))
    return rows


def expected_by(rows: list[LedgerRow], key: Callable[[LedgerRow], list[str]], since: dt.datetime | None = None):
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        if since is not None and row.created_at < since:
            continue
        for group in key(row):
            s = sums[group]
            s["requests"] += 1
            s["cost_usd"] += row.cost_usd or 0.0
            s["baseline_usd"] += row.baseline_usd or 0.0
            s["input_tokens"] += row.input_tokens
    return sums


@pytest.fixture
async def seeded(ledger: SQLLedger, make_row: Callable[..., LedgerRow]) -> tuple[SQLLedger, list[LedgerRow]]:
    rows = seeded_rows(make_row)
    for start in range(0, len(rows), 500):
        await ledger.write_many(rows[start:start + 500])
    await ledger.write_many(rows[:10])  # a retried batch: ignored, not double counted
    return ledger, rows


def check(groups: list[dict[str, Any]], expected: dict[str, dict[str, float]]) -> None:
    got = {g["group"]: g for g in groups}
    assert set(got) == set(expected)
    for name, sums in expected.items():
        assert got[name]["requests"] == sums["requests"], name
        assert got[name]["input_tokens"] == sums["input_tokens"], name
        assert got[name]["cost_usd"] == pytest.approx(sums["cost_usd"], rel=1e-9), name
        assert got[name]["baseline_usd"] == pytest.approx(sums["baseline_usd"], rel=1e-9), name


async def test_breakdowns_match_the_rows(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    everything = Query(None, None)
    check(await queries.breakdown(everything, "team"), expected_by(rows, lambda r: [r.team or NONE]))
    check(await queries.breakdown(everything, "model"), expected_by(rows, lambda r: [r.model_served or NONE]))
    check(await queries.breakdown(everything, "customer"), expected_by(rows, lambda r: [r.customer or NONE]))
    check(await queries.breakdown(everything, "tag"), expected_by(rows, lambda r: list(dict.fromkeys(r.tags)) or [NONE]))
    # filtered: team from the hourly rollup, customer/tag through the raw ledger
    search = [r for r in rows if r.team == "search"]
    check(await queries.breakdown(Query(None, None, {"team": "search"}), "feature"),
          expected_by(search, lambda r: [r.feature or NONE]))
    check(await queries.breakdown(Query(None, None, {"team": "search"}), "customer"),
          expected_by(search, lambda r: [r.customer or NONE]))
    beta = [r for r in rows if "beta" in r.tags]
    check(await queries.breakdown(Query(None, None, {"tag": "beta"}), "team"), expected_by(beta, lambda r: [r.team or NONE]))
    check(await queries.breakdown(Query(None, None, {"team": "search"}), "tag"),
          expected_by(search, lambda r: list(dict.fromkeys(r.tags)) or [NONE]))
    no_team = [r for r in rows if r.team is None]
    check(await queries.breakdown(Query(None, None, {"team": NONE}), "team"), expected_by(no_team, lambda r: [NONE]))


async def test_pair_rollup_breakdowns_match_the_rows(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    """Team / feature filter × customer / tag grouping, from ``ledger_pair_daily``."""
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    assert queries.source(Query(None, None, {"team": "search"}), "customer").kind == "pair"
    assert queries.source(Query(None, None, {"feature": "faq"}), "tag").kind == "pair"
    assert queries.source(Query(None, None, {"team": "search", "feature": "faq"}), "tag").kind == "raw"
    tags_of = lambda r: list(dict.fromkeys(r.tags)) or [NONE]  # noqa: E731
    day = (NOW - dt.timedelta(days=5)).replace(hour=0, minute=0)
    for name, attr in (("team", "team"), ("feature", "feature")):
        for value in ("search", "support", "faq", "summarize", NONE):
            picked = [r for r in rows if (getattr(r, attr) or NONE) == value]
            check(await queries.breakdown(Query(None, None, {name: value}), "customer"),
                  expected_by(picked, lambda r: [r.customer or NONE]))
            check(await queries.breakdown(Query(None, None, {name: value}), "tag"), expected_by(picked, tags_of))
            # a window on whole days is exact on the daily pair rollup
            check(await queries.breakdown(Query(day, None, {name: value}), "tag"), expected_by(picked, tags_of, day))
            check(await queries.breakdown(Query(day, None, {name: value}), "customer"),
                  expected_by(picked, lambda r: [r.customer or NONE], day))
    # a daily time series by customer under a team filter: top customers plus "other" add up per day
    search = [r for r in rows if r.team == "search"]
    per_day: dict[str, float] = defaultdict(float)
    for row in search:
        per_day[row.created_at.strftime("%Y-%m-%dT00:00:00Z")] += row.cost_usd or 0.0
    folded = await queries.timeseries(Query(None, None, {"team": "search"}), "customer", "day", top=3)
    assert folded["groups"][-1] == "other" and folded["resolution"] == "day"
    got = {b["t"]: sum(c["cost_usd"] for c in b["groups"].values()) for b in folded["buckets"]}
    assert got.keys() == per_day.keys()
    for day_key, cost in per_day.items():
        assert got[day_key] == pytest.approx(cost, rel=1e-9, abs=1e-12), day_key
    by_tag = await queries.timeseries(Query(None, None, {"team": "search"}), "tag", "day")
    beta_days: dict[str, int] = defaultdict(int)
    for row in search:
        if "beta" in row.tags:
            beta_days[row.created_at.strftime("%Y-%m-%dT00:00:00Z")] += 1
    assert {b["t"]: b["groups"]["beta"]["requests"] for b in by_tag["buckets"] if "beta" in b["groups"]} == beta_days


async def test_tag_summary_is_exact_on_any_window(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    """A tag filter alone: whole days from the tag's day slice, partial edge days from the raw rows."""
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    windows = [
        (None, None),
        (NOW - dt.timedelta(days=7), None),  # mid-day start
        (NOW.replace(hour=0, minute=0) - dt.timedelta(days=7), None),  # whole days
        (NOW - dt.timedelta(days=9, minutes=17), NOW - dt.timedelta(days=2, hours=5)),  # both edges partial
        (None, NOW - dt.timedelta(days=3, hours=2)),
        (NOW - dt.timedelta(hours=30), NOW - dt.timedelta(hours=2)),  # under two days: raw only
    ]
    for tag in ("beta", "eu", NONE):
        for since, until in windows:
            picked = [r for r in rows if (tag in r.tags if tag != NONE else not r.tags)
                      and (since is None or r.created_at >= since) and (until is None or r.created_at < until)]
            got = await queries.summary(Query(since, until, {"tag": tag}))
            assert got["resolution"] == "exact"
            assert got["requests"] == len(picked), (tag, since, until)
            assert got["input_tokens"] == sum(r.input_tokens for r in picked)
            assert got["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in picked), rel=1e-9, abs=1e-12)
            assert got["errors"] == sum(r.outcome != "ok" for r in picked)
            assert got["unknown_cost_count"] == sum(r.cost_usd is None for r in picked)


async def test_summary_timeseries_savings_and_windows(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    summary = await queries.summary(Query())
    assert summary["requests"] == len(rows)
    assert summary["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in rows), rel=1e-9)
    assert summary["unknown_cost_count"] == sum(r.cost_usd is None for r in rows)
    assert summary["cache_hits"] == sum(r.cache_status == "hit-exact" for r in rows)
    assert summary["cache_lookups"] == sum(r.cache_status != "none" for r in rows)
    assert summary["errors"] == sum(r.outcome != "ok" for r in rows)
    assert summary["routed"] == sum(r.model_served != r.model_asked for r in rows)
    # a window on whole hours is exact on the rollup
    since = NOW.replace(minute=0) - dt.timedelta(days=3)
    windowed = await queries.summary(Query(since, None))
    assert windowed["requests"] == sum(r.created_at >= since for r in rows)
    raw_windowed = await queries.summary(Query(since, None, {"customer": "cust-1"}))
    assert raw_windowed["requests"] == sum(r.created_at >= since and r.customer == "cust-1" for r in rows)

    series = await queries.timeseries(Query(), "team", "day")
    per_day: dict[str, float] = defaultdict(float)
    for row in rows:
        per_day[row.created_at.strftime("%Y-%m-%dT00:00:00Z")] += row.cost_usd or 0.0
    got = {b["t"]: sum(c["cost_usd"] for c in b["groups"].values()) for b in series["buckets"]}
    assert got.keys() == per_day.keys()
    for day, cost in per_day.items():
        assert got[day] == pytest.approx(cost, rel=1e-9)
    assert set(series["groups"]) == {"search", "support", NONE}
    for by in ("customer", "team"):  # the top values plus "other" add up to each day's total
        folded = await queries.timeseries(Query(), by, "day", top=2)
        assert folded["groups"][-1] == "other" and len(folded["groups"]) == 3
        got = {b["t"]: sum(c["cost_usd"] for c in b["groups"].values()) for b in folded["buckets"]}
        for day, cost in per_day.items():
            assert got[day] == pytest.approx(cost, rel=1e-9, abs=1e-12), (by, day)
    hourly = await queries.timeseries(Query(), None, "hour")
    assert sum(c["requests"] for b in hourly["buckets"] for c in b["groups"].values()) == len(rows)

    tokens = {t["technique"]: t for t in await queries.token_savings(Query())}
    assert tokens["prune"]["requests"] == sum("prune" in r.savings for r in rows)
    assert tokens["prune"]["tokens"] == sum(r.savings["prune"]["tokens"] for r in rows if "prune" in r.savings)
    assert tokens["prune"]["savings_usd"] == pytest.approx(
        sum(r.savings["prune"]["usd"] for r in rows if "prune" in r.savings), rel=1e-9
    )
    assert tokens["compress"]["savings_usd"] == 0.0  # unknown price: no USD, tokens still counted
    assert await queries.token_savings(Query(None, None, {"team": "search"})) is None
    savings = {t["technique"]: t for t in await queries.savings(Query())}
    cache_rows = [r for r in rows if r.cache_status == "hit-exact"]
    assert savings["cache"]["requests"] == len(cache_rows)
    assert sum(t["requests"] for t in savings.values()) == len(rows)
    assert sum(t["savings_usd"] for t in savings.values()) == pytest.approx(
        sum((r.baseline_usd - r.cost_usd) for r in rows if r.cost_usd is not None), rel=1e-9
    )


async def test_requests_detail_routing_and_dimensions(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    top = await queries.requests(Query(), "cost", limit=5)
    priced = sorted((r for r in rows if r.cost_usd is not None), key=lambda r: -r.cost_usd)
    assert [t["cost_usd"] for t in top] == [r.cost_usd for r in priced[:5]]
    detail = await queries.request(top[0]["request_id"])
    assert detail is not None and detail["cost_items"] and detail["stage_ms"]
    assert await queries.request("nope") is None
    routes = await queries.routing(Query())
    assert sum(r["requests"] for r in routes) == len(rows)
    values = await queries.dimension_values(Query())
    assert {"search", "support", NONE} == set(values["team"])
    assert "beta" in values["tag"] and "cust-3" in values["customer"]


async def test_budgets_hidden_without_a_table_and_projected_with_one(
    seeded: tuple[SQLLedger, list[LedgerRow]],
) -> None:
    ledger, rows = seeded
    queries = DashboardQueries(ledger)
    assert await budget_status(queries, NOW) is None
    async with ledger.engine.begin() as conn:
        # the table comes with the budgets migration (issue #3); until a budget exists nothing is shown
        await conn.exec_driver_sql(
            "INSERT INTO budgets (id, scope, value, amount_usd, period, window_s, mode, thresholds, created_at) "
            "VALUES ('b1', 'team', 'search', 1000.0, 'month', NULL, 'hard', '[]', 0), "
            "('b2', 'customer', 'cust-1', 0.01, 'month', NULL, 'hard', '[]', 0)"
        )
    status = {b["id"]: b for b in await budget_status(queries, NOW)}
    start, _ = period_bounds("month", NOW)
    assert start == dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    spent = sum(r.cost_usd or 0 for r in rows if r.team == "search" and r.created_at >= start)
    assert status["b1"]["spent_usd"] == pytest.approx(spent, rel=1e-9)
    assert status["b1"]["burn_usd_per_day"] > 0
    assert status["b2"]["projected_exhaustion"] is not None  # $0.01 is long gone


async def test_a_slice_is_small_and_rebuild_matches_the_writer(seeded: tuple[SQLLedger, list[LedgerRow]]) -> None:
    ledger, rows = seeded

    async def snapshot() -> tuple[list[Any], list[Any], list[Any]]:
        async with ledger.engine.connect() as conn:
            dim = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r)
                         for r in await conn.execute(sa.select(LEDGER_DIM_ROLLUP)))
            daily = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r)
                           for r in await conn.execute(sa.select(LEDGER_DAILY)))
            pair = sorted(tuple(round(v, 6) if isinstance(v, float) else v for v in r)
                          for r in await conn.execute(sa.select(LEDGER_PAIR_DAILY)))
        return dim, daily, pair

    written = await snapshot()
    team_slice = [r for r in written[0] if r[0] == "team"]
    assert 0 < len(team_slice) <= 14 * 24 * 3 + 24 * 3 and len(team_slice) < len(rows) / 2
    team_tags = [r for r in written[2] if r[0] == "team" and r[2] == "tag"]
    assert 0 < len(team_tags) <= 15 * 3 * 3  # days × teams × (beta, eu, none)
    await ledger.rebuild_rollups()
    assert await snapshot() == written
    # rollups from before revision 0006: start-up fills the empty pair rollup alone
    async with ledger.engine.begin() as conn:
        await conn.execute(sa.delete(LEDGER_PAIR_DAILY))
    await ledger._backfill_rollups()
    assert await snapshot() == written
