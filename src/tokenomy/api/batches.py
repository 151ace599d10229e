"""The OpenAI-compatible Files and Batch API.

``POST /v1/files`` (multipart, ``purpose=batch``, JSONL), ``GET /v1/files``,
``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``;
``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``. Objects and output/error files in OpenAI's
formats, so the ``openai`` SDK works unchanged. A batch is one queued job of
class ``batch``; a worker runs it (``tokenomy.jobs.batch_runner``) with the
identity the submitting key binds, so its lines are charged to that key, team
and org. Files and batches belong to the key that created them
(``tokenomy.jobs.owner``): another key is answered 404.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tokenomy.api.http import (
    FORWARDED_HEADERS,
    JSONResponse,
    caller_of,
    error_response,
    gateway_of,
    internal_error_response,
    read_json,
)
from tokenomy.api.jobs import jobs_of
from tokenomy.budgets.keys import bound_headers
from tokenomy.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge
from tokenomy.jobs.batch_files import BATCH_ENDPOINTS, batch_object
from tokenomy.jobs.files import file_object
from tokenomy.jobs.owner import Caller
from tokenomy.jobs.store import Job

Handler = Callable[[Request, Caller], Awaitable[Response]]


def _guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The route for ``handler``: authenticated caller in, OpenAI error envelopes out."""

    async def endpoint(request: Request) -> Response:
        gateway = gateway_of(request)
        try:
            caller = await caller_of(request, gateway)
            return await handler(request, caller)
        except GatewayError as err:
            return error_response(err)
        except Exception as exc:  # a bug: logged with its trace, reported as a clean 500
            return internal_error_response(exc)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


async def _visible_file(request: Request, caller: Caller, file_id: str, param: str = "file_id") -> dict[str, Any]:
    """The file's record, if the caller may see it (404 otherwise, as for a file that does not exist)."""
    record = await jobs_of(request).store.get_file(file_id)
    if record is None or not caller.may_see(record.get("owner")):
        raise NotFound(f"No such File object: {file_id}", param=param)
    return record


async def _visible_batch(request: Request, caller: Caller, batch_id: str) -> dict[str, Any]:
    record = await jobs_of(request).store.get_batch(batch_id)
    if record is None or not caller.may_see(record.get("owner")):
        raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
    return record


@_guarded
async def upload_file(request: Request, caller: Caller) -> Response:
    """Multipart upload, spooled to disk by the parser and copied into the file store in chunks."""
    settings = gateway_of(request).settings.batches
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > settings.max_file_bytes + 65536:
        raise PayloadTooLarge(f"the file is larger than the limit of {settings.max_file_bytes} bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("upload files as multipart/form-data with fields 'file' and 'purpose'")
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("missing the 'file' field", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise InvalidRequest("missing the 'purpose' field", param="purpose")
        try:
            record = await jobs_of(request).files.save_upload(
                upload.file, upload.filename or "upload.jsonl", purpose, settings.max_file_bytes, owner=caller.key_id
            )
        except ValueError as exc:
            raise PayloadTooLarge(str(exc)) from None
    return JSONResponse(file_object(record))


@_guarded
async def list_files(request: Request, caller: Caller) -> Response:
    purpose = request.query_params.get("purpose")
    records = await jobs_of(request).store.list_files(purpose, owner=caller.scope)
    return JSONResponse({"object": "list", "data": [file_object(r) for r in records], "has_more": False})


@_guarded
async def get_file(request: Request, caller: Caller) -> Response:
    return JSONResponse(file_object(await _visible_file(request, caller, request.path_params["file_id"])))


@_guarded
async def delete_file(request: Request, caller: Caller) -> Response:
    file_id = request.path_params["file_id"]
    await jobs_of(request).files.remove(await _visible_file(request, caller, file_id))
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


@_guarded
async def file_content(request: Request, caller: Caller) -> Response:
    """The file's bytes, streamed."""
    record = await _visible_file(request, caller, request.path_params["file_id"])
    return StreamingResponse(jobs_of(request).files.content(record), media_type="application/jsonl")


@_guarded
async def create_batch(request: Request, caller: Caller) -> Response:
    gateway = gateway_of(request)
    body = await read_json(request, gateway.settings.server.max_body_bytes)
    service = jobs_of(request)
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str):
        raise InvalidRequest("input_file_id is required", param="input_file_id")
    endpoint = body.get("endpoint")
    if endpoint not in BATCH_ENDPOINTS:
        raise InvalidRequest(f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}", param="endpoint")
    window = body.get("completion_window", "24h")
    if window != "24h":
        raise InvalidRequest("completion_window must be '24h'", param="completion_window")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object", param="metadata")
    record = await _visible_file(request, caller, input_file_id, "input_file_id")
    if record["purpose"] != "batch":
        raise InvalidRequest(f"file {input_file_id} has purpose {record['purpose']!r}, not 'batch'", param="input_file_id")
    now = time.time()
    batch_id = "batch_" + uuid.uuid4().hex[:24]
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    # every line runs as the submitting key: its budgets, allowed models and rate limits apply
    headers.update(bound_headers(caller.identity))
    batch = {
        "id": batch_id,
        "status": "validating",
        "endpoint": endpoint,
        "input_file_id": input_file_id,
        "output_file_id": None,
        "error_file_id": None,
        "completion_window": window,
        "created_at": now,
        "expires_at": now + 24 * 3600,
        "total": 0,
        "completed": 0,
        "failed": 0,
        "deduplicated": 0,
        "metadata": metadata,
        "errors": None,
        "headers": headers,
        "execution": None,
        "upstream_id": None,
        "cost_usd": None,
        "owner": caller.key_id,
    }
    await service.store.create_batch(batch)
    job = Job(
        id="job_" + batch_id.removeprefix("batch_"),
        kind="batch",
        traffic_class="batch",
        body={"batch_id": batch_id},
        headers=headers,
        batch_id=batch_id,
        owner=caller.key_id,
    )
    await service.submit(job)
    stored = await service.store.get_batch(batch_id)
    assert stored is not None
    return JSONResponse(batch_object(stored))


@_guarded
async def get_batch(request: Request, caller: Caller) -> Response:
    return JSONResponse(batch_object(await _visible_batch(request, caller, request.path_params["batch_id"])))


@_guarded
async def list_batches(request: Request, caller: Caller) -> Response:
    try:
        limit = max(1, min(100, int(request.query_params.get("limit", "20"))))
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    records = await jobs_of(request).store.list_batches(
        request.query_params.get("after"), limit + 1, owner=caller.scope
    )
    has_more = len(records) > limit
    data = [batch_object(r) for r in records[:limit]]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )


@_guarded
async def cancel_batch(request: Request, caller: Caller) -> Response:
    """Ask for cancellation: ``cancelling`` until the worker stops it (``cancelled``)."""
    batch_id = request.path_params["batch_id"]
    store = jobs_of(request).store
    await _visible_batch(request, caller, batch_id)
    await store.update_batch(
        batch_id,
        only_if_status=("validating", "in_progress"),
        status="cancelling",
        cancelling_at=time.time(),
    )
    record = await store.get_batch(batch_id)
    assert record is not None
    return JSONResponse(batch_object(record))
