"""What budget enforcement adds per request: enforcement off vs embedded vs Redis, in one run.

The same in-process pipeline (identify → resolve → [budget] → execute on the
zero-latency simulated model) runs the same chat call sequentially; the
configurations are interleaved round by round so machine noise hits them alike.
With enforcement on, each call matches three budgets (global, team, key), a
rate limit (requests + tokens per minute) and the runaway meter — one atomic
reserve and one settle per call.

Reported per configuration: p50/p90/p99 of the call as the client sees it
(settle runs in the background after the answer), the budget stage's own time,
and wall time per call including the background settle (what it costs in CPU).

    python bench/budget_overhead.py [--calls 3000] [--rounds 5] [--redis redis://127.0.0.1:6379/0]

Target (issue #3): ≤ 0.3 ms p50 added with local Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tokenomy.app import Gateway, build_gateway  # noqa: E402
from tokenomy.config import load_settings  # noqa: E402
from tokenomy.pipeline.call import Call, Identity  # noqa: E402

BODY = {"model": "sim-mini", "messages": [{"role": "user", "content": "Summarize caching in one line."}], "max_tokens": 64}
IDENTITY = Identity(key_id="key_bench", team="growth", org="acme")


def settings(mode: str, workdir: Path, redis_url: str) -> dict:
    base = {
        "ledger": {"enabled": False},
        "keys": {"pepper_file": str(workdir / "pepper")},
        "cache": {"enabled": False},  # the same call repeats: measure enforcement, not cache hits
        "log_level": "error",
    }
    if mode == "off":
        return {**base, "budgets": {"enabled": False}}
    rules = {
        "budgets": [
            {"id": "global", "amount_usd": 1e9, "period": "monthly"},
            {"id": "team", "scope": "team", "value": "growth", "amount_usd": 1e9, "period": "daily"},
            {"id": "key", "scope": "key", "value": "*", "amount_usd": 1e9, "period": "rolling", "window_s": 86400},
        ],
        "rate_limits": [{"id": "rl", "scope": "key", "rpm": 10**9, "tpm": 10**12}],
        "state_path": str(workdir / f"{mode}-counters.db"),
    }
    if mode == "redis":
        rules.update(backend="redis", redis_url=redis_url, redis_prefix=f"bench:{uuid.uuid4().hex[:8]}:")
    return {**base, "budgets": rules}


async def one(gateway: Gateway) -> tuple[float, float]:
    call = Call(kind="chat", body=dict(BODY), model_asked="sim-mini")
    call.identity = IDENTITY
    start = time.perf_counter()
    await gateway.pipeline.run(call)
    return (time.perf_counter() - start) * 1000.0, call.stage_ms.get("budget", 0.0)


async def measure(gateway: Gateway, calls: int) -> tuple[list[float], list[float], float]:
    latencies, stage = [], []
    start = time.perf_counter()
    for _ in range(calls):
        total, budget = await one(gateway)
        latencies.append(total)
        stage.append(budget)
    enforcement = gateway.enforcement
    if enforcement is not None:
        await enforcement.enforcer.drain()
    wall = (time.perf_counter() - start) * 1000.0 / calls
    return latencies, stage, wall


async def forget(url: str, prefix: str) -> None:
    """Delete the run's counters (its prefix is unique to the run)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def redis_round_trip(url: str, calls: int = 2000) -> tuple[float, float]:
    """p50 of one bare EVALSHA round trip (a script returning 1): the floor of any Redis-backed check.

    Measured on the connection the counter store uses, and through redis-py's
    pooled client for comparison, interleaved.
    """
    import redis.asyncio as aioredis

    from tokenomy.store.redis_connection import RedisConnection

    client = aioredis.Redis.from_url(url)
    connection = RedisConnection(url)
    sha = await client.script_load("return 1")
    lean, pooled = [], []
    for _ in range(calls):
        start = time.perf_counter()
        await connection.execute("EVALSHA", sha, 0)
        middle = time.perf_counter()
        await client.evalsha(sha, 0)
        lean.append((middle - start) * 1000.0)
        pooled.append((time.perf_counter() - middle) * 1000.0)
    await client.aclose()
    await connection.aclose()
    return statistics.median(lean), statistics.median(pooled)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--modes", nargs="+", default=["off", "memory", "redis"])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tokenomy-bench-"))
    gateways: dict[str, Gateway] = {}
    for mode in args.modes:
        gateway = build_gateway(load_settings(None, **settings(mode, workdir, args.redis)))
        await gateway.start()
        await measure(gateway, 300)  # warm up
        gateways[mode] = gateway
    results: dict[str, tuple[list[float], list[float], list[float]]] = {m: ([], [], []) for m in args.modes}
    for _ in range(args.rounds):
        for mode, gateway in gateways.items():
            latencies, stage, wall = await measure(gateway, args.calls // args.rounds)
            results[mode][0].extend(latencies)
            results[mode][1].extend(stage)
            results[mode][2].append(wall)
    floor = await redis_round_trip(args.redis) if "redis" in gateways else None
    for gateway in gateways.values():
        await gateway.stop()
    if "redis" in gateways:
        await forget(args.redis, gateways["redis"].settings.budgets.redis_prefix)
    base = statistics.median(results["off"][0]) if "off" in results else None
    base_wall = statistics.median(results["off"][2]) if "off" in results else None
    print(f"{'mode':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'stage p50':>10} {'wall/call':>10} {'added p50':>10} {'added wall':>11}")
    for mode, (latencies, stage, walls) in results.items():
        p50 = statistics.median(latencies)
        wall = statistics.median(walls)
        added = f"{p50 - base:+.3f}" if base is not None else "-"
        added_wall = f"{wall - base_wall:+.3f}" if base_wall is not None else "-"
        print(
            f"{mode:8} {p50:8.3f} {pct(latencies, 0.9):8.3f} {pct(latencies, 0.99):8.3f} "
            f"{statistics.median(stage):10.3f} {wall:10.3f} {added:>10} {added_wall:>11}"
        )
    if floor is not None:
        print(
            f"bare Redis EVALSHA round trip p50 on this machine now: {floor[0]:.3f} ms on the store's connection, "
            f"{floor[1]:.3f} ms through redis-py"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    import uvloop  # the event loop `tokenomy serve` runs on

    uvloop.run(main())
