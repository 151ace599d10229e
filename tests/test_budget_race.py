"""The acceptance race: separate gateway processes, one shared budget, 500 concurrent requests.

Every request costs the same (fixed answer length, ``max_tokens`` equal to it),
so the budget's capacity is an exact number of requests. However the requests
interleave across processes, the settled spend must stay within the budget and
the number admitted must be the capacity (within one).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.budget_fixtures import REDIS_URL, clear_prefix, redis_prefix, require_redis
from tests.budget_helpers import FIXED_MODEL, HELLO, OUTPUT_TOKENS
from tests.harness import free_port
from tokenomy.budgets.counters import NANO
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages

REQUESTS = 500
CAPACITY = 120


def request_cost() -> float:
    price = PriceCatalog.load_default().get("gpt-4o-mini")
    usd = cost_usd(price, Usage(input_tokens=count_messages(HELLO, "sim-fixed"), output_tokens=OUTPUT_TOKENS))
    assert usd is not None
    return usd


def start_process(tmp_path: Path, name: str, config: dict) -> tuple[subprocess.Popen, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "TOKENOMY_CONFIG": str(path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "tokenomy.app:app_from_environment",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.log", "wb"),
    )
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway at {url} exited with {proc.returncode}")
            try:
                async with http.get(url + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"gateway at {url} did not become ready")


async def hammer(urls: list[str]) -> list[tuple[int, dict]]:
    body = {"model": "sim-fixed", "messages": HELLO, "max_tokens": OUTPUT_TOKENS}
    connector = aiohttp.TCPConnector(limit=REQUESTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        start = asyncio.Event()

        async def one(i: int) -> tuple[int, dict]:
            await start.wait()
            async with http.post(urls[i % len(urls)] + "/v1/chat/completions", json=body) as response:
                return response.status, await response.json()

        tasks = [asyncio.ensure_future(one(i)) for i in range(REQUESTS)]
        start.set()
        return await asyncio.gather(*tasks)


def config(tmp_path: Path, name: str, budgets: dict) -> dict:
    return {
        "ledger": {"url": f"sqlite:///{tmp_path / name}-ledger.db"},
        "keys": {"pepper_file": str(tmp_path / "pepper")},
        "models": [FIXED_MODEL],
        "runaway": {"enabled": False},
        "cache": {"enabled": False},  # identical requests: each must reach the budget, not the cache
        "budgets": {"state_path": str(tmp_path / f"{name}-counters.db"), **budgets},
        "log_level": "warning",
    }


def check(results: list[tuple[int, dict]], cost: float, budget: float) -> float:
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    refused = [body for status, body in results if status == 429]
    assert all(body["error"]["code"] == "budget_exceeded" for body in refused)
    admitted = statuses.count(200)
    assert abs(admitted - CAPACITY) <= 1, (admitted, CAPACITY)
    spent = sum(body["usage"]["cost_usd"] for status, body in results if status == 200)
    assert spent <= budget + 1e-12
    return spent


@pytest.mark.slow
async def test_two_processes_share_a_redis_budget(tmp_path: Path) -> None:
    await require_redis()
    prefix = redis_prefix()
    cost = request_cost()
    budget = cost * CAPACITY + cost / 2
    shared = {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix,
              "budgets": [{"id": "race", "amount_usd": budget, "period": "daily"}]}
    procs = [start_process(tmp_path, f"gw{i}", config(tmp_path, f"gw{i}", shared)) for i in range(2)]
    try:
        for proc, url in procs:
            await wait_ready(url, proc)
        results = await hammer([url for _, url in procs])
        check(results, cost, budget)
        await asyncio.sleep(0.5)  # background settles
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "b:race:*")]
            settled = sum(int(v) for v in await client.mget(keys)) / NANO
            outstanding = await client.zcard(prefix + "resv")
        finally:
            await client.aclose()
        assert outstanding == 0
        assert settled <= budget
        assert settled == pytest.approx(cost * CAPACITY, rel=0.01)
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(30)
        await clear_prefix(prefix)


@pytest.mark.slow
async def test_one_process_embedded_budget(tmp_path: Path) -> None:
    cost = request_cost()
    budget = cost * CAPACITY + cost / 2
    embedded = {"backend": "memory", "budgets": [{"id": "race", "amount_usd": budget, "period": "daily"}]}
    proc, url = start_process(tmp_path, "gw", config(tmp_path, "gw", embedded))
    try:
        await wait_ready(url, proc)
        results = await hammer([url])
        check(results, cost, budget)
    finally:
        proc.terminate()
        proc.wait(30)
    # the settled spend was persisted on shutdown and is within the budget
    import sqlite3

    with sqlite3.connect(tmp_path / "gw-counters.db") as db:
        settled = sum(v for (v,) in db.execute("SELECT value FROM counters WHERE key LIKE 'b:race:%'")) / NANO
    assert settled <= budget
    assert settled == pytest.approx(cost * CAPACITY, rel=0.01)
