"""Jobs per second through the Redis Streams queue with two workers, and what the
queue path costs over the real-time path, in one run.

Processes: one gateway (``tokenomy serve``, no in-process workers), two
``tokenomy worker`` processes consuming the Redis Streams consumer group, and
this load generator. Model: the built-in simulated provider (``--latency-ms``
of upstream latency, 0 by default). Database: SQLite (embedded file shared by
the three processes) or, with ``--db postgresql``, PostgreSQL in a fresh schema.

1. latency, one request at a time: real-time requests, then jobs submitted one
   by one, each waited for; a job's latency is ``completed_at - created_at``
   (202 → result recorded and its ledger row flushed). Overhead of the queue
   path = job latency − real-time latency (p50, p95).
2. throughput at ``--concurrency``: ``--jobs`` real-time requests (req/s), then
   ``--jobs`` async submissions; jobs/s from the first submit to the last result.

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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


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


async def wait_done(store: Any, ids: list[str], timeout_s: float, poll_s: float = 0.05) -> list[Any]:
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
        await asyncio.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="simulated upstream latency")
    parser.add_argument("--workers", type=int, default=2, help="tokenomy worker processes")
    parser.add_argument("--worker-concurrency", type=int, default=32, help="jobs.concurrency of each worker")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--latency-samples", type=int, default=100, help="sequential requests for the latency part")
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
        asyncio.run(run(args, port, config, procs[0].pid, [p.pid for p in procs[1:]]))
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


async def run(args: argparse.Namespace, port: int, config: dict[str, Any], gateway_pid: int,
              worker_pids: list[int]) -> None:
    from tokenomy.jobs.store import JobStore

    store = JobStore(config["ledger"]["url"], schema=config["ledger"].get("schema"))
    await store.start()
    try:
        await fire(port, "/v1/chat/completions", min(200, args.jobs), args.concurrency)  # warm up

        # 1. latency, one at a time: what the queue path adds to a single request
        rt1, _, _ = await fire(port, "/v1/chat/completions", args.latency_samples, 1)
        single: list[float] = []
        for _ in range(args.latency_samples):
            _, ids, _ = await fire(port, "/v1/async/chat/completions", 1, 1)
            (row,) = await wait_done(store, ids, timeout_s=60, poll_s=0.002)
            single.append((row.completed_at - row.created_at) * 1000)

        # 2. throughput at concurrency: real-time requests/s, then jobs/s through the queue
        cpu0 = cpu_seconds([gateway_pid])
        rt_lat, _, rt_elapsed = await fire(port, "/v1/chat/completions", args.jobs, args.concurrency)
        rt_cpu = cpu_seconds([gateway_pid]) - cpu0
        t0 = time.time()
        gw0, wk0 = cpu_seconds([gateway_pid]), cpu_seconds(worker_pids)
        submit_lat, ids, submit_elapsed = await fire(port, "/v1/async/chat/completions", args.jobs, args.concurrency)
        rows = await wait_done(store, ids, timeout_s=600)
        q_gw_cpu, q_wk_cpu = cpu_seconds([gateway_pid]) - gw0, cpu_seconds(worker_pids) - wk0
    finally:
        await store.aclose()
    first = min(r.created_at for r in rows)
    last = max(r.completed_at for r in rows)
    failed = sum(1 for r in rows if r.status != "completed")
    retried = sum(1 for r in rows if r.attempts > 1)
    jobs_per_s = len(rows) / max(last - first, 1e-9)
    rt_per_s = len(rt_lat) / rt_elapsed

    print(f"\nqueue throughput: simulated upstream latency {args.latency_ms:g} ms, {args.workers} workers × "
          f"{args.worker_concurrency}, Redis Streams queue, {args.db} ledger and job store")
    print(f"latency, one request at a time ({args.latency_samples} samples):")
    print(f"  {'path':<44}{'p50 ms':>9}{'p95 ms':>9}")
    print(f"  {'real-time (200 with the answer)':<44}{statistics.median(rt1):9.2f}{percentile(rt1, .95):9.2f}")
    print(f"  {'queued job (202 → result stored, ledger row)':<44}{statistics.median(single):9.2f}"
          f"{percentile(single, .95):9.2f}")
    print(f"  queue path overhead: p50 +{statistics.median(single) - statistics.median(rt1):.2f} ms, "
          f"p95 +{percentile(single, .95) - percentile(rt1, .95):.2f} ms")
    print(f"throughput, {args.jobs} requests at concurrency {args.concurrency}:")
    print(f"  real-time                {rt_per_s:8.0f} req/s  (p50 {statistics.median(rt_lat):.1f} ms)")
    print(f"  async submit (202)       {len(submit_lat) / submit_elapsed:8.0f} req/s  "
          f"(p50 {statistics.median(submit_lat):.1f} ms)")
    print(f"  jobs completed           {jobs_per_s:8.0f} jobs/s ({jobs_per_s / rt_per_s:.2f}× real-time), "
          f"first submit → last result {last - first:.1f} s")
    print(f"  failed jobs: {failed}, jobs retried: {retried} (wall clock {time.time() - t0:.1f} s)")
    n = args.jobs
    print("CPU time per request (robust on a busy machine):")
    print(f"  real-time: gateway {rt_cpu / n * 1000:.2f} ms")
    print(f"  queued:    gateway {q_gw_cpu / n * 1000:.2f} ms (submit) + workers {q_wk_cpu / n * 1000:.2f} ms "
          f"= {(q_gw_cpu + q_wk_cpu) / n * 1000:.2f} ms; queue path overhead "
          f"+{(q_gw_cpu + q_wk_cpu - rt_cpu) / n * 1000:.2f} ms CPU per request")


if __name__ == "__main__":
    main()
