"""Jobs per second through the Redis Streams queue with two workers, and what the
queue path costs over the real-time path, in one run.

Processes: one gateway (``tokenomy serve``, no in-process workers), two
``tokenomy worker`` processes consuming the Redis Streams consumer group, and
this load generator. Model: the built-in simulated provider (``--latency-ms``
of upstream latency, 0 by default). Database: SQLite (embedded file shared by
the three processes) or, with ``--db postgresql``, PostgreSQL in a fresh schema.

1. real-time: ``--jobs`` requests to ``POST /v1/chat/completions`` at
   ``--concurrency``; latency percentiles and requests/s;
2. queued: the same requests to ``POST /v1/async/chat/completions`` (202 + job
   id) at the same concurrency; jobs/s from the first submit to the last
   completion, and each job's queue-path latency (``completed_at - created_at``,
   i.e. 202 → result recorded, ledger row flushed, message acked).

Overhead of the queue path = queued latency − real-time latency (p50, p95).

    python bench/queue_throughput.py [--jobs 2000] [--concurrency 32] [--latency-ms 0] [--db sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.overhead import free_port, wait_ready  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_URL = os.environ.get("TOKENOMY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fire(port: int, path: str, jobs: int, concurrency: int) -> tuple[list[float], list[str], float]:
    """Send ``jobs`` requests at ``concurrency``; latencies (ms), job ids (async), elapsed (s)."""
    latencies: list[float] = []
    ids: list[str] = []
    counter = iter(range(jobs))
    url = f"http://127.0.0.1:{port}{path}"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one_worker() -> None:
            for i in counter:
                body = {"model": "sim-bench", "messages": [{"role": "user", "content": f"Summarise record {i}"}],
                        "max_tokens": 32}  # fmt: skip
                t0 = time.perf_counter()
                async with session.post(url, json=body) as response:
                    data = await response.json()
                    if response.status not in (200, 202):
                        raise RuntimeError(f"{path}: HTTP {response.status}: {data}")
                latencies.append((time.perf_counter() - t0) * 1000)
                if response.status == 202:
                    ids.append(data["id"])

        start = time.perf_counter()
        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
        return latencies, ids, time.perf_counter() - start


async def wait_done(store: Any, ids: list[str], timeout_s: float) -> list[Any]:
    import sqlalchemy as sa

    from tokenomy.jobs.tables import JOBS

    deadline = time.monotonic() + timeout_s
    while True:
        async with store.engine.connect() as conn:
            done = await conn.scalar(
                sa.select(sa.func.count()).where(JOBS.c.status.in_(("completed", "failed")), JOBS.c.id.in_(ids))
            )
        if done == len(ids):
            async with store.engine.connect() as conn:
                rows = (await conn.execute(sa.select(JOBS.c.status, JOBS.c.created_at, JOBS.c.completed_at,
                                                     JOBS.c.attempts).where(JOBS.c.id.in_(ids)))).all()  # fmt: skip
            return rows
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done}/{len(ids)} jobs done after {timeout_s} s")
        await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated upstream latency")
    parser.add_argument("--workers", type=int, default=2, help="tokenomy worker processes")
    parser.add_argument("--worker-concurrency", type=int, default=32, help="jobs.concurrency of each worker")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="tokenomy-queue-bench-"))
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    schema = None
    if args.db == "postgresql":
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        import asyncpg

        async def create_schema() -> None:
            conn = await asyncpg.connect(PG_URL)
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.close()

        asyncio.run(create_schema())
        ledger: dict[str, Any] = {"url": PG_URL, "schema": schema}
    else:
        ledger = {"url": f"sqlite:///{workdir / 'ledger.db'}"}
    port = free_port()
    config = {
        "server": {"port": port},
        "ledger": {**ledger, "flush_interval_s": 0.05},
        "jobs": {
            "queue_url": REDIS_URL,
            "redis_prefix": prefix,
            "files_dir": str(workdir / "files"),
            "gateway_workers": 0,
            "concurrency": args.worker_concurrency,
        },
        "models": [{"name": "sim-bench", "deployments": [{"provider": "simulated", "price_model": "gpt-4o-mini",
                                                          "options": {"latency_ms": args.latency_ms}}]}],
        "log_level": "warning",
    }  # fmt: skip
    config_path = workdir / "tokenomy.yaml"
    config_path.write_text(yaml.safe_dump(config))
    tokenomy = [sys.executable, "-m", "tokenomy.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    log = open(workdir / "processes.log", "wb")
    try:
        procs.append(subprocess.Popen([*tokenomy, "serve", "--config", str(config_path)], cwd=workdir,
                                      stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        for _ in range(args.workers):
            procs.append(subprocess.Popen([*tokenomy, "worker", "--config", str(config_path)], cwd=workdir,
                                          stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
        asyncio.run(run(args, port, config))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        asyncio.run(cleanup(prefix, schema))
        shutil.rmtree(workdir, ignore_errors=True)


async def cleanup(prefix: str, schema: str | None) -> None:
    from tokenomy.jobs.redis_queue import RedisStreamQueue

    queue = RedisStreamQueue(REDIS_URL, prefix=prefix)
    await queue.start()
    await queue.delete_keys()
    await queue.aclose()
    if schema:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


async def run(args: argparse.Namespace, port: int, config: dict[str, Any]) -> None:
    from tokenomy.jobs.store import JobStore

    await fire(port, "/v1/chat/completions", min(200, args.jobs), args.concurrency)  # warm up
    rt_lat, _, rt_elapsed = await fire(port, "/v1/chat/completions", args.jobs, args.concurrency)

    store = JobStore(config["ledger"]["url"], schema=config["ledger"].get("schema"))
    await store.start()
    try:
        t0 = time.time()
        submit_lat, ids, submit_elapsed = await fire(port, "/v1/async/chat/completions", args.jobs, args.concurrency)
        rows = await wait_done(store, ids, timeout_s=600)
    finally:
        await store.aclose()
    first = min(r.created_at for r in rows)
    last = max(r.completed_at for r in rows)
    queue_lat = [(r.completed_at - r.created_at) * 1000 for r in rows]
    failed = sum(1 for r in rows if r.status != "completed")
    retried = sum(1 for r in rows if r.attempts > 1)
    jobs_per_s = len(rows) / max(last - first, 1e-9)

    print(f"\nqueue throughput: {args.jobs} jobs, concurrency {args.concurrency}, simulated latency "
          f"{args.latency_ms:g} ms, {args.workers} workers × {args.worker_concurrency}, Redis Streams, {args.db}")
    print(f"{'path':<34}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'per s':>10}")
    print(f"{'real-time (200 with the answer)':<34}{statistics.median(rt_lat):9.2f}{percentile(rt_lat, .95):9.2f}"
          f"{percentile(rt_lat, .99):9.2f}{len(rt_lat) / rt_elapsed:10.0f}")
    print(f"{'async submit (202 + job id)':<34}{statistics.median(submit_lat):9.2f}"
          f"{percentile(submit_lat, .95):9.2f}{percentile(submit_lat, .99):9.2f}"
          f"{len(submit_lat) / submit_elapsed:10.0f}")
    print(f"{'queued job (202 → result stored)':<34}{statistics.median(queue_lat):9.2f}"
          f"{percentile(queue_lat, .95):9.2f}{percentile(queue_lat, .99):9.2f}{jobs_per_s:10.0f}")
    print(f"queue path overhead over real-time: p50 +{statistics.median(queue_lat) - statistics.median(rt_lat):.2f} ms, "
          f"p95 +{percentile(queue_lat, .95) - percentile(rt_lat, .95):.2f} ms; "
          f"throughput {jobs_per_s:.0f} jobs/s vs {len(rt_lat) / rt_elapsed:.0f} req/s real-time "
          f"({jobs_per_s / (len(rt_lat) / rt_elapsed):.2f}×)")
    print(f"failed jobs: {failed}, jobs retried: {retried} (wall clock {time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
