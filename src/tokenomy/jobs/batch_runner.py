"""Running a batch: validate the input file, then execute it locally or upstream.

Called by the worker for a job of kind ``batch``. The input file is validated in
one streamed pass (``batch_files``); then the batch runs either through the
gateway's own pipeline (``batch_local``) or, when all its lines use one model
whose provider has a batch API, through that API at its batch prices
(``batch_passthrough`` over ``batch_upstream``: OpenAI Batch, Anthropic Message
Batches). ``batches.mode``
decides (``auto``, ``local``, ``passthrough``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy.errors import GatewayError
from tokenomy.jobs.batch_files import BATCH_ENDPOINTS, validate_file
from tokenomy.jobs.queue import Delivery
from tokenomy.jobs.store import Job

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

#: providers whose batch API a batch can be passed through to
PASSTHROUGH_PROVIDERS = ("openai", "anthropic")

__all__ = ["choose_execution", "run_batch_job"]


async def run_batch_job(worker: JobWorker, job: Job, delivery: Delivery) -> None:
    """Run (or resume) the batch behind ``job``; the job is finished when this returns."""
    service = worker.service
    store = service.store
    batch_id = job.batch_id or (job.body or {}).get("batch_id")
    batch = await store.get_batch(batch_id) if batch_id else None
    if batch is None:
        await store.finish_job(job.id, "failed", error={"code": "not_found", "message": f"batch {batch_id} is gone"})
        return
    if batch["status"] in ("completed", "failed", "cancelled", "expired"):
        await store.finish_job(job.id, "completed", result={"batch_id": batch_id})
        return
    if batch["status"] == "cancelling":
        await _cancelled(worker, batch)
        await store.finish_job(job.id, "completed", result={"batch_id": batch_id})
        return
    input_record = await store.get_file(batch["input_file_id"])
    if input_record is None:
        await _fail(worker, batch, [{"code": "missing_file", "message": "the input file was deleted", "line": None}])
        await store.finish_job(job.id, "failed", error={"code": "missing_file", "message": "input file deleted"})
        return
    input_path = Path(input_record["path"])
    gateway = worker.gateway
    validation = await asyncio.to_thread(
        validate_file, input_path, batch["endpoint"], gateway.settings.batches.max_requests
    )
    if validation.errors:
        await _fail(worker, batch, validation.errors)
        await store.finish_job(job.id, "failed", error={"code": "invalid_batch", "message": "the input file is invalid"})
        return
    execution = batch.get("execution") or choose_execution(worker, batch["endpoint"], validation.models)
    if execution.startswith("error:"):
        message = execution.removeprefix("error:")
        await _fail(worker, batch, [{"code": "passthrough_unavailable", "message": message, "line": None}])
        await store.finish_job(job.id, "failed", error={"code": "passthrough_unavailable", "message": message})
        return
    now = time.time()
    await store.update_batch(
        batch["id"],
        only_if_status=("validating", "in_progress"),
        status="in_progress",
        in_progress_at=batch.get("in_progress_at") or now,
        total=validation.total,
        execution=execution,
    )
    if execution == "local":
        from tokenomy.jobs.batch_local import LocalBatch

        await LocalBatch(worker, batch, input_path, validation).run()
    else:
        from tokenomy.jobs.batch_passthrough import run_upstream_batch

        await run_upstream_batch(worker, batch, input_path, validation, execution)
    await store.finish_job(job.id, "completed", result={"batch_id": batch["id"]})


def choose_execution(worker: JobWorker, endpoint: str, models: set[str]) -> str:
    """``local``, ``openai`` or ``anthropic`` (the provider whose batch API runs it), or ``error:<why>``."""
    mode = worker.gateway.settings.batches.mode
    if mode == "local":
        return "local"
    provider = None
    reason = "the batch uses several models" if len(models) != 1 else ""
    if not reason:
        kind = BATCH_ENDPOINTS[endpoint]
        try:
            entry = worker.gateway.registry.resolve(next(iter(models)), kind)
        except GatewayError as err:
            reason = err.message
        else:
            provider = entry.primary.deployment.provider
            if provider not in PASSTHROUGH_PROVIDERS:
                reason = f"provider {provider!r} has no batch API"
            elif provider == "anthropic" and kind != "chat":
                reason = "Anthropic batches only serve chat requests"
            elif entry.primary.deployment.options.get("batch_api") is False:
                reason = f"batch_api is off for model {entry.name!r}"
    if not reason and provider is not None:
        return provider
    return "error:" + reason if mode == "passthrough" else "local"


async def _fail(worker: JobWorker, batch: dict[str, Any], errors: list[dict[str, Any]]) -> None:
    await worker.service.store.update_batch(batch["id"], status="failed", failed_at=time.time(), errors=errors)


async def _cancelled(worker: JobWorker, batch: dict[str, Any]) -> None:
    await worker.service.store.update_batch(batch["id"], status="cancelled", cancelled_at=time.time())
