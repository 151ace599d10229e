"""A batch run by the gateway itself, through its own pipeline.

Each line is a ``Call`` (``traffic_class="batch"``) that goes through every
stage — budgets, cache and routing apply as for any call — with the identity
the submitting key binds (its key, team and org budgets, allowed models and
rate limits), ``batches.local_concurrency`` at a time, read from the input file in blocks and
appended to the output and error files as answers arrive. Lines with identical
request bodies are computed once and the answer copied to each (counted in
``request_counts.deduplicated``). Each line's ledger row has the id
``<batch id>-<line number>``, so a batch re-run after its worker died is not
charged twice for the lines it had done (a failed try is recorded as
``<batch id>-<line number>.attempt<n>``). Cancellation is checked with the
progress counts, every ``PROGRESS_INTERVAL_S``.

A line refused by one of the gateway's rate limits (requests or tokens per
minute, concurrency) waits for the limit's ``retry-after`` and tries again — a
batch is paced, not failed, by its key's rate limits — until the batch expires
or is cancelled. A line refused by a budget fails at once (``budget_exceeded``
in the error file): the budget does not come back before its period ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenomy.budgets.keys import bound_identity
from tokenomy.errors import GatewayError, RateLimitExceeded
from tokenomy.jobs.batch_files import BATCH_ENDPOINTS, Validation, digest, finalize, iter_lines, output_line
from tokenomy.jobs.files import new_file_id
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5
READ_BLOCK = 512
#: the longest a rate-limited line sleeps before trying again (the limits are per minute)
MAX_RATE_LIMIT_WAIT_S = 60.0


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

    def _call(self, number: int, body: dict[str, Any], attempt: int) -> Call:
        headers = dict(self.batch.get("headers") or {})
        call = Call(
            kind=self.kind,
            body=body,
            model_asked=body["model"],
            request_id=f"{self.batch['id']}-{number}",
            headers=headers,
            traffic_class="batch",
        )
        call.identity = bound_identity(headers)  # the submitting key, if any
        call.annotations["batch_id"] = self.batch["id"]
        call.annotations["failed_attempt_id"] = f"{call.request_id}.attempt{attempt}"
        return call

    def _rate_limit_wait(self, err: RateLimitExceeded) -> float | None:
        """Seconds to wait before trying a rate-limited line again; ``None``: give up (expired, cancelled)."""
        try:
            wait = float(err.headers.get("retry-after", "1"))
        except ValueError:
            wait = 1.0
        wait = min(max(wait, 0.05), MAX_RATE_LIMIT_WAIT_S)
        expires_at = self.batch.get("expires_at")
        if self.cancelled or (expires_at is not None and time.time() + wait > expires_at):
            return None
        return wait

    async def _execute(self, number: int, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        attempt = 1
        while True:
            call = self._call(number, body, attempt)
            try:
                reply = await self.gateway.pipeline.run(call)
            except RateLimitExceeded as exc:
                wait = self._rate_limit_wait(exc)
                if wait is None:
                    return exc.status, exc.envelope(), call.request_id
                await asyncio.sleep(wait)
                attempt += 1
                continue
            except GatewayError as exc:
                return exc.status, exc.envelope(), call.request_id
            except Exception as exc:  # a bug: this line fails, the batch goes on
                log.exception("batch %s line %d failed", self.batch["id"], number)
                return 500, {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error",
                                       "param": None, "code": "internal_error"}}, call.request_id
            break
        return self._answered(call, reply)

    def _answered(self, call: Call, reply: Any) -> tuple[int, dict[str, Any], str]:
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
                       self.error_path, self.cost, cancelled=self.cancelled, owner=self.batch.get("owner"))


def _take(lines: Iterator[Any], n: int) -> list[Any]:
    out = []
    for item in lines:
        out.append(item)
        if len(out) >= n:
            break
    return out
