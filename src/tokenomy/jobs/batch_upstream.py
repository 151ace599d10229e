"""Batches passed through to a provider's batch API, at the provider's batch prices.

- **OpenAI Batch**: the input file is rewritten line by line (public model name →
  upstream model id) into a temporary file, uploaded (``POST /files``,
  ``purpose=batch``), and a batch created (``POST /batches``); the gateway polls
  ``GET /batches/{id}`` and, when it ends, streams the output and error files
  back, line by line.
- **Anthropic Message Batches**: each line is translated to Messages API params
  (the same translation as real-time calls) under the custom id ``r<line>``
  (Anthropic allows only ``[a-zA-Z0-9_-]{1,64}``; the client's ids are restored
  from the input file), sent as one ``POST /v1/messages/batches`` body streamed
  from a temporary file, polled, and its results JSONL translated back to
  OpenAI's batch output format.

Every result line is priced with ``cost_usd(…, batch=True)`` and recorded in the
ledger (``traffic_class="batch"``, step ``batch_generation``, request id
``<batch id>:<custom id>``: a batch resumed after a worker died is not charged
twice). The upstream batch id is saved as soon as it exists, so a worker that
takes over a batch resumes polling instead of submitting it again.

Upstream, these lines skip the pipeline's execute stage by nature (the provider
runs them); they are identified, priced and recorded like any call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from tokenomy.errors import GatewayError, UpstreamError, UpstreamTimeout
from tokenomy.jobs.batch_files import BATCH_ENDPOINTS, Validation, finalize, iter_lines, output_line
from tokenomy.jobs.files import new_file_id
from tokenomy.models import Target
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.execute import charge
from tokenomy.pipeline.identify import identity_from
from tokenomy.pipeline.record import RecordStage
from tokenomy.providers.anthropic import ANTHROPIC_VERSION
from tokenomy.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_BASE_URL
from tokenomy.providers.anthropic_format import anthropic_to_openai_response, openai_to_anthropic_request
from tokenomy.providers.anthropic_request import DEFAULT_MAX_TOKENS
from tokenomy.providers.base import Deployment
from tokenomy.providers.http import upstream_status_error
from tokenomy.providers.openai import DEFAULT_BASE_URL as OPENAI_BASE_URL
from tokenomy.providers.usage import Usage

if TYPE_CHECKING:
    from tokenomy.jobs.worker import JobWorker

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UpstreamState:
    status: str  # in_progress | ended | failed | cancelled
    completed: int = 0
    failed: int = 0
    errors: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class ResultLine:
    custom_id: str
    status: int
    body: dict[str, Any]  # OpenAI chat completion, or OpenAI's error envelope
    usage: Usage | None


class BatchAPI:
    """A provider's batch API (one instance per batch run)."""

    def __init__(self, deployment: Deployment, session: aiohttp.ClientSession, scratch: Path) -> None:
        self.deployment = deployment
        self.session = session
        self.scratch = scratch

    async def _request(self, method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
        d = self.deployment
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=d.connect_timeout_s, sock_read=d.read_timeout_s)
        try:
            response = await self.session.request(method, url, timeout=timeout, **kwargs)
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {d.name!r} batch API timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"cannot reach upstream {d.name!r} batch API: {exc}") from exc
        if response.status >= 400:
            body = await response.read()
            response.release()
            raise upstream_status_error(d, response.status, body, response.headers)
        return response

    async def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._request(method, url, **kwargs)
        try:
            return orjson.loads(await response.read())
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"upstream {self.deployment.name!r} batch API answered malformed JSON") from exc
        finally:
            response.release()

    async def _lines(self, url: str, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """A JSONL body, line by line as it arrives."""
        response = await self._request("GET", url, **kwargs)
        try:
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if line.strip():
                    yield orjson.loads(line)
        finally:
            response.release()

    async def submit(self, input_path: Path, batch: dict[str, Any]) -> str:
        raise NotImplementedError

    async def poll(self, upstream_id: str) -> UpstreamState:
        raise NotImplementedError

    async def cancel(self, upstream_id: str) -> None:
        raise NotImplementedError

    def results(self, upstream_id: str, input_path: Path) -> AsyncIterator[ResultLine]:
        raise NotImplementedError


class OpenAIBatchAPI(BatchAPI):
    def _url(self, path: str) -> str:
        return f"{(self.deployment.base_url or OPENAI_BASE_URL).rstrip('/')}/{path}"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.deployment.options.get("headers") or {})
        if self.deployment.api_key:
            headers["authorization"] = f"Bearer {self.deployment.api_key}"
        return headers

    async def submit(self, input_path: Path, batch: dict[str, Any]) -> str:
        upstream_model = self.deployment.upstream_model
        translated = self.scratch / f"{batch['id']}-openai.jsonl"

        def rewrite() -> None:
            with open(translated, "wb") as out:
                for _, item, _ in iter_lines(input_path):
                    assert item is not None
                    item["body"] = {**item["body"], "model": upstream_model}
                    out.write(orjson.dumps(item) + b"\n")

        await asyncio.to_thread(rewrite)
        try:
            with open(translated, "rb") as handle:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", handle, filename=f"{batch['id']}.jsonl", content_type="application/jsonl")
                uploaded = await self._json("POST", self._url("files"), data=form, headers=self._headers())
        finally:
            translated.unlink(missing_ok=True)
        created = await self._json(
            "POST",
            self._url("batches"),
            json={
                "input_file_id": uploaded["id"],
                "endpoint": batch["endpoint"],
                "completion_window": "24h",
                "metadata": {"tokenomy_batch_id": batch["id"]},
            },
            headers=self._headers(),
        )
        return str(created["id"])

    async def poll(self, upstream_id: str) -> UpstreamState:
        data = await self._json("GET", self._url(f"batches/{upstream_id}"), headers=self._headers())
        self._last = data
        counts = data.get("request_counts") or {}
        status = data.get("status")
        mapped = {"completed": "ended", "expired": "ended", "failed": "failed", "cancelled": "cancelled"}
        errors = (data.get("errors") or {}).get("data") if isinstance(data.get("errors"), dict) else None
        return UpstreamState(
            mapped.get(str(status), "in_progress"), int(counts.get("completed") or 0), int(counts.get("failed") or 0),
            errors,
        )

    async def cancel(self, upstream_id: str) -> None:
        await self._json("POST", self._url(f"batches/{upstream_id}/cancel"), headers=self._headers())

    async def results(self, upstream_id: str, input_path: Path) -> AsyncIterator[ResultLine]:
        data = getattr(self, "_last", None) or await self._json(
            "GET", self._url(f"batches/{upstream_id}"), headers=self._headers()
        )
        for key in ("output_file_id", "error_file_id"):
            file_id = data.get(key)
            if not file_id:
                continue
            async for line in self._lines(self._url(f"files/{file_id}/content"), headers=self._headers()):
                response = line.get("response") or {}
                body = response.get("body")
                if not isinstance(body, dict):
                    error = line.get("error") or {}
                    body = {"error": {"message": error.get("message", "failed upstream"), "type": "upstream_error",
                                      "param": None, "code": error.get("code")}}  # fmt: skip
                status = int(response.get("status_code") or 500)
                usage = Usage.from_openai(body.get("usage")) if status == 200 else None
                yield ResultLine(str(line.get("custom_id")), status, body, usage)


