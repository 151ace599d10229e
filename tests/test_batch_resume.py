"""A batch whose worker is lost mid-run is finished by another worker, charged once,
and a pass-through batch is resumed (polled), never submitted upstream twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_batch_upstream import FakeOpenAIBatches
from tests.test_batches import chat_line
from tokenomy.app import Gateway, build_gateway
from tokenomy.config import load_settings
from tokenomy.jobs.store import Job
from tokenomy.jobs.worker import JobWorker


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAIBatches]:
    server = FakeOpenAIBatches().start()
    yield server
    server.stop()


@pytest.fixture
async def gateway(tmp_path: Path, upstream: FakeOpenAIBatches, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-fake")
    models = [
        {"name": "sim-slow", "deployments": [{"provider": "simulated", "price_model": "gpt-4o-mini",
                                              "options": {"latency_ms": 50}}]},
        {"name": "gpt-batch", "deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                               "base_url": upstream.base_url, "api_key_env": "FAKE_OPENAI_KEY"}]},
    ]  # fmt: skip
    settings = load_settings(
        None,
        ledger={"url": f"sqlite:///{tmp_path / 'ledger.db'}", "flush_interval_s": 0.05},
        jobs={"files_dir": str(tmp_path / "files"), "visibility_timeout_s": 0.6, "poll_interval_s": 0.02},
        batches={"local_concurrency": 2, "upstream_poll_interval_s": 0.3},
        models=models,
    )
    gw = build_gateway(settings)
    await gw.start(run_workers=False)
    yield gw
    await gw.stop()


async def submit_batch(gw: Gateway, tmp_path: Path, lines: list[dict[str, Any]]) -> str:
    assert gw.jobs is not None
    path = tmp_path / f"in-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with path.open("rb") as handle:
        record = await gw.jobs.files.save_upload(handle, path.name, "batch", 10**9)
    batch_id = "batch_" + uuid.uuid4().hex[:12]
    await gw.jobs.store.create_batch({
        "id": batch_id, "status": "validating", "endpoint": "/v1/chat/completions",
        "input_file_id": record["id"], "completion_window": "24h", "created_at": 0.0, "total": 0,
        "completed": 0, "failed": 0, "deduplicated": 0, "headers": {},
    })  # fmt: skip
    await gw.jobs.submit(Job(id="job_" + batch_id, kind="batch", traffic_class="batch", batch_id=batch_id,
                             body={"batch_id": batch_id}))  # fmt: skip
    return batch_id


async def lose_worker_after(gw: Gateway, condition: Any) -> None:
    """Start a batch on a worker, then lose that worker (its task dies, nothing is acked)."""
    assert gw.jobs is not None
    doomed = JobWorker(gw, name="doomed")
    (delivery,) = await gw.jobs.queue.receive("doomed", wait_s=2)
    task = asyncio.create_task(doomed.handle(delivery))
    for _ in range(400):
        if await condition():
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the batch never got that far")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def finish_on_another_worker(gw: Gateway, batch_id: str) -> dict[str, Any]:
    assert gw.jobs is not None
    survivor = JobWorker(gw, name="survivor")
    runner = asyncio.create_task(survivor.run())
    try:
        for _ in range(1000):
            batch = await gw.jobs.store.get_batch(batch_id)
            assert batch is not None
            if batch["status"] in ("completed", "failed"):
                return batch
            await asyncio.sleep(0.02)
        raise AssertionError("the batch did not finish")
    finally:
        await survivor.stop()
        runner.cancel()


async def test_a_local_batch_lost_mid_run_is_finished_elsewhere_and_charged_once(
    gateway: Gateway, tmp_path: Path
) -> None:
    lines = [chat_line(f"r{i}", f"question {i}", model="sim-slow") for i in range(60)]
    batch_id = await submit_batch(gateway, tmp_path, lines)
    assert gateway.jobs is not None and gateway.ledger is not None and gateway.writer is not None

    async def some_lines_done() -> bool:
        batch = await gateway.jobs.store.get_batch(batch_id)  # type: ignore[union-attr]
        return bool(batch and batch["completed"] >= 8)

    await lose_worker_after(gateway, some_lines_done)
    batch = await finish_on_another_worker(gateway, batch_id)
    assert batch["status"] == "completed" and batch["completed"] == 60
    await gateway.writer.flush()
    rows = await gateway.ledger.fetch()
    ids = [row.request_id for row in rows]
    assert len(ids) == 60 == len(set(ids))  # lines run twice are charged once
    output = b"".join([chunk async for chunk in await gateway.jobs.files.stream(batch["output_file_id"])])
    assert sorted(json.loads(line)["custom_id"] for line in output.splitlines()) == sorted(f"r{i}" for i in range(60))


async def test_a_passthrough_batch_is_resumed_not_resubmitted(
    gateway: Gateway, tmp_path: Path, upstream: FakeOpenAIBatches
) -> None:
    before = len(upstream.batches)
    lines = [chat_line(f"p{i}", f"doc {i}", model="gpt-batch") for i in range(5)]
    batch_id = await submit_batch(gateway, tmp_path, lines)

    async def submitted_upstream() -> bool:
        batch = await gateway.jobs.store.get_batch(batch_id)  # type: ignore[union-attr]
        return bool(batch and batch["upstream_id"])

    await lose_worker_after(gateway, submitted_upstream)
    batch = await finish_on_another_worker(gateway, batch_id)
    assert batch["status"] == "completed" and batch["completed"] == 5
    assert len(upstream.batches) == before + 1  # polled again, not created again
    assert gateway.writer is not None and gateway.ledger is not None
    await gateway.writer.flush()
    rows = await gateway.ledger.fetch()
    assert len(rows) == 5 and all(r.cost_items[0]["step"] == "batch_generation" for r in rows)
