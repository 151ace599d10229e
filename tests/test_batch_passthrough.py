"""Batches passed through to the provider's batch API (fakes speaking OpenAI's Batch and
Anthropic's Message Batches wire formats), driven by the official ``openai`` SDK,
and priced at batch rates in the CostTrace and the ledger."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fakes.anthropic_batch_upstream import FakeAnthropicBatches
from tests.fakes.openai_batch_upstream import FakeOpenAIBatches
from tests.harness import GatewayServer
from tests.test_batches import chat_line, wait_for_batch, write_jsonl
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage


@pytest.fixture(scope="module")
def openai_batches() -> Iterator[FakeOpenAIBatches]:
    server = FakeOpenAIBatches().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def anthropic_batches() -> Iterator[FakeAnthropicBatches]:
    server = FakeAnthropicBatches().start()
    yield server
    server.stop()


@pytest.fixture
def passthrough_gateway(
    start_gateway: Callable[..., GatewayServer],
    tmp_path: Path,
    openai_batches: FakeOpenAIBatches,
    anthropic_batches: FakeAnthropicBatches,
) -> GatewayServer:
    models = [
        {"name": "gpt-batch", "deployments": [{"provider": "openai", "model": "gpt-4o-mini-2024-07-18",
                                               "base_url": openai_batches.base_url, "api_key_env": "FAKE_OPENAI_KEY",
                                               "price_model": "gpt-4o-mini"}]},
        {"name": "claude-batch", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                                                  "base_url": anthropic_batches.base_url,
                                                  "api_key_env": "FAKE_ANTHROPIC_KEY"}]},
    ]  # fmt: skip
    return start_gateway(
        models=models,
        jobs={"files_dir": str(tmp_path / "files")},
        batches={"upstream_poll_interval_s": 0.05},
    )


def run_batch(server: GatewayServer, tmp_path: Path, lines: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    path = write_jsonl(tmp_path / "batchinput.jsonl", lines)
    batch_input_file = client.files.create(file=open(path, "rb"), purpose="batch")
    batch = client.batches.create(
        input_file_id=batch_input_file.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_headers={"x-tokenomy-team": "data"},
    )
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "completed", batch
    results = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    if batch.error_file_id:
        results += [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    return batch, results


def batch_price(model: str, usage: Usage) -> float:
    price = PriceCatalog.load_default().get(model)
    assert price is not None and price.batch_input is not None and price.batch_input < price.input
    return cost_usd(price, usage, batch=True)  # type: ignore[return-value]


def test_openai_batch_passthrough(passthrough_gateway: GatewayServer, tmp_path: Path,
                                  openai_batches: FakeOpenAIBatches) -> None:
    lines = [chat_line(f"req {i}/x", f"summarise doc {i}", model="gpt-batch") for i in range(6)]
    before = len(openai_batches.batch_requests)
    batch, results = run_batch(passthrough_gateway, tmp_path, lines)
    assert batch.model_extra["tokenomy"]["execution"] == "openai"
    assert batch.request_counts.completed == 6 and batch.request_counts.failed == 0
    sent = openai_batches.batch_requests[before:]
    assert {line["body"]["model"] for line in sent} == {"gpt-4o-mini-2024-07-18"}  # the upstream id
    assert not [r for r in openai_batches.requests if r["path"] == "/v1/chat/completions"]  # no real-time calls
    by_id = {r["custom_id"]: r for r in results}
    assert set(by_id) == {line["custom_id"] for line in lines}
    for i in range(6):
        body = by_id[f"req {i}/x"]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == f"echo: summarise doc {i}"
        assert body["model"] == "gpt-batch"
        usage = Usage.from_openai(body["usage"])
        assert body["usage"]["cost_usd"] == pytest.approx(batch_price("gpt-4o-mini", usage))
        assert body["usage"]["baseline_cost_usd"] > body["usage"]["cost_usd"]  # the batch discount is a saving

    passthrough_gateway.flush_ledger()
    rows = passthrough_gateway.run_coro(passthrough_gateway.gateway.ledger.fetch())
    assert len(rows) == 6
    for row in rows:
        assert row.traffic_class == "batch" and row.team == "data" and row.provider == "openai"
        assert row.cost_items[0]["step"] == "batch_generation"
        assert row.cost_usd == pytest.approx(row.baseline_usd / 2)  # gpt-4o-mini batch = half price
    summary = passthrough_gateway.run_coro(passthrough_gateway.gateway.ledger.spend_summary("traffic_class"))
    assert [g.group for g in summary] == ["batch"]


def test_anthropic_message_batches_passthrough(passthrough_gateway: GatewayServer, tmp_path: Path,
                                               anthropic_batches: FakeAnthropicBatches) -> None:
    lines = [chat_line(f"item.{i}", f"classify ticket {i}", model="claude-batch") for i in range(4)]
    lines.append({**chat_line("sys", "hello", model="claude-batch")})
    lines[-1]["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines.append(chat_line("too-many", "x", model="claude-batch"))
    lines[-1]["body"]["n"] = 2  # refused by the translation: Anthropic has no n > 1
    before = len(anthropic_batches.batch_requests)
    batch, results = run_batch(passthrough_gateway, tmp_path, lines)
    assert batch.model_extra["tokenomy"]["execution"] == "anthropic"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 1)
    sent = anthropic_batches.batch_requests[before:]
    assert len(sent) == 5
    assert all(item["params"]["model"] == "claude-haiku-4-5" for item in sent)
    system = next(item for item in sent if item["params"].get("system"))
    assert system["params"]["system"] == "Be brief."
    by_id = {r["custom_id"]: r for r in results}
    assert set(by_id) == {line["custom_id"] for line in lines}  # the client's ids, restored
    assert by_id["too-many"]["response"]["status_code"] == 400
    answer = by_id["item.2"]["response"]["body"]
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == "echo: classify ticket 2"
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = Usage.from_openai(answer["usage"])
    assert answer["usage"]["cost_usd"] == pytest.approx(batch_price("claude-haiku-4-5", usage))
    passthrough_gateway.flush_ledger()
    rows = passthrough_gateway.run_coro(passthrough_gateway.gateway.ledger.fetch())
    assert len(rows) == 5 and all(r.provider == "anthropic" and r.traffic_class == "batch" for r in rows)
    assert all(r.cost_items[0]["step"] == "batch_generation" for r in rows)


def test_mixed_models_run_locally_in_auto_mode(passthrough_gateway: GatewayServer, tmp_path: Path) -> None:
    lines = [chat_line("a", "one", model="sim-mini"), chat_line("b", "two", model="sim-haiku")]
    batch, results = run_batch(passthrough_gateway, tmp_path, lines)
    assert batch.model_extra["tokenomy"]["execution"] == "local"
    assert len(results) == 2
