"""Ledger rows written by a real gateway: correct on SQLite and on the real
PostgreSQL, and nothing lost when the gateway is stopped with SIGTERM under load."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.conftest import PG_URL
from tests.harness import GatewayServer, free_port, wait_ready
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.store.sql_ledger import SQLLedger


@pytest.fixture
def ledger_settings(ledger_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    if ledger_backend == "sqlite":
        return {"url": f"sqlite:///{tmp_path / 'gw-ledger.db'}"}
    return {"url": PG_URL, "schema": request.getfixturevalue("pg_schema")}


def test_rows_are_correct(start_gateway: Callable[..., GatewayServer], ledger_settings: dict) -> None:
    server = start_gateway(ledger={**ledger_settings, "flush_interval_s": 0.05})
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="sim-mini",
        messages=[{"role": "user", "content": "Where is my order?"}],
        user="customer-42",
        extra_headers={
            "x-request-id": "ledger-1",
            "x-tokenomy-team": "support",
            "x-tokenomy-feature": "order-status",
            "x-tokenomy-endpoint": "/orders/help",
            "x-tokenomy-tags": "beta, eu,beta",
        },
    )
    usage = raw.parse().usage
    assert usage is not None
    stream = sdk.chat.completions.create(
        model="sim-flagship",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        extra_headers={"x-request-id": "ledger-2", "x-tokenomy-team": "growth"},
    )
    for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "ledger-3"}
        )
    messages = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0).messages.create(
        model="sim-haiku",
        max_tokens=50,
        messages=[{"role": "user", "content": "hello from anthropic"}],
        extra_headers={"x-request-id": "ledger-4", "x-tokenomy-feature": "chat"},
    )
    assert messages.content
    server.flush_ledger()
    rows = {row.request_id: row for row in server.run_coro(server.gateway.ledger.fetch())}

    first = rows["ledger-1"]
    price = PriceCatalog.load_default().get("gpt-4o-mini")
    assert price is not None
    expected = (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6
    assert (first.team, first.feature, first.customer, first.endpoint) == (
        "support",
        "order-status",
        "customer-42",
        "/orders/help",
    )
    assert first.tags == ["beta", "eu"]
    assert (first.model_asked, first.model_served, first.provider) == ("sim-mini", "sim-mini", "simulated")
    assert (first.input_tokens, first.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert first.cost_usd == pytest.approx(expected)
    assert first.baseline_usd == pytest.approx(expected)
    assert first.outcome == "ok" and first.status == 200 and not first.stream
    assert first.api == "openai" and first.kind == "chat"
    assert set(first.stage_ms) >= {"identify", "resolve", "execute"}  # record times itself after writing
    assert first.duration_ms is not None and first.duration_ms > 0
    assert first.cost_items[0]["step"] == "generation"

    second = rows["ledger-2"]
    assert second.stream and second.team == "growth" and second.outcome == "ok"
    assert second.output_tokens > 0 and second.cost_usd and second.cost_usd > 0

    third = rows["ledger-3"]
    assert third.outcome == "model_not_found" and third.status == 404 and third.cost_usd == 0

    fourth = rows["ledger-4"]
    assert fourth.api == "anthropic" and fourth.feature == "chat" and fourth.model_served == "sim-haiku"
    assert fourth.output_tokens == messages.usage.output_tokens


@pytest.mark.slow
def test_sigterm_under_load_loses_no_rows(ledger_settings: dict, tmp_path: Path) -> None:
    """Every request that got an answer has its row after a SIGTERM mid-load."""
    port = free_port()
    env = {
        **os.environ,
        "TOKENOMY_SERVER__PORT": str(port),
        "TOKENOMY_LEDGER__URL": ledger_settings["url"],
        # a long interval: rows must survive because shutdown flushes them, not by luck
        "TOKENOMY_LEDGER__FLUSH_INTERVAL_S": "30",
        "TOKENOMY_LEDGER__BATCH_SIZE": "100000",
        "TOKENOMY_LOG_LEVEL": "warning",
    }
    if "schema" in ledger_settings:
        env["TOKENOMY_LEDGER__SCHEMA"] = ledger_settings["schema"]
    proc = subprocess.Popen([sys.executable, "-m", "tokenomy.cli", "serve"], env=env, cwd=tmp_path)
    try:
        wait_ready(port)
        answered = asyncio.run(_load_then_sigterm(port, proc))
        # uvicorn shuts down gracefully, then re-raises SIGTERM (exit status -15) by convention
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(answered) > 10, "too few requests answered before SIGTERM to prove anything"

    async def read_rows() -> set[str]:
        ledger = SQLLedger(ledger_settings["url"], schema=ledger_settings.get("schema"))
        await ledger.start()
        try:
            return {row.request_id for row in await ledger.fetch()}
        finally:
            await ledger.aclose()

    stored = asyncio.run(read_rows())
    missing = answered - stored
    assert not missing, f"{len(missing)} answered requests have no ledger row"


async def _load_then_sigterm(port: int, proc: subprocess.Popen) -> set[str]:
    answered: set[str] = set()
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            n = 0
            while not stop.is_set():
                request_id = f"term-{worker}-{n}"
                n += 1
                try:
                    response = await http.post(
                        "/v1/chat/completions",
                        json={"model": "sim-mini", "messages": [{"role": "user", "content": f"q {n}"}]},
                        headers={"x-request-id": request_id},
                    )
                except httpx.HTTPError:
                    return  # the server is going away
                if response.status_code == 200:
                    answered.add(request_id)

    tasks = [asyncio.create_task(client(i)) for i in range(16)]
    await asyncio.sleep(3.0)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    return answered


@pytest.mark.slow
def test_two_workers_share_one_ledger(tmp_path: Path) -> None:
    """`tokenomy serve --workers 2`: both processes serve and record into the same ledger."""
    port = free_port()
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**os.environ, "TOKENOMY_LEDGER__URL": url, "TOKENOMY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokenomy.cli", "serve", "--workers", "2", "--port", str(port)], env=env, cwd=tmp_path
    )
    try:
        wait_ready(port)
        ids = [f"w-{i}" for i in range(40)]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            for request_id in ids:
                response = http.post(
                    "/v1/chat/completions",
                    json={"model": "sim-mini", "messages": [{"role": "user", "content": request_id}]},
                    headers={"x-request-id": request_id, "connection": "close"},
                )
                assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()

    async def stored() -> set[str]:
        ledger = SQLLedger(url)
        await ledger.start()
        try:
            return {row.request_id for row in await ledger.fetch()}
        finally:
            await ledger.aclose()

    assert set(ids) <= asyncio.run(stored())
