"""The fake OpenAI upstream plus OpenAI's Files and Batch API, in their documented wire formats.

``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.
A batch moves ``validating`` → ``in_progress`` → ``completed`` one step per
retrieve, then its output file holds one line per request
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``
— a chat completion answering ``"echo: <last user text>"`` with usage, or for
model ``fail-400`` an error body (those lines go to the error file).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import FakeOpenAI, _error, _last_user_text


class FakeOpenAIBatches(FakeOpenAI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_requests: list[dict[str, Any]] = []  # every input line received, as sent

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{file_id}/content", self.content)
        app.router.add_post("/v1/batches", self.create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self.retrieve_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self.cancel_batch)
        return app

    async def upload(self, request: web.Request) -> web.Response:
        denied = self._check(request)
        if denied:
            return denied
        fields: dict[str, Any] = {}
        reader = await request.multipart()
        async for part in reader:
            fields[part.name] = (part.filename, await part.read()) if part.filename else await part.text()
        if "file" not in fields or fields.get("purpose") != "batch":
            return _error(400, "file and purpose=batch are required", "invalid_request_error", None)
        filename, data = fields["file"]
        file_id = "file-up" + uuid.uuid4().hex[:20]
        self.files[file_id] = {"data": bytes(data), "filename": filename, "purpose": "batch"}
        obj = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": "batch", "status": "processed"}  # fmt: skip
        return web.json_response(obj)

    async def content(self, request: web.Request) -> web.Response:
        denied = self._check(request)
        if denied:
            return denied
        record = self.files.get(request.match_info["file_id"])
        if record is None:
            return _error(404, "No such File object", "invalid_request_error", None)
        return web.Response(body=record["data"], content_type="application/octet-stream")

    async def create_batch(self, request: web.Request) -> web.Response:
        denied = self._check(request)
        if denied:
            return denied
        body = await request.json(loads=orjson.loads)
        if body.get("input_file_id") not in self.files or body.get("completion_window") != "24h":
            return _error(400, "invalid batch", "invalid_request_error", None)
        batch_id = "batch_up" + uuid.uuid4().hex[:20]
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": int(time.time()),
            "in_progress_at": None, "expires_at": int(time.time()) + 86400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None, "cancelling_at": None,
            "cancelled_at": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }  # fmt: skip
        return web.json_response(self.batches[batch_id])

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        denied = self._check(request)
        if denied:
            return denied
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch", "invalid_request_error", None)
        if batch["status"] == "validating":
            batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
            lines = self.files[batch["input_file_id"]]["data"].splitlines()
            batch["request_counts"]["total"] = len([line for line in lines if line.strip()])
        elif batch["status"] == "in_progress":
            self._run(batch)
        elif batch["status"] == "cancelling":
            batch["status"], batch["cancelled_at"] = "cancelled", int(time.time())
        return web.json_response(batch)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "No such batch", "invalid_request_error", None)
        batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
        return web.json_response(batch)

    def _run(self, batch: dict[str, Any]) -> None:
        out, err = [], []
        for raw in self.files[batch["input_file_id"]]["data"].splitlines():
            if not raw.strip():
                continue
            line = orjson.loads(raw)
            self.batch_requests.append(line)
            body = line["body"]
            request_id = "req_" + uuid.uuid4().hex[:16]
            if body["model"] == "fail-400":
                error = {"error": {"message": "Invalid model", "type": "invalid_request_error", "param": "model",
                                   "code": None}}  # fmt: skip
                err.append({"id": "batch_req_" + uuid.uuid4().hex[:16], "custom_id": line["custom_id"],
                            "response": {"status_code": 400, "request_id": request_id, "body": error},
                            "error": None})  # fmt: skip
                continue
            text = "echo: " + _last_user_text(body["messages"])
            prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in body["messages"]) + 3
            completion = len(text.split(" "))
            answer = {
                "id": "chatcmpl-" + uuid.uuid4().hex[:16], "object": "chat.completion",
                "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}},
                "system_fingerprint": "fp_fake",
            }  # fmt: skip
            out.append({"id": "batch_req_" + uuid.uuid4().hex[:16], "custom_id": line["custom_id"],
                        "response": {"status_code": 200, "request_id": request_id, "body": answer},
                        "error": None})  # fmt: skip
        now = int(time.time())
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = "file-up" + uuid.uuid4().hex[:20]
                data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
                self.files[file_id] = {"data": data, "filename": "out.jsonl", "purpose": "batch_output"}
                batch[name] = file_id
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out), "failed": len(err)}
        batch.update(status="completed", finalizing_at=now, completed_at=now)
