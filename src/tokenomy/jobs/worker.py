"""The job worker: takes jobs off the queue and runs them through the pipeline.

The same program as the gateway (``tokenomy worker``, or ``jobs.gateway_workers``
inside ``tokenomy serve``), with the same pipeline: an async job is a ``Call``
with ``traffic_class`` ``async`` (or ``batch``) and goes through every stage a
real-time call does — no side door for budgets, cache or routing.

Exactly-once effects on an at-least-once queue, in this order per job:

1. ``start_attempt`` (skipped, and the message acked, if the job is already over:
   a redelivery after a worker died between completing and acking);
2. run the call; its ledger row carries the **job id** as request id;
3. ``finish_job`` — a conditional update, so only one attempt ever records a
   result — with the ledger row in the same transaction (or, when the ledger is
   another database, after flushing it there);
4. the webhook (before the ack, so a worker lost here leaves it to the next one);
5. ``ack``.

A worker killed anywhere in 1–2 lets the message reappear after the visibility
timeout; the retry's ledger row has the same request id, which the ledger
ignores, so the job is **charged once**. Failed attempts are recorded under
``<job id>.attempt<n>`` so they never hide the successful one. Retryable
failures (upstream errors, timeouts, 429s) go back to the queue with
exponential backoff; after ``max_attempts`` the job fails and its message goes
to the dead letters. Requests the upstream refuses as invalid fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tokenomy.budgets.keys import bound_identity
from tokenomy.errors import GatewayError, RateLimited, ServiceUnavailable, UpstreamError
from tokenomy.jobs.pacing import Pacer
from tokenomy.jobs.queue import Delivery, QueueError
from tokenomy.jobs.service import job_object
from tokenomy.jobs.store import Job
from tokenomy.jobs.webhooks import WebhookSender
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion
from tokenomy.store.ledger import LedgerRow
from tokenomy.tokens.counting import count_messages

if TYPE_CHECKING:
    from tokenomy.app import Gateway

log = logging.getLogger(__name__)

#: Gateway errors worth another attempt: the upstream or a store may be fine again later.
RETRYABLE = (UpstreamError, RateLimited, ServiceUnavailable)

Hook = Callable[[str, Job], Awaitable[None]]


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class JobWorker:
    """Runs jobs from ``gateway.jobs.queue`` until ``stop()``.

        worker = JobWorker(gateway)
        task = asyncio.create_task(worker.run())
        ...
        await worker.stop()   # finishes (or gives back) the jobs in hand
    """

    def __init__(self, gateway: Gateway, name: str | None = None) -> None:
        assert gateway.jobs is not None, "the gateway was built without jobs"
        self.gateway = gateway
        self.service = gateway.jobs
        self.settings = gateway.settings.jobs
        self.name = name or default_worker_name()
        self.pacer = Pacer(self.settings.concurrency, self.settings.tokens_per_minute)
        self.webhooks = WebhookSender(
            self.settings.webhook_secret,
            max_attempts=self.settings.webhook_max_attempts,
            backoff_s=self.settings.webhook_backoff_s,
            timeout_s=self.settings.webhook_timeout_s,
        )
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        #: test hook called at named points ("completed": result stored, not yet acked)
        self.hook: Hook | None = None
        self.processed = 0

    async def run(self) -> None:
        queue = self.service.queue
        capacity = self.settings.concurrency
        while not self._stopping.is_set():
            free = capacity - len(self._tasks)
            if free <= 0:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                deliveries = await queue.receive(self.name, max_messages=free, wait_s=0.5)
            except QueueError as exc:
                log.warning("worker %s: queue unavailable (%s); retrying in 1 s", self.name, exc)
                await asyncio.sleep(1.0)
                continue
            for delivery in deliveries:
                task = asyncio.create_task(self._handle_safely(delivery), name=f"job-{delivery.job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(self._tasks)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking jobs; wait for the ones in hand (unfinished ones reappear after the timeout)."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
        await self.webhooks.aclose()

    async def _handle_safely(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a store outage: the message reappears after the visibility timeout
            log.exception("worker %s: job %s failed unexpectedly; it will be retried", self.name, delivery.job_id)

    async def handle(self, delivery: Delivery) -> None:
        store = self.service.store
        queue = self.service.queue
        # One round trip in the common case: mark it running and read it back.
        job = await store.start_attempt(delivery.job_id)
        if job is None:
            done = await store.get_job(delivery.job_id)
            if done is None:
                log.error("worker %s: job %s is not in the store; dropping its message", self.name, delivery.job_id)
            else:  # redelivered after its result was recorded: finish what is left
                await self._webhook_if_pending(done)
            await queue.ack(delivery)
            return
        if job.attempts > self.settings.max_attempts:
            reason = f"gave up after {job.attempts - 1} attempts (a worker may have died running it)"
            await self._give_up(job, delivery, {"type": "server_error", "code": "max_attempts", "message": reason})
            return
        heartbeat = asyncio.create_task(self._heartbeat(delivery))
        try:
            if job.kind == "batch":
                from tokenomy.jobs.batch_runner import run_batch_job

                await run_batch_job(self, job, delivery)
                finished = await store.get_job(job.id)
                job = finished or job
            else:
                await self._run_call(job)
        except GatewayError as err:
            await self._failed_attempt(job, delivery, err)
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if self.hook is not None:
            await self.hook("completed", job)
        if job.webhook_url:
            await self._webhook_if_pending(await store.get_job(job.id) or job)
        await queue.ack(delivery)
        self.processed += 1

    async def _run_call(self, job: Job) -> None:
        body = job.body or {}
        call = Call(
            kind=job.kind,
            body=body,
            model_asked=job.model or str(body.get("model", "")),
            api=job.api,
            request_id=job.id,
            headers=dict(job.headers),
            traffic_class=job.traffic_class,
        )
        call.identity = bound_identity(call.headers)  # the submitter's virtual key, if any
        call.annotations["failed_attempt_id"] = f"{job.id}.attempt{job.attempts}"
        call.annotations["job_id"] = job.id
        call.annotations["ledger_row_by_job"] = self.service.ledger_in_store
        estimate = _estimate_tokens(body) if self.pacer.tokens_per_minute else 0
        await self.pacer.acquire(estimate)
        actual: int | None = None
        try:
            reply = await self.gateway.pipeline.run(call)
            assert isinstance(reply, Completion), "async jobs never stream"
            actual = call.trace.usage().total_tokens
        finally:
            self.pacer.release(estimate, actual)
        result = dict(reply.body)
        usage = result.get("usage")
        if isinstance(usage, dict):
            result["usage"] = {
                **usage,
                "cost_usd": call.trace.total_usd,
                "baseline_cost_usd": call.trace.baseline_usd,
                "tokenomy_request_id": call.request_id,
            }
        # The ledger row must be durable when the job says "completed" (see the module doc):
        # in the same transaction when the ledger shares the jobs database (the writer's
        # own copy of the row is then a duplicate the ledger ignores), else flushed first.
        row = None
        if self.service.ledger_in_store:
            row = LedgerRow.from_call(call)
        elif self.gateway.writer is not None:
            await self.gateway.writer.flush()
        finished = await self.service.store.finish_job(
            job.id,
            "completed",
            result=result,
            cost_usd=call.trace.total_usd,
            webhook_status="pending" if job.webhook_url else None,
            ledger_row=row,
        )
        if not finished and row is not None and self.gateway.writer is not None:
            # Cancelled (or finished by another attempt) meanwhile: the upstream was
            # still paid for. The ledger keeps one row per request id either way.
            self.gateway.writer.record(row)

    async def _failed_attempt(self, job: Job, delivery: Delivery, err: GatewayError) -> None:
        error = {"type": err.type, "code": err.code, "message": err.message, "status": err.status}
        if isinstance(err, RETRYABLE) and job.attempts < self.settings.max_attempts:
            delay = min(self.settings.retry_backoff_s * 2 ** (job.attempts - 1), self.settings.retry_max_backoff_s)
            retry_after = err.headers.get("Retry-After")
            if retry_after:
                with contextlib.suppress(ValueError):
                    delay = max(delay, float(retry_after))
            log.info("job %s attempt %d failed (%s); retry in %.1f s", job.id, job.attempts, err.message, delay)
            await self.service.store.requeue_job(job.id, error)
            await self.service.queue.retry(delivery, delay)
            return
        if isinstance(err, RETRYABLE):
            await self._give_up(job, delivery, error)
            return
        if await self.service.store.finish_job(
            job.id, "failed", error=error, webhook_status="pending" if job.webhook_url else None
        ):
            await self._webhook_if_pending(await self.service.store.get_job(job.id) or job)
        await self.service.queue.ack(delivery)

    async def _give_up(self, job: Job, delivery: Delivery, error: dict[str, Any]) -> None:
        log.error("job %s failed for good: %s", job.id, error.get("message"))
        await self.service.store.finish_job(
            job.id, "failed", error=error, webhook_status="pending" if job.webhook_url else None
        )
        await self._webhook_if_pending(await self.service.store.get_job(job.id) or job)
        await self.service.queue.dead_letter(delivery, str(error.get("message")))

    async def _webhook_if_pending(self, job: Job) -> None:
        if not job.webhook_url or job.webhook_status not in ("pending", None) or not job.done:
            return
        payload = {"type": f"job.{job.status}", "data": job_object(job)}
        outcome = await self.webhooks.deliver(job.webhook_url, job.id, payload)
        status = "delivered" if outcome.delivered else "failed"
        await self.service.store.record_webhook(job.id, status, job.webhook_attempts + outcome.attempts, outcome.error)

    async def _heartbeat(self, delivery: Delivery) -> None:
        interval = self.settings.visibility_timeout_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.service.queue.extend(delivery):
                    log.warning("worker %s lost the lease of job %s", self.name, delivery.job_id)
            except QueueError as exc:
                log.warning("worker %s: heartbeat for %s failed: %s", self.name, delivery.job_id, exc)


def _estimate_tokens(body: dict[str, Any]) -> int:
    prompt = count_messages(body.get("messages") or [], str(body.get("model", "")))
    output = body.get("max_completion_tokens") or body.get("max_tokens") or 256
    return int(prompt) + int(output)
