"""A 100,000-line batch, uploaded with the ``openai`` SDK and run locally against the
simulated provider: files are streamed and duplicate lines computed once."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.harness import GatewayServer
from tests.test_batches import wait_for_batch

LINES = 100_000
DISTINCT = 90_000  # the last 10,000 lines repeat earlier requests


@pytest.mark.slow
def test_a_100k_line_batch(start_gateway: Callable[..., GatewayServer], tmp_path: Path) -> None:
    server = start_gateway(
        jobs={"files_dir": str(tmp_path / "files")},
        batches={"local_concurrency": 64},
        ledger={"batch_size": 2000},
    )
    path = tmp_path / "big.jsonl"
    with open(path, "w") as out:
        for i in range(LINES):
            n = i if i < DISTINCT else i % 1000
            body = {"model": "sim-mini", "messages": [{"role": "user", "content": f"Summarise record {n}"}],
                    "max_tokens": 16}  # fmt: skip
            out.write(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": body}) + "\n")  # fmt: skip
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=120)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    assert uploaded.bytes == path.stat().st_size
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_for_batch(client, batch.id, timeout_s=600)
    elapsed = time.perf_counter() - start
    assert batch.status == "completed"
    assert batch.request_counts.total == LINES and batch.request_counts.completed == LINES
    assert batch.request_counts.model_extra["deduplicated"] == LINES - DISTINCT

    seen = 0
    with client.files.with_streaming_response.content(batch.output_file_id) as response:
        for line in response.iter_lines():
            if line:
                seen += 1
    assert seen == LINES
    server.flush_ledger()
    assert server.run_coro(server.gateway.ledger.count()) == DISTINCT
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"\n100k-line batch: {elapsed:.1f} s end to end ({LINES / elapsed:.0f} lines/s), peak RSS grew {grown_mb:.0f} MB")
