"""Running a batch: validate the input file, then execute it locally or upstream.

Called by the worker for a job of kind ``batch``. Files are streamed, never
loaded whole: the input is read twice line by line — once to validate it and
find duplicate requests (a 16-byte digest per distinct request body), once to
execute — and results are appended to the output and error files as they
arrive, in OpenAI's formats.

**Local execution** runs each line as a ``Call`` (``traffic_class="batch"``)
through the gateway's pipeline — budgets, cache and routing apply as for any
call — ``batches.local_concurrency`` at a time. Lines whose request bodies are
identical are computed once and the answer is copied to each of them (counted
in the batch's ``request_counts.deduplicated``). Each line's ledger row has the
id ``<batch id>-<line number>``, so a batch re-run after a worker died is not
charged twice for the lines it had done.

**Pass-through** (``tokenomy.jobs.batch_upstream``) hands the whole file to the
provider's batch API (OpenAI Batch, or Anthropic Message Batches, translated)
and prices every line at the batch rates.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tokenomy.errors import GatewayError
from tokenomy.jobs.files import new_file_id
from tokenomy.jobs.queue import Delivery
from tokenomy.jobs.store import Job
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

log = logging.getLogger(__name__)

#: batch endpoint → Call kind
BATCH_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}
#: providers whose batch API a batch can be passed through to
PASSTHROUGH_PROVIDERS = ("openai", "anthropic")
MAX_REPORTED_ERRORS = 100
PROGRESS_INTERVAL_S = 0.5
READ_BLOCK = 512


def batch_object(record: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``batch`` object (plus ``request_counts.deduplicated`` and the cost)."""

    def ts(name: str) -> int | None:
        value = record.get(name)
        return int(value) if value is not None else None

    errors = record.get("errors")
    return {
        "id": record["id"],
        "object": "batch",
        "endpoint": record["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"],
        "status": record["status"],
        "output_file_id": record.get("output_file_id"),
        "error_file_id": record.get("error_file_id"),
        "created_at": ts("created_at"),
        "in_progress_at": ts("in_progress_at"),
        "expires_at": ts("expires_at"),
        "finalizing_at": ts("finalizing_at"),
        "completed_at": ts("completed_at"),
        "failed_at": ts("failed_at"),
        "expired_at": None,
        "cancelling_at": ts("cancelling_at"),
        "cancelled_at": ts("cancelled_at"),
        "request_counts": {
            "total": record["total"],
            "completed": record["completed"],
            "failed": record["failed"],
            "deduplicated": record.get("deduplicated", 0),
        },
        "metadata": record.get("metadata"),
        "tokenomy": {"execution": record.get("execution"), "cost_usd": record.get("cost_usd")},
    }


@dataclass
class Validation:
    """What the validating pass learned about an input file."""

    total: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    #: digest → number of lines with that request body, for bodies seen more than once
    duplicates: dict[bytes, int] = field(default_factory=dict)


