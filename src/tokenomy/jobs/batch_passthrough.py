"""A batch passed through to a provider's batch API, at the provider's batch prices.

1. **Reserve.** The lines' worst case at batch prices is reserved in every budget
   of the submitting key, team and org (``tokenomy.budgets.batch``); only the
   leading lines that fit are sent, the others are answered ``budget_exceeded``
   (or ``model_not_allowed``) in the error file. Each line sent carries the
   output cap its reservation assumed.
2. **Submit and poll** through the provider's ``BatchAPI`` (``batch_upstream``).
3. **Collect.** Every result line is priced with ``cost_usd(…, batch=True)`` and
   recorded in the ledger under the submitting key's identity
   (``traffic_class="batch"``, step ``batch_generation``, request id
   ``<batch id>:<custom id>``: a batch resumed after a worker died is not charged
   twice); then the reservation is settled to what the lines cost.

The reservation and the upstream batch id are saved on the batch as soon as they
exist, so a worker that takes over a batch resumes polling instead of reserving
or submitting it again. (A worker lost between reserving and saving leaves a
reservation that expires on its own: budgets are over-held for a while, never
overspent.)

These lines skip the pipeline's execute stage by nature (the provider runs them);
they are identified, budgeted, priced and recorded like any call.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from tokenomy.budgets.batch import BatchReservation, reserve_batch, settle_batch
from tokenomy.budgets.counters import to_nano
from tokenomy.budgets.estimate import estimate, limited, output_cap
from tokenomy.budgets.keys import bound_identity
from tokenomy.jobs.batch_files import BATCH_ENDPOINTS, Validation, finalize, iter_lines, output_line
from tokenomy.jobs.batch_upstream import BATCH_APIS, NOTHING_SENT, BatchAPI, Prepare, UpstreamState
from tokenomy.jobs.files import new_file_id
from tokenomy.models import Target
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.execute import charge
from tokenomy.pipeline.identify import identity_from
from tokenomy.pipeline.record import RecordStage
from tokenomy.providers.usage import Usage

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

#: a batch reservation outlives its completion window by this much (the last poll, collecting)
RESERVATION_MARGIN_S = 3600.0


async def run_upstream_batch(
    worker: JobWorker, batch: dict[str, Any], input_path: Path, validation: Validation, execution: str
) -> None:
    gateway = worker.gateway
    store = worker.service.store
    kind = BATCH_ENDPOINTS[batch["endpoint"]]
    entry = gateway.registry.resolve(next(iter(validation.models)), kind)
    target = entry.primary
    provider = gateway.providers[target.deployment.provider]
    session: aiohttp.ClientSession = provider.http.session  # type: ignore[attr-defined]
    scratch = Path(worker.service.files.directory)
    scratch.mkdir(parents=True, exist_ok=True)
    api = BATCH_APIS[execution](target.deployment, session, scratch)

    reservation = await _reservation(worker, batch, input_path, validation, target)
    upstream_id = batch.get("upstream_id")
    if not upstream_id:
        if reservation.admitted:
            upstream_id = await api.submit(input_path, batch, reservation.admitted, _prepare(worker, target))
        else:
            upstream_id = NOTHING_SENT
        await store.update_batch(batch["id"], upstream_id=upstream_id)
    state = await _wait(worker, batch, api, upstream_id)
    record = await store.get_batch(batch["id"])
    cancelled = state.status == "cancelled" or (record is not None and record["status"] == "cancelling")
    if state.status == "failed":
        await _settle(worker, reservation, 0.0)  # nothing ran: the reservation is released
        await store.update_batch(batch["id"], status="failed", failed_at=time.time(),
                                 errors=state.errors or [{"code": "upstream_failed", "message": "failed upstream"}])
        return
    await store.update_batch(batch["id"], finalizing_at=time.time())
    await _collect(worker, batch, api, upstream_id, input_path, target, reservation, cancelled)


async def _wait(worker: JobWorker, batch: dict[str, Any], api: BatchAPI, upstream_id: str) -> UpstreamState:
    """Poll the upstream batch until it ends, passing on a cancellation once."""
    store = worker.service.store
    if upstream_id == NOTHING_SENT:
        return UpstreamState("ended")
    cancel_sent = False
    interval = worker.gateway.settings.batches.upstream_poll_interval_s
    while True:
        state = await api.poll(upstream_id)
        await store.update_batch(batch["id"], completed=state.completed, failed=state.failed)
        if state.status != "in_progress":
            return state
        record = await store.get_batch(batch["id"])
        if record is not None and record["status"] == "cancelling" and not cancel_sent:
            await api.cancel(upstream_id)
            cancel_sent = True
        await asyncio.sleep(interval)


def line_call(batch: dict[str, Any], kind: str, target: Target, body: dict[str, Any], request_id: str = "") -> Call:
    """A line as a Call: the submitting key's identity, priced at the deployment's batch rates."""
    headers = dict(batch.get("headers") or {})
    call = Call(kind=kind, body=body, model_asked=target.deployment.name, headers=headers,
                traffic_class="batch", batch_priced=True)  # fmt: skip
    if request_id:
        call.request_id = request_id
    call.identity = bound_identity(headers)  # the submitting key, if any
    call.identity = identity_from(call)  # plus what the headers say where the key binds nothing
    call.targets, call.baseline_price = (target,), target.price
    call.annotations["batch_id"] = batch["id"]
    return call


async def _reservation(
    worker: JobWorker, batch: dict[str, Any], input_path: Path, validation: Validation, target: Target
) -> BatchReservation:
    """The batch's reservation: the one saved on it (a resumed batch), else a new one, saved."""
    stored = batch.get("reservation")
    if stored:
        return BatchReservation.from_json(stored)
    gateway = worker.gateway
    if not gateway.settings.budgets.enabled or gateway.enforcement is None:
        return BatchReservation(time.time(), validation.total)
    kind = BATCH_ENDPOINTS[batch["endpoint"]]
    settings = gateway.settings.budgets
    enforcer = gateway.enforcement.enforcer

    def worst_cases() -> tuple[list[int], bool]:
        costs: list[int] = []
        unpriced = False
        for _, item, _ in iter_lines(input_path):
            assert item is not None  # validated
            est = estimate(line_call(batch, kind, target, item["body"]), settings.output_cap_tokens,
                           enforce_cap=settings.enforce_output_cap)  # fmt: skip
            unpriced = unpriced or est.usd is None
            costs.append(to_nano(est.usd) if est.usd is not None else 0)
        return costs, unpriced

    costs, unpriced = await asyncio.to_thread(worst_cases)
    expires_at = batch.get("expires_at") or time.time() + 24 * 3600
    ttl_s = max(0.0, expires_at - time.time()) + RESERVATION_MARGIN_S
    reservation = await reserve_batch(enforcer, line_call(batch, kind, target, {}), costs, ttl_s, unpriced=unpriced)
    await worker.service.store.update_batch(batch["id"], reservation=reservation.as_json())
    return reservation


