"""A worker killed mid-job: the job still completes exactly once and is charged once.

Run against both queues: the embedded SQL queue (SQLite) and Redis Streams on the
real Redis at 127.0.0.1:6379 (a unique key prefix per test). Workers are real
``tokenomy worker`` processes; the first one is killed with SIGKILL while its
jobs are upstream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.fakes.webhook_receiver import WebhookReceiver
from tests.harness import GatewayServer
from tokenomy.app import build_gateway
from tokenomy.config import load_settings
from tokenomy.jobs.redis_queue import RedisStreamQueue
from tokenomy.jobs.store import Job
from tokenomy.jobs.webhooks import verify_signature
from tokenomy.jobs.worker import JobWorker

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "whsec-test"

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "redis"])
def queue_backend(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    prefix = f"test-crash-{uuid.uuid4().hex[:10]}"
    yield {"queue_url": REDIS_URL, "redis_prefix": prefix}

    async def cleanup() -> None:
        queue = RedisStreamQueue(REDIS_URL, prefix=prefix)
        await queue.start()
        await queue.delete_keys()
        await queue.aclose()

    asyncio.run(cleanup())


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def config(tmp_path: Path, backend: dict[str, Any], **jobs: Any) -> dict[str, Any]:
    return {
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}", "flush_interval_s": 0.05},
        "jobs": {
            "files_dir": str(tmp_path / "files"),
            "visibility_timeout_s": 2.0,
            "poll_interval_s": 0.05,
            "webhook_secret": SECRET,
            "webhook_backoff_s": 0.05,
            **backend,
            **jobs,
        },
        "models": [
            {
                "name": "sim-slow",
                "deployments": [
                    {"provider": "simulated", "price_model": "gpt-4o-mini", "options": {"latency_ms": 1500}}
                ],
            }
        ],
    }


def start_worker(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tokenomy.cli", "worker", "--config", str(config_path)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=config_path.parent,
    )


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_killed_worker_s_jobs_complete_exactly_once_and_are_charged_once(
    tmp_path: Path, queue_backend: dict[str, Any], receiver: WebhookReceiver
) -> None:
    cfg = config(tmp_path, queue_backend)
    config_path = tmp_path / "tokenomy.yaml"
    config_path.write_text(yaml.safe_dump(cfg))
    gateway_settings = load_settings(config_path, jobs={"gateway_workers": 0})  # only the workers run jobs
    server = GatewayServer(gateway_settings).start()
    log = tmp_path / "workers.log"
    first = second = None
    try:
        http = httpx.Client(base_url=server.base_url, timeout=10)
        ids = []
        for i in range(3):
            answer = http.post(
                "/async/chat/completions",
                json={"model": "sim-slow", "messages": [{"role": "user", "content": f"job {i}"}]},
                headers={"x-tokenomy-webhook-url": receiver.url, "x-tokenomy-team": "nightly"},
            )
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])

        def jobs() -> list[dict[str, Any]]:
            return [http.get(f"/async/jobs/{job_id}").json() for job_id in ids]

        first = start_worker(config_path, log)
        wait_until(lambda: all(j["status"] == "in_progress" for j in jobs()), 30, "the first worker to take the jobs")
        first.send_signal(signal.SIGKILL)  # mid-job: every job is waiting on the upstream
        first.wait(10)
        assert all(j["status"] == "in_progress" and j["attempts"] == 1 for j in jobs())

        second = start_worker(config_path, log)
        wait_until(lambda: all(j["status"] == "completed" for j in jobs()), 40, "the second worker to finish")
        wait_until(lambda: len(receiver.deliveries) >= 3, 10, "the webhooks")
        time.sleep(0.5)  # anything sent twice would have arrived by now

        for job in jobs():
            assert job["attempts"] == 2, job
            assert job["result"]["object"] == "chat.completion"
            assert job["cost_usd"] > 0 and job["traffic_class"] == "async"
            assert job["webhook"]["status"] == "delivered"

        # one webhook per job, each signed
        assert sorted(d["body"]["data"]["id"] for d in receiver.deliveries) == sorted(ids)
        for delivery in receiver.deliveries:
            assert verify_signature(SECRET, delivery["raw"], delivery["headers"]["x-tokenomy-signature"])
            assert delivery["body"]["type"] == "job.completed"

        # charged once: one ledger row per job, under the job's id
        rows = server.run_coro(server.gateway.ledger.fetch())
        assert sorted(row.request_id for row in rows) == sorted(ids), [r.request_id for r in rows]
        assert all(row.traffic_class == "async" and row.team == "nightly" and row.outcome == "ok" for row in rows)
        assert all(row.cost_usd and row.cost_usd > 0 for row in rows)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        server.stop()
    if second is not None:
        assert second.returncode == 0, log.read_text()[-3000:]


class Crash(BaseException):
    """Stands for the process dying at a given point (not an error anything would catch)."""


async def test_a_worker_lost_after_recording_the_result_does_not_run_the_job_again(
    tmp_path: Path, queue_backend: dict[str, Any]
) -> None:
    settings = load_settings(None, **{k: v for k, v in config(tmp_path, queue_backend, visibility_timeout_s=0.5).items()})
    gateway = build_gateway(settings)
    await gateway.start(run_workers=False)
    try:
        service = gateway.jobs
        assert service is not None
        job = Job(id=f"job_{uuid.uuid4().hex[:8]}", kind="chat", model="sim-mini",
                  body={"model": "sim-mini", "messages": [{"role": "user", "content": "once"}]})
        await service.submit(job)
        runs = []
        original = gateway.pipeline.run

        async def counting_run(call: Any) -> Any:
            runs.append(call.request_id)
            return await original(call)

        gateway.pipeline.run = counting_run  # type: ignore[method-assign]

        doomed = JobWorker(gateway, name="doomed")

        async def die(point: str, _job: Job) -> None:
            if point == "completed":
                raise Crash()

        doomed.hook = die
        (delivery,) = await service.queue.receive("doomed", wait_s=2)
        with pytest.raises(Crash):
            await doomed.handle(delivery)  # result recorded, message never acked

        await asyncio.sleep(0.6)  # the visibility timeout passes
        survivor = JobWorker(gateway, name="survivor")
        (again,) = await service.queue.receive("survivor", wait_s=3)
        assert again.job_id == job.id and again.attempt == 2
        await survivor.handle(again)

        assert runs == [job.id]  # executed once
        stored = await service.store.get_job(job.id)
        assert stored is not None and stored.status == "completed" and stored.attempts == 1
        assert await service.queue.depth() == 0
        assert gateway.writer is not None
        await gateway.writer.flush()
        assert gateway.ledger is not None
        rows = await gateway.ledger.fetch()
        assert [row.request_id for row in rows] == [job.id]
        await survivor.stop()
        await doomed.stop()
    finally:
        await gateway.stop()
