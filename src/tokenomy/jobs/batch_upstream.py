"""Providers' batch APIs: OpenAI Batch and Anthropic Message Batches, in their wire formats.

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

Both speak the same small contract (``BatchAPI``: submit, poll, cancel,
results); running a batch through one of them — budgets, pricing, recording —
is ``batch_passthrough``'s job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tokenomy.errors import GatewayError, UpstreamError, UpstreamTimeout
from tokenomy.jobs.batch_files import iter_lines
from tokenomy.providers.anthropic import ANTHROPIC_VERSION
from tokenomy.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_BASE_URL
from tokenomy.providers.anthropic_format import anthropic_to_openai_response, openai_to_anthropic_request
from tokenomy.providers.anthropic_request import DEFAULT_MAX_TOKENS
from tokenomy.providers.base import Deployment
from tokenomy.providers.http import upstream_status_error
from tokenomy.providers.openai import DEFAULT_BASE_URL as OPENAI_BASE_URL
from tokenomy.providers.usage import Usage

log = logging.getLogger(__name__)

#: the upstream id of a batch none of whose lines was sent (all refused before submission)
NOTHING_SENT = "none"

#: the request as it is sent upstream (the output cap that was reserved applied)
Prepare = Callable[[dict[str, Any]], dict[str, Any]]


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

    async def submit(self, input_path: Path, batch: dict[str, Any], lines: int, prepare: Prepare) -> str:
        """Send the first ``lines`` lines of the input, each body through ``prepare``; the upstream batch id."""
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

    async def submit(self, input_path: Path, batch: dict[str, Any], lines: int, prepare: Prepare) -> str:
        upstream_model = self.deployment.upstream_model
        translated = self.scratch / f"{batch['id']}-openai.jsonl"

        def rewrite() -> None:
            with open(translated, "wb") as out:
                for index, (_, item, _) in enumerate(iter_lines(input_path)):
                    if index >= lines:
                        break
                    assert item is not None
                    item["body"] = {**prepare(item["body"]), "model": upstream_model}
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
        if upstream_id == NOTHING_SENT:
            return
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

    async def submit(self, input_path: Path, batch: dict[str, Any], lines: int, prepare: Prepare) -> str:
        deployment = self.deployment
        default_max = int(deployment.options.get("default_max_tokens") or DEFAULT_MAX_TOKENS)
        body_path = self.scratch / f"{batch['id']}-anthropic.json"
        self.refused = []

        def build() -> int:
            count = 0
            with open(body_path, "wb") as out:
                out.write(b'{"requests":[')
                for index, (number, item, _) in enumerate(iter_lines(input_path)):
                    if index >= lines:
                        break
                    assert item is not None
                    try:
                        params = openai_to_anthropic_request(prepare(item["body"]), deployment.upstream_model,
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
                return NOTHING_SENT
            with open(body_path, "rb") as handle:
                headers = {**self._headers(), "content-type": "application/json"}
                created = await self._json("POST", self._url("messages/batches"), data=handle, headers=headers)
        finally:
            body_path.unlink(missing_ok=True)
        return str(created["id"])

    async def poll(self, upstream_id: str) -> UpstreamState:
        if upstream_id == NOTHING_SENT:
            return UpstreamState("ended")
        data = await self._json("GET", self._url(f"messages/batches/{upstream_id}"), headers=self._headers())
        self._last = data
        counts = data.get("request_counts") or {}
        failed = sum(int(counts.get(k) or 0) for k in ("errored", "canceled", "expired"))
        status = "ended" if data.get("processing_status") == "ended" else "in_progress"
        return UpstreamState(status, int(counts.get("succeeded") or 0), failed)

    async def cancel(self, upstream_id: str) -> None:
        if upstream_id != NOTHING_SENT:
            await self._json("POST", self._url(f"messages/batches/{upstream_id}/cancel"), headers=self._headers())

    async def results(self, upstream_id: str, input_path: Path) -> AsyncIterator[ResultLine]:
        for line in getattr(self, "refused", []):
            yield line
        if upstream_id == NOTHING_SENT:
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


__all__ = [
    "BATCH_APIS", "NOTHING_SENT", "AnthropicBatchAPI", "BatchAPI", "OpenAIBatchAPI", "Prepare", "ResultLine",
    "UpstreamState",
]