class AnthropicBatchAPI(BatchAPI):
    def _url(self, path: str) -> str:
        base = (self.deployment.base_url or ANTHROPIC_BASE_URL).rstrip("/")
        return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": str(self.deployment.options.get("anthropic_version") or ANTHROPIC_VERSION)}
        if self.deployment.api_key:
            headers["x-api-key"] = self.deployment.api_key
        headers.update(self.deployment.options.get("headers") or {})
        return headers

    #: lines refused by the translation (never sent): written to the error file with the results
    refused: list[ResultLine]

    async def submit(self, input_path: Path, batch: dict[str, Any]) -> str:
        deployment = self.deployment
        default_max = int(deployment.options.get("default_max_tokens") or DEFAULT_MAX_TOKENS)
        body_path = self.scratch / f"{batch['id']}-anthropic.json"
        self.refused = []

        def build() -> int:
            count = 0
            with open(body_path, "wb") as out:
                out.write(b'{"requests":[')
                for number, item, _ in iter_lines(input_path):
                    assert item is not None
                    try:
                        params = openai_to_anthropic_request(item["body"], deployment.upstream_model,
                                                             default_max_tokens=default_max)
                    except GatewayError as err:
                        self.refused.append(ResultLine(item["custom_id"], err.status, err.envelope(), None))
                        continue
                    params.pop("stream", None)
                    out.write((b"," if count else b"") + orjson.dumps({"custom_id": f"r{number}", "params": params}))
                    count += 1
                out.write(b"]}")
            return count

        try:
            sent = await asyncio.to_thread(build)
            if not sent:
                return "none"
            with open(body_path, "rb") as handle:
                headers = {**self._headers(), "content-type": "application/json"}
                created = await self._json("POST", self._url("messages/batches"), data=handle, headers=headers)
        finally:
            body_path.unlink(missing_ok=True)
        return str(created["id"])

    async def poll(self, upstream_id: str) -> UpstreamState:
        if upstream_id == "none":
            return UpstreamState("ended")
        data = await self._json("GET", self._url(f"messages/batches/{upstream_id}"), headers=self._headers())
        self._last = data
        counts = data.get("request_counts") or {}
        failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
        status = "ended" if data.get("processing_status") == "ended" else "in_progress"
        return UpstreamState(status, int(counts.get("succeeded") or 0), failed)

    async def cancel(self, upstream_id: str) -> None:
        if upstream_id != "none":
            await self._json("POST", self._url(f"messages/batches/{upstream_id}/cancel"), headers=self._headers())

    async def results(self, upstream_id: str, input_path: Path) -> AsyncIterator[ResultLine]:
        for line in getattr(self, "refused", []):
            yield line
        if upstream_id == "none":
            return
        ids = await asyncio.to_thread(
            lambda: {f"r{number}": item["custom_id"] for number, item, _ in iter_lines(input_path) if item}
        )
        data = getattr(self, "_last", None) or await self._json(
            "GET", self._url(f"messages/batches/{upstream_id}"), headers=self._headers()
        )
        url = data.get("results_url") or self._url(f"messages/batches/{upstream_id}/results")
        async for line in self._lines(url, headers=self._headers()):
            custom_id = ids.get(str(line.get("custom_id")), str(line.get("custom_id")))
            result = line.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded":
                message = result["message"]
                body = anthropic_to_openai_response(message, message.get("model") or self.deployment.upstream_model)
                yield ResultLine(custom_id, 200, body, Usage.from_anthropic(message.get("usage")))
                continue
            if kind == "errored":
                inner = ((result.get("error") or {}).get("error")) or {}
                status = 400 if inner.get("type") == "invalid_request_error" else 500
                message_text = inner.get("message", "failed upstream")
                code = inner.get("type")
            else:  # canceled | expired
                status, message_text, code = 499 if kind == "canceled" else 408, f"request {kind}", f"batch_{kind}"
            envelope = {"error": {"message": message_text, "type": "upstream_error", "param": None, "code": code}}
            yield ResultLine(custom_id, status, envelope, None)


