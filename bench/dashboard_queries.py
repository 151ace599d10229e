"""Dashboard queries on a 1,000,000-row ledger: each must answer in under 500 ms.

Seeds a ledger with realistic, correlated traffic (features belong to teams,
endpoints to features; thousands of customers; tags; cache hits; routed calls;
30 days), bulk-loaded (SQLite ``executemany`` in big transactions, PostgreSQL
``COPY``), then builds the rollups with ``SQLLedger.rebuild_rollups()`` (the
gateway maintains them incrementally; a bulk load skips that path) and times
every query the dashboard makes, cold once then the median of ``--repeat`` runs.

    python bench/dashboard_queries.py                       # SQLite and PostgreSQL, 1M rows
    python bench/dashboard_queries.py --rows 200000 --backend sqlite
    python bench/dashboard_queries.py --reuse               # keep/reuse the seeded SQLite file and PG schema

PostgreSQL: ``TOKENOMY_TEST_PG_URL`` (default postgresql://postgres@127.0.0.1:5432/test),
schema ``bench_dashboard``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokenomy.store.budget_view import budget_status  # noqa: E402
from tokenomy.store.dashboard_queries import DashboardQueries, Query  # noqa: E402
from tokenomy.store.sql_ledger import LEDGER, SQLLedger  # noqa: E402

PG_URL = os.environ.get("TOKENOMY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "bench_dashboard"
TARGET_MS = 500.0
NOW = dt.datetime.now(dt.timezone.utc).replace(minute=0, second=0, microsecond=0)

MODELS = {  # asked → (cheaper model it may be routed to, $ per call scale)
    "gpt-4o": ("gpt-4o-mini", 0.02),
    "claude-sonnet-4-5": ("claude-haiku-4-5", 0.03),
    "gpt-4.1": ("gpt-4.1-mini", 0.015),
    "claude-opus-4-1": ("claude-sonnet-4-5", 0.12),
    "gemini-2.5-pro": ("gemini-2.5-flash", 0.01),
    "gpt-4o-mini": ("gpt-4o-mini", 0.001),
}
TEAMS = {f"team-{t}": [f"feature-{t}-{f}" for f in range(3)] for t in range(8)}
TAGS = ["beta", "eu", "us", "experiment-a", "experiment-b", "vip"]


def generate(n: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """Rows as tuples in ``COLUMNS`` order."""
    rnd = random.Random(seed)
    teams = list(TEAMS)
    models = list(MODELS)
    span = 30 * 86400
    rows = []
    for i in range(n):
        team = rnd.choice(teams)
        feature = rnd.choice(TEAMS[team])
        asked = rnd.choice(models)
        cheap, scale = MODELS[asked]
        routed = rnd.random() < 0.3
        served = cheap if routed else asked
        cache = rnd.choices(["miss", "hit-exact", "hit-semantic", "none"], [60, 15, 5, 20])[0]
        outcome = "ok" if rnd.random() < 0.98 else rnd.choice(["upstream_error", "timeout", "budget_exceeded"])
        baseline = round(rnd.uniform(0.1, 2.0) * scale, 6)
        cost = 0.0 if cache.startswith("hit") else round(baseline * (0.2 if routed else 1.0), 6)
        if rnd.random() < 0.002:
            cost = None
        created = NOW - dt.timedelta(seconds=rnd.randrange(span))
        tags = rnd.sample(TAGS, rnd.choice([0, 0, 1, 1, 2]))
        rows.append((
            f"bench-{i:08d}", created, round(rnd.uniform(50, 3000), 2), "openai", "chat",
            f"/api/{feature}/{rnd.randrange(2)}", rnd.choices(["realtime", "async", "batch"], [80, 10, 10])[0],
            rnd.random() < 0.4, f"key-{team}-{rnd.randrange(3)}", "acme", team, feature,
            f"cust-{rnd.randrange(5000)}", tags, asked, served, "openai",
            rnd.randrange(50, 6000), rnd.randrange(5, 900), 0, 0, cost, baseline, cache, outcome,
            200 if outcome == "ok" else 502, None, round(rnd.uniform(40, 2500), 2), {"execute": 1.0}, [],
        ))
    return rows


COLUMNS = ["request_id", "created_at", "duration_ms", "api", "kind", "endpoint", "traffic_class", "stream", "key_id",
           "org", "team", "feature", "customer", "tags", "model_asked", "model_served", "provider", "input_tokens",
           "output_tokens", "cached_tokens", "cache_write_tokens", "cost_usd", "baseline_usd", "cache_status",
           "outcome", "status", "error_message", "upstream_ms", "stage_ms", "cost_items"]


def seed_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    sql = f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    converted = (
        (*r[:1], r[1].replace(tzinfo=None).strftime(fmt), *r[2:13], json.dumps(r[13]), *r[14:28],
         json.dumps(r[28]), json.dumps(r[29]))
        for r in rows
    )
    with conn:
        conn.executemany(sql, converted)
    conn.close()


async def seed_postgres(rows: list[tuple[Any, ...]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": SCHEMA})
    try:
        records = ((*r[:13], json.dumps(r[13]), *r[14:28], json.dumps(r[28]), json.dumps(r[29])) for r in rows)
        await conn.copy_records_to_table("ledger", records=list(records), columns=COLUMNS)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def reset_pg_schema(drop_only: bool = False) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        if not drop_only:
            await conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
    finally:
        await conn.close()


def workload(queries: DashboardQueries) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    d30, d7 = Query(NOW - dt.timedelta(days=30)), Query(NOW - dt.timedelta(days=7))
    team = {"team": "team-3"}
    q30_team = Query(d30.since, None, team)
    out: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("summary 30d", lambda: queries.summary(d30)),
        ("summary all time", lambda: queries.summary(Query())),
        ("timeseries 30d by model, daily", lambda: queries.timeseries(d30, "model", "day")),
        ("timeseries 7d by team, hourly", lambda: queries.timeseries(d7, "team", "hour")),
        ("timeseries 30d by customer, daily", lambda: queries.timeseries(d30, "customer", "day")),
        ("savings per technique 30d", lambda: queries.savings(d30)),
        ("routing 30d", lambda: queries.routing(d30)),
        ("cache status 30d", lambda: queries.breakdown(d30, "cache_status")),
    ]
    for by in ("model", "team", "feature", "endpoint", "traffic_class", "customer", "tag", "key"):
        out.append((f"breakdown 30d by {by}", lambda by=by: queries.breakdown(d30, by)))
    out += [
        ("filter team: summary", lambda: queries.summary(q30_team)),
        ("filter team: timeseries by model", lambda: queries.timeseries(q30_team, "model", "day")),
        ("filter team: breakdown by customer (pair)", lambda: queries.breakdown(q30_team, "customer")),
        ("filter team: breakdown by tag (pair)", lambda: queries.breakdown(q30_team, "tag")),
        ("filter customer: summary (raw)", lambda: queries.summary(Query(d30.since, None, {"customer": "cust-42"}))),
        ("filter customer: timeseries (raw)",
         lambda: queries.timeseries(Query(d30.since, None, {"customer": "cust-42"}), "model", "day")),
        ("filter tag 7d: summary (tag slice + raw edge)", lambda: queries.summary(Query(d7.since, None, {"tag": "vip"}))),
        ("top 50 expensive requests 30d", lambda: queries.requests(d30, "cost", 50)),
        ("top 50 expensive, team filter", lambda: queries.requests(q30_team, "cost", 50)),
        ("50 most recent requests", lambda: queries.requests(d30, "recent", 50)),
        ("request detail", lambda: queries.request("bench-00500000")),
        ("filter menus (dimension values)", lambda: queries.dimension_values(d30)),
        ("budgets", lambda: budget_status(queries)),
    ]
    return out


async def run_backend(backend: str, rows_n: int, repeat: int, reuse: bool, tmp: Path) -> list[dict[str, Any]]:
    if backend == "sqlite":
        path = tmp / f"dashboard-bench-{rows_n}.db"
        fresh = not (reuse and path.exists())
        if fresh and path.exists():
            path.unlink()
        ledger = SQLLedger(f"sqlite:///{path}")
    else:
        fresh = True
        if reuse:
            import asyncpg

            conn = await asyncpg.connect(PG_URL)
            try:
                fresh = not await conn.fetchval(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1", SCHEMA
                )
            finally:
                await conn.close()
        if fresh:
            await reset_pg_schema()
        ledger = SQLLedger(PG_URL, schema=SCHEMA)
    await ledger.start()
    try:
        if fresh:
            t0 = time.perf_counter()
            rows = generate(rows_n)
            t1 = time.perf_counter()
            if backend == "sqlite":
                await asyncio.to_thread(seed_sqlite, tmp / f"dashboard-bench-{rows_n}.db", rows)
            else:
                await seed_postgres(rows)
            del rows
            t2 = time.perf_counter()
            await ledger.rebuild_rollups()
            if backend == "postgresql":
                async with ledger.engine.begin() as conn:
                    await conn.exec_driver_sql("ANALYZE")
            t3 = time.perf_counter()
            print(f"[{backend}] generated {rows_n:,} rows in {t1 - t0:.1f}s, loaded in {t2 - t1:.1f}s, "
                  f"rollups built in {t3 - t2:.1f}s", flush=True)
        count = await ledger.count()
        assert count == rows_n, f"ledger holds {count} rows, expected {rows_n} (stale --reuse data?)"
        queries = DashboardQueries(ledger)
        results = []
        for name, make in workload(queries):
            t0 = time.perf_counter()
            await make()
            cold = (time.perf_counter() - t0) * 1000
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                await make()
                times.append((time.perf_counter() - t0) * 1000)
            median = statistics.median(times)
            results.append({"backend": backend, "query": name, "cold_ms": cold, "median_ms": median,
                            "max_ms": max(times), "ok": median < TARGET_MS and cold < TARGET_MS})
            print(f"[{backend}] {name:45s} cold {cold:8.1f} ms   median {median:8.1f} ms   "
                  f"{'ok' if results[-1]['ok'] else 'SLOW'}", flush=True)
        return results
    finally:
        await ledger.aclose()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="reuse a previously seeded ledger of the same size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: list[dict[str, Any]] = []
    for backend in backends:
        results += await run_backend(backend, args.rows, args.repeat, args.reuse, args.out)
    if not args.reuse and "postgresql" in backends:
        await reset_pg_schema(drop_only=True)
    slow = [r for r in results if not r["ok"]]
    (args.out / "dashboard_queries.json").write_text(json.dumps(results, indent=2))
    worst = max(results, key=lambda r: max(r["cold_ms"], r["median_ms"]))
    print(f"\n{len(results)} queries, {len(slow)} over {TARGET_MS:.0f} ms; slowest: {worst['backend']} "
          f"{worst['query']!r} cold {worst['cold_ms']:.0f} ms, median {worst['median_ms']:.0f} ms")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