def digest(body: dict[str, Any]) -> bytes:
    return hashlib.blake2b(orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """``(line number, parsed object or None, error)`` for each non-blank line, streamed."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield number, None, f"line {number} is not valid JSON: {exc}"
                continue
            if not isinstance(item, dict):
                yield number, None, f"line {number} is not a JSON object"
                continue
            yield number, item, None


def validate_file(path: Path, endpoint: str, max_requests: int) -> Validation:
    """OpenAI's checks: each line has a unique ``custom_id``, ``method`` POST, the batch's ``url``, a body with a model."""
    result = Validation()
    seen_ids: set[str] = set()
    counts: dict[bytes, int] = {}

    def error(number: int, message: str, code: str = "invalid_request", param: str | None = None) -> None:
        if len(result.errors) < MAX_REPORTED_ERRORS:
            result.errors.append({"code": code, "message": message, "param": param, "line": number})

    for number, item, problem in iter_lines(path):
        result.total += 1
        if item is None:
            error(number, problem or "invalid line", "invalid_json_line")
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error(number, "custom_id must be a non-empty string", param="custom_id")
        elif custom_id in seen_ids:
            error(number, f"custom_id {custom_id!r} is used more than once", "duplicate_custom_id", "custom_id")
        else:
            seen_ids.add(custom_id)
        if item.get("method", "POST") != "POST":
            error(number, "method must be POST", param="method")
        if item.get("url") != endpoint:
            error(number, f"url must be {endpoint!r}, the batch's endpoint", "mismatched_url", "url")
        body = item.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            error(number, "body must be an object with a model", param="body")
            continue
        if body.get("stream"):
            error(number, "stream is not supported in batches", param="body.stream")
        result.models.add(body["model"])
        key = digest(body)
        counts[key] = counts.get(key, 0) + 1
    if result.total > max_requests:
        error(0, f"the batch has {result.total} requests; the limit is {max_requests}", "too_many_requests")
    if result.total == 0:
        error(0, "the input file has no requests", "empty_file")
    result.duplicates = {key: count for key, count in counts.items() if count > 1}
    return result


def output_line(custom_id: str, request_id: str, status: int, body: dict[str, Any]) -> bytes:
    line = {
        "id": "batch_req_" + uuid.uuid4().hex[:24],
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


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
        await LocalBatch(worker, batch, input_path, validation).run()
    else:
        from tokenomy.jobs.batch_upstream import run_upstream_batch

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


class LocalBatch:
    """One batch executed through the gateway's own pipeline."""

    def __init__(self, worker: JobWorker, batch: dict[str, Any], input_path: Path, validation: Validation) -> None:
        self.worker = worker
        self.gateway = worker.gateway
        self.store = worker.service.store
        self.files = worker.service.files
        self.batch = batch
        self.input_path = input_path
        self.validation = validation
        self.kind = BATCH_ENDPOINTS[batch["endpoint"]]
        self.output_id = new_file_id()
        self.error_id = new_file_id()
        self.output_path = self.files.path_for(self.output_id)
        self.error_path = self.files.path_for(self.error_id)
        self.completed = 0
        self.failed = 0
        self.deduplicated = 0
        self.cost = 0.0
        self.cancelled = False
        #: digest → (future answer, copies still to write) for duplicated bodies
        self._shared: dict[bytes, asyncio.Future[tuple[int, dict[str, Any], str]]] = {}
        self._remaining = dict(validation.duplicates)

    async def run(self) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        concurrency = self.gateway.settings.batches.local_concurrency
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()
        last_progress = time.monotonic()
        with open(self.output_path, "wb") as out, open(self.error_path, "wb") as err:
            self._out, self._err = out, err
            lines = iter_lines(self.input_path)
            while True:
                block = await asyncio.to_thread(_take, lines, READ_BLOCK)
                if not block:
                    break
                for number, item, _ in block:
                    assert item is not None  # validated
                    await slots.acquire()
                    task = asyncio.create_task(self._line(number, item))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    task.add_done_callback(lambda _t: slots.release())
                    if time.monotonic() - last_progress > PROGRESS_INTERVAL_S:
                        last_progress = time.monotonic()
                        if await self._progress():
                            self.cancelled = True
                            break
                if self.cancelled:
                    break
            if tasks:
                await asyncio.gather(*tasks)
        # Every line's ledger row is durable before the batch says "completed".
        if self.gateway.writer is not None:
            await self.gateway.writer.flush()
        await self._finish()

    async def _progress(self) -> bool:
        """Write the counts; ``True`` if the batch is being cancelled."""
        await self.store.update_batch(
            self.batch["id"], completed=self.completed, failed=self.failed, deduplicated=self.deduplicated
        )
        record = await self.store.get_batch(self.batch["id"])
        return record is not None and record["status"] == "cancelling"

    async def _line(self, number: int, item: dict[str, Any]) -> None:
        custom_id = item["custom_id"]
        body = item["body"]
        key = digest(body) if self._remaining else None
        if key is not None and key in self._remaining:
            future = self._shared.get(key)
            if future is not None:  # computed (or being computed) for an identical line
                status, answer, request_id = await asyncio.shield(future)
                self.deduplicated += 1
                self._release(key)
                self._write(custom_id, request_id, status, answer)
                return
            future = self._shared[key] = asyncio.get_running_loop().create_future()
            status, answer, request_id = await self._execute(number, body)
            future.set_result((status, answer, request_id))
            self._release(key)
        else:
            status, answer, request_id = await self._execute(number, body)
        self._write(custom_id, request_id, status, answer)

    def _release(self, key: bytes) -> None:
        left = self._remaining[key] - 1
        if left <= 0:
            del self._remaining[key]
            self._shared.pop(key, None)
        else:
            self._remaining[key] = left

    async def _execute(self, number: int, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        call = Call(
            kind=self.kind,
            body=body,
            model_asked=body["model"],
            request_id=f"{self.batch['id']}-{number}",
            headers=dict(self.batch.get("headers") or {}),
            traffic_class="batch",
        )
        call.annotations["batch_id"] = self.batch["id"]
        try:
            reply = await self.gateway.pipeline.run(call)
        except GatewayError as exc:
            return exc.status, exc.envelope(), call.request_id
        except Exception as exc:  # a bug: this line fails, the batch goes on
            log.exception("batch %s line %d failed", self.batch["id"], number)
            return 500, {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error",
                                   "param": None, "code": "internal_error"}}, call.request_id
        assert isinstance(reply, Completion)
        answer = dict(reply.body)
        usage = answer.get("usage")
        if isinstance(usage, dict):
            answer["usage"] = {**usage, "cost_usd": call.trace.total_usd, "baseline_cost_usd": call.trace.baseline_usd}
        if call.trace.total_usd is not None:
            self.cost += call.trace.total_usd
        return 200, answer, call.request_id

    def _write(self, custom_id: str, request_id: str, status: int, answer: dict[str, Any]) -> None:
        line = output_line(custom_id, request_id, status, answer)
        if status == 200:
            self.completed += 1
            self._out.write(line)
        else:
            self.failed += 1
            self._err.write(line)

    async def _finish(self) -> None:
        store = self.store
        await store.update_batch(
            self.batch["id"],
            finalizing_at=time.time(),
            completed=self.completed,
            failed=self.failed,
            deduplicated=self.deduplicated,
        )
        await finalize(self.worker, self.batch["id"], self.output_id, self.output_path, self.error_id,
                       self.error_path, self.cost, cancelled=self.cancelled)


async def finalize(
    worker: JobWorker,
    batch_id: str,
    output_id: str,
    output_path: Path,
    error_id: str,
    error_path: Path,
    cost: float | None,
    *,
    cancelled: bool = False,
) -> None:
    """Register the output and error files and close the batch (``completed`` or ``cancelled``)."""
    files = worker.service.files
    values: dict[str, Any] = {"cost_usd": cost}
    if output_path.exists() and output_path.stat().st_size:
        await files.register(output_id, output_path, f"{batch_id}_output.jsonl", "batch_output")
        values["output_file_id"] = output_id
    else:
        output_path.unlink(missing_ok=True)
    if error_path.exists() and error_path.stat().st_size:
        await files.register(error_id, error_path, f"{batch_id}_error.jsonl", "batch_output")
        values["error_file_id"] = error_id
    else:
        error_path.unlink(missing_ok=True)
    now = time.time()
    if cancelled:
        values.update(status="cancelled", cancelled_at=now)
    else:
        values.update(status="completed", completed_at=now)
    await worker.service.store.update_batch(batch_id, **values)


def _take(lines: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in lines:
        out.append(item)
        if len(out) >= n:
            break
    return out