def _prepare(worker: JobWorker, target: Target) -> Prepare:
    """The request as sent upstream: with the output cap its reservation assumed (``enforce_output_cap``)."""
    settings = worker.gateway.settings.budgets
    if not (settings.enabled and settings.enforce_output_cap):
        return lambda body: body
    model_max = target.price.max_output_tokens if target.price is not None else None
    upstream_model = target.deployment.upstream_model

    def prepare(body: dict[str, Any]) -> dict[str, Any]:
        return limited(body, output_cap(body, model_max, settings.output_cap_tokens), upstream_model)

    return prepare


async def _settle(worker: JobWorker, reservation: BatchReservation, usd: float) -> None:
    enforcement = worker.gateway.enforcement
    if enforcement is not None:
        await settle_batch(enforcement.enforcer, reservation, usd)


async def _collect(
    worker: JobWorker, batch: dict[str, Any], api: BatchAPI, upstream_id: str, input_path: Path, target: Target,
    reservation: BatchReservation, cancelled: bool,
) -> None:
    """Stream the upstream results into our output/error files, pricing and recording each line."""
    gateway = worker.gateway
    files = worker.service.files
    recorder = RecordStage(gateway.recorders)
    kind = BATCH_ENDPOINTS[batch["endpoint"]]
    output_id, error_id = new_file_id(), new_file_id()
    output_path, error_path = files.path_for(output_id), files.path_for(error_id)
    completed = failed = 0
    total_cost: float | None = 0.0
    model = target.deployment.name
    with open(output_path, "wb") as out, open(error_path, "wb") as err:
        async for line in api.results(upstream_id, input_path):
            request_id = f"{batch['id']}:{line.custom_id}"
            if line.status != 200:
                failed += 1
                err.write(output_line(line.custom_id, request_id, line.status, line.body))
                continue
            call = line_call(batch, kind, target, {}, request_id)
            call.model_served, call.provider = target.deployment.name, target.deployment.provider
            charge(call, target, "generation", line.usage or Usage())
            recorder.record(call)
            body = dict(line.body)
            body["model"] = model
            usage = body.get("usage")
            if isinstance(usage, dict):
                body["usage"] = {**usage, "cost_usd": call.trace.total_usd, "baseline_cost_usd": call.trace.baseline_usd}
            cost = call.trace.total_usd
            total_cost = None if cost is None or total_cost is None else total_cost + cost
            completed += 1
            out.write(output_line(line.custom_id, request_id, 200, body))
        failed += await asyncio.to_thread(_write_refused, err, batch["id"], input_path, reservation)
    if gateway.writer is not None:
        await gateway.writer.flush()
    await _settle(worker, reservation, total_cost or 0.0)
    await worker.service.store.update_batch(batch["id"], completed=completed, failed=failed)
    await finalize(worker, batch["id"], output_id, output_path, error_id, error_path, total_cost,
                   cancelled=cancelled, owner=batch.get("owner"))  # fmt: skip


def _write_refused(err: Any, batch_id: str, input_path: Path, reservation: BatchReservation) -> int:
    """Answer the lines the budgets did not admit (never sent upstream) with the refusal; how many."""
    if reservation.refusal is None:
        return 0
    status, envelope = reservation.refusal
    refused = 0
    for index, (_, item, _) in enumerate(iter_lines(input_path)):
        if index < reservation.admitted or item is None:
            continue
        custom_id = str(item["custom_id"])
        err.write(output_line(custom_id, f"{batch_id}:{custom_id}", status, envelope))
        refused += 1
    return refused


__all__ = ["line_call", "run_upstream_batch"]
