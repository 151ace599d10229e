"""The Batch API through the official ``openai`` SDK, used as its documentation shows,
with local execution through the gateway's pipeline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.harness import GatewayServer


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def chat_line(custom_id: str, text: str, model: str = "sim-mini") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20},
    }


def wait_for_batch(client: openai.OpenAI, batch_id: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)


@pytest.fixture
def batch_gateway(start_gateway: Callable[..., GatewayServer], tmp_path: Path) -> GatewayServer:
    return start_gateway(jobs={"files_dir": str(tmp_path / "files")})


def test_sdk_uploads_creates_polls_and_downloads_a_local_batch(batch_gateway: GatewayServer, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=batch_gateway.base_url, api_key="unused")
    lines = [chat_line(f"request-{i}", f"question number {i}") for i in range(20)]
    lines += [chat_line(f"dup-{i}", "the same question") for i in range(5)]  # computed once
    path = write_jsonl(tmp_path / "batchinput.jsonl", lines)

    batch_input_file = client.files.create(file=open(path, "rb"), purpose="batch")
    assert batch_input_file.purpose == "batch" and batch_input_file.bytes == path.stat().st_size
    batch = client.batches.create(
        input_file_id=batch_input_file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )
    assert batch.status == "validating" and batch.metadata == {"description": "nightly eval job"}
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 25
    assert batch.request_counts.completed == 25 and batch.request_counts.failed == 0
    assert batch.request_counts.model_extra["deduplicated"] == 4
    assert batch.error_file_id is None

    file_response = client.files.content(batch.output_file_id)
    results = [json.loads(line) for line in file_response.text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(line["custom_id"] for line in lines)
    for result in results:
        assert result["error"] is None and result["response"]["status_code"] == 200
        body = result["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["cost_usd"] > 0
    dup_answers = {json.dumps(r["response"]["body"]["choices"]) for r in results if r["custom_id"].startswith("dup-")}
    assert len(dup_answers) == 1

    assert [b.id for b in client.batches.list(limit=10)] == [batch.id]

    batch_gateway.flush_ledger()
    rows = batch_gateway.run_coro(batch_gateway.gateway.ledger.fetch())
    assert len(rows) == 21  # 20 distinct requests + 1 for the 5 identical ones
    assert {row.traffic_class for row in rows} == {"batch"}
    assert all(row.request_id.startswith(batch.id + "-") for row in rows)
    # run through the real-time API of the (simulated) upstream: real-time rates, tagged as batch
    assert all(item["step"] == "generation" for row in rows for item in row.cost_items)


def test_failed_lines_go_to_the_error_file(batch_gateway: GatewayServer, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=batch_gateway.base_url, api_key="unused")
    lines = [chat_line("ok", "hello"), chat_line("bad", "hello", model="no-such-model")]
    uploaded = client.files.create(file=write_jsonl(tmp_path / "in.jsonl", lines).open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    (error,) = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad"
    assert error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"


def test_an_invalid_input_file_fails_the_batch_with_line_errors(batch_gateway: GatewayServer, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=batch_gateway.base_url, api_key="unused")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(chat_line("a", "x")) + "\nnot json\n" + json.dumps(chat_line("a", "y")) + "\n")
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "failed"
    codes = {(e.code, e.line) for e in batch.errors.data}
    assert ("invalid_json_line", 2) in codes and ("duplicate_custom_id", 3) in codes


def test_batch_errors_use_openai_envelopes(batch_gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=batch_gateway.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h")


def test_cancelling_a_batch(start_gateway: Callable[..., GatewayServer], tmp_path: Path) -> None:
    slow = [{"name": "sim-slow", "deployments": [{"provider": "simulated", "price_model": "gpt-4o-mini",
                                                  "options": {"latency_ms": 100}}]}]
    server = start_gateway(models=slow, jobs={"files_dir": str(tmp_path / "files")},
                           batches={"local_concurrency": 2})
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    lines = [chat_line(f"r{i}", f"q{i}", model="sim-slow") for i in range(200)]
    uploaded = client.files.create(file=write_jsonl(tmp_path / "in.jsonl", lines).open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 20
    while client.batches.retrieve(batch.id).status != "in_progress":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.batches.cancel(batch.id).status == "cancelling"
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "cancelled"
    assert 0 < batch.request_counts.completed < 200
    done = client.files.content(batch.output_file_id).text.splitlines()
    assert len(done) == batch.request_counts.completed
