"""What the HTTP layer and the workers share: the job store, the queue and the files.

Built from settings by the composition root (``app.build_gateway``) and by
``tokenomy worker``; the queue implementation follows ``jobs.queue_url``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from tokenomy.config import JobsSettings, Settings
from tokenomy.jobs.files import FileStore
from tokenomy.jobs.queue import JobQueue
from tokenomy.jobs.store import Job, JobStore


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:24]


def make_queue(settings: JobsSettings, store: JobStore) -> JobQueue:
    """The SQL queue in the jobs database, or Redis Streams when ``queue_url`` is a Redis URL."""
    if settings.queue_url:
        from tokenomy.config import ConfigError
        from tokenomy.jobs.redis_queue import RedisStreamQueue

        if not settings.queue_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"jobs.queue_url: expected redis://host:port/db, got {settings.queue_url!r}")
        return RedisStreamQueue(
            settings.queue_url, prefix=settings.redis_prefix, visibility_timeout_s=settings.visibility_timeout_s
        )
    from tokenomy.jobs.sql_queue import SQLQueue

    return SQLQueue(
        store.engine, visibility_timeout_s=settings.visibility_timeout_s, poll_interval_s=settings.poll_interval_s
    )


class JobService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.jobs
        # Same database as the ledger unless jobs.url says otherwise (then also the ledger's schema).
        schema = settings.ledger.schema_ if settings.jobs.url is None else None
        self.store = JobStore(settings.jobs.url or settings.ledger.url, schema=schema)
        self.files = FileStore(settings.jobs.files_dir, self.store)
        #: the ledger is in the jobs database: a job's ledger row is written with its result
        self.ledger_in_store = settings.ledger.enabled and settings.jobs.url is None
        self._queue: JobQueue | None = None

    @property
    def queue(self) -> JobQueue:
        if self._queue is None:
            raise RuntimeError("JobService.start() has not been called")
        return self._queue

    async def start(self) -> None:
        await self.store.start()
        if self._queue is None:
            queue = make_queue(self.settings, self.store)
            await queue.start()
            self._queue = queue

    async def aclose(self) -> None:
        if self._queue is not None:
            queue, self._queue = self._queue, None
            await queue.aclose()
        await self.store.aclose()

    async def submit(self, job: Job) -> Job:
        """Record a job, then queue it (a job is in the store before any worker can see it)."""
        await self.store.create_job(job)
        await self.queue.enqueue(job.id, "batch" if job.traffic_class == "batch" else "async")
        return job


def job_object(job: Job) -> dict[str, Any]:
    """What ``GET /v1/async/jobs/{id}`` and webhooks show of a job."""
    return {
        "id": job.id,
        "object": "tokenomy.job",
        "status": job.status,
        "kind": job.kind,
        "model": job.model,
        "traffic_class": job.traffic_class,
        "created_at": int(job.created_at),
        "started_at": int(job.started_at) if job.started_at else None,
        "completed_at": int(job.completed_at) if job.completed_at else None,
        "attempts": job.attempts,
        "cost_usd": job.cost_usd,
        "result": job.result,
        "error": job.error,
        "webhook": None
        if not job.webhook_url
        else {
            "url": job.webhook_url,
            "status": job.webhook_status,
            "attempts": job.webhook_attempts,
            "last_error": job.webhook_error,
        },
        "batch_id": job.batch_id,
        "age_s": round(time.time() - job.created_at, 3),
    }