BATCH_APIS: dict[str, type[BatchAPI]] = {"openai": OpenAIBatchAPI, "anthropic": AnthropicBatchAPI}


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

    upstream_id = batch.get("upstream_id")
    if not upstream_id:
        upstream_id = await api.submit(input_path, batch)
        await store.update_batch(batch["id"], upstream_id=upstream_id)
    cancel_sent = False
    interval = gateway.settings.batches.upstream_poll_interval_s
    while True:
        state = await api.poll(upstream_id)
        await store.update_batch(batch["id"], completed=state.completed, failed=state.failed)
        if state.status != "in_progress":
            break
        record = await store.get_batch(batch["id"])
        if record is not None and record["status"] == "cancelling" and not cancel_sent:
            await api.cancel(upstream_id)
            cancel_sent = True
        await asyncio.sleep(interval)
    record = await store.get_batch(batch["id"])
    cancelled = state.status == "cancelled" or (record is not None and record["status"] == "cancelling")
    if state.status == "failed":
        await store.update_batch(batch["id"], status="failed", failed_at=time.time(),
                                 errors=state.errors or [{"code": "upstream_failed", "message": "failed upstream"}])
        return
    await store.update_batch(batch["id"], finalizing_at=time.time())
    await _collect(worker, batch, api, upstream_id, input_path, target, cancelled)


async def _collect(
    worker: JobWorker, batch: dict[str, Any], api: BatchAPI, upstream_id: str, input_path: Path, target: Target,
    cancelled: bool,
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
    headers = dict(batch.get("headers") or {})
    model = target.deployment.name
    with open(output_path, "wb") as out, open(error_path, "wb") as err:
        async for line in api.results(upstream_id, input_path):
            request_id = f"{batch['id']}:{line.custom_id}"
            if line.status != 200:
                failed += 1
                err.write(output_line(line.custom_id, request_id, line.status, line.body))
                continue
            call = Call(kind=kind, body={}, model_asked=model, request_id=request_id, headers=headers,
                        traffic_class="batch", batch_priced=True)
            call.identity = identity_from(call)
            call.targets, call.baseline_price = (target,), target.price
            call.model_served, call.provider = target.deployment.name, target.deployment.provider
            charge(call, target, "generation", line.usage or Usage())
            call.annotations["batch_id"] = batch["id"]
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
    if gateway.writer is not None:
        await gateway.writer.flush()
    await worker.service.store.update_batch(batch["id"], completed=completed, failed=failed)
    await finalize(worker, batch["id"], output_id, output_path, error_id, error_path, total_cost, cancelled=cancelled)


__all__ = ["AnthropicBatchAPI", "OpenAIBatchAPI", "run_upstream_batch"]
