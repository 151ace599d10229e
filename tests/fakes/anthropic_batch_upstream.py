"""The fake Anthropic Messages API plus Message Batches, in Anthropic's documented wire format.

``POST /v1/messages/batches`` ``{"requests": [{"custom_id", "params"}]}`` → a
``message_batch`` object (``processing_status`` ``in_progress``), which ends on
the next retrieve with ``results_url``; ``GET …/results`` is JSONL of
``{"custom_id", "result": {"type": "succeeded", "message"}}`` or
``{"type": "errored", "error": {"type": "error", "error": {...}}}`` (params that
fail the Messages API's validation); ``POST …/cancel``. Custom ids are checked
against Anthropic's pattern ``^[a-zA-Z0-9_-]{1,64}$``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.anthropic_upstream import FakeAnthropic, RequestInvalid, error_response, validate

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class FakeAnthropicBatches(FakeAnthropic):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_requests: list[dict[str, Any]] = []
        self._results: dict[str, bytes] = {}

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/messages/batches", self.create_batch)
        app.router.add_get("/v1/messages/batches/{batch_id}", self.retrieve_batch)
        app.router.add_get("/v1/messages/batches/{batch_id}/results", self.results)
        app.router.add_post("/v1/messages/batches/{batch_id}/cancel", self.cancel_batch)
        return app

    def _denied(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("x-api-key") != self.api_key:
            return error_response(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error_response(400, "anthropic-version: header is required")
        return None

    async def create_batch(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied:
            return denied
        body = orjson.loads(await request.read())
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return error_response(400, "requests: field required")
        seen = set()
        for item in requests:
            if not CUSTOM_ID.match(str(item.get("custom_id", ""))) or item["custom_id"] in seen:
                return error_response(400, f"requests: invalid or duplicate custom_id {item.get('custom_id')!r}")
            seen.add(item["custom_id"])
            if not isinstance(item.get("params"), dict):
                return error_response(400, "requests: params required")
        batch_id = "msgbatch_" + uuid.uuid4().hex[:24]
        self.batches[batch_id] = {
            "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                               "expired": 0},
            "ended_at": None, "created_at": _now(), "expires_at": _now(), "archived_at": None,
            "cancel_initiated_at": None, "results_url": None,
        }  # fmt: skip
        self.batch_requests.extend(requests)
        self._pending = getattr(self, "_pending", {})
        self._pending[batch_id] = requests
        return web.json_response(self.batches[batch_id])

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return error_response(404, "batch not found")
        if batch["processing_status"] in ("in_progress", "canceling") and batch["id"] in self._pending:
            self._finish(batch, request, canceled=batch["processing_status"] == "canceling")
        return web.json_response(batch)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied:
            return denied
        batch = self.batches[request.match_info["batch_id"]]
        if batch["processing_status"] == "in_progress":
            batch["processing_status"], batch["cancel_initiated_at"] = "canceling", _now()
        return web.json_response(batch)

    def _finish(self, batch: dict[str, Any], request: web.Request, canceled: bool) -> None:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for item in self._pending.pop(batch["id"]):
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
                counts["canceled"] += 1
            else:
                try:
                    validate(item["params"], strict_alternation=self.strict_alternation)
                except RequestInvalid as exc:
                    result = {"type": "errored", "error": {"type": "error", "error": {
                        "type": "invalid_request_error", "message": str(exc)}}}  # fmt: skip
                    counts["errored"] += 1
                else:
                    result = {"type": "succeeded", "message": self._answer(item["params"])}
                    counts["succeeded"] += 1
            lines.append(orjson.dumps({"custom_id": item["custom_id"], "result": result}) + b"\n")
        self._results[batch["id"]] = b"".join(lines)
        batch.update(
            processing_status="ended",
            request_counts=counts,
            ended_at=_now(),
            results_url=f"{self.base_url}/v1/messages/batches/{batch['id']}/results",
        )

    async def results(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied:
            return denied
        data = self._results.get(request.match_info["batch_id"])
        if data is None:
            return error_response(404, "results not available")
        return web.Response(body=data, content_type="application/binary")
