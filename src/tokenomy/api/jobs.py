"""Async jobs over HTTP: ``POST /v1/async/chat/completions`` (and ``/v1/async/embeddings``)
answer ``202 Accepted`` with a job; ``GET /v1/async/jobs/{id}`` shows its status
and, once done, its result; ``POST /v1/async/jobs/{id}/cancel`` cancels it if no
worker has finished it. A job belongs to the virtual key that submitted it
(``tokenomy.jobs.owner``); another key is answered 404.

A request to the normal endpoints whose ``x-tokenomy-priority`` (or feature
policy) maps to ``async`` or ``batch`` is queued the same way. Optional
completion webhook: ``x-tokenomy-webhook-url: https://…`` (signed, retried; see
``tokenomy.jobs.webhooks``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from tokenomy.budgets.keys import bound_headers
from tokenomy.pipeline.call import Identity
from tokenomy.api.http import (
    FORWARDED_HEADERS,
    JSONResponse,
    authenticate,
    caller_of,
    error_response,
    gateway_of,
    internal_error_response,
    read_json,
)
from tokenomy.api.validate import validate_chat, validate_embeddings
from tokenomy.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from tokenomy.jobs.service import JobService, job_object, new_job_id
from tokenomy.jobs.store import Job
from tokenomy.jobs.traffic import traffic_class_for

if TYPE_CHECKING:
    from tokenomy.app import Gateway

WEBHOOK_HEADER = "x-tokenomy-webhook-url"


def jobs_of(request: Request) -> JobService:
    service = gateway_of(request).jobs
    if service is None:
        raise ServiceUnavailable("async jobs are not enabled on this gateway")
    return service


async def submit_chat(request: Request) -> Response:
    return await _submit(request, "chat", validate_chat)


async def submit_embeddings(request: Request) -> Response:
    return await _submit(request, "embeddings", validate_embeddings)


async def _submit(request: Request, kind: str, validate: Callable[[dict[str, Any]], None]) -> Response:
    gateway = gateway_of(request)
    try:
        identity = await authenticate(request, gateway)
        body = await read_json(request, gateway.settings.server.max_body_bytes)
        validate(body)
        traffic_class = traffic_class_for(request.headers, gateway.settings.traffic)
        return await queue_request(request, kind, body, "batch" if traffic_class == "batch" else "async", identity)
    except GatewayError as err:
        return error_response(err)
    except Exception as exc:  # a bug: logged with its trace, reported as a clean 500
        return internal_error_response(exc)


async def queue_request(
    request: Request, kind: str, body: dict[str, Any], traffic_class: str, identity: Identity | None = None
) -> Response:
    """Turn a validated request into a queued job; 202 with the job object.

    ``identity``: what the caller's virtual key binds; it travels with the job so the
    worker's run is charged to the same key, team and budgets (no side door).
    """
    service = jobs_of(request)
    if body.get("stream"):
        raise InvalidRequest("stream is not supported for async jobs: poll the job or use a webhook", param="stream")
    webhook = request.headers.get(WEBHOOK_HEADER)
    if webhook is not None:
        if not webhook.startswith(("http://", "https://")):
            raise InvalidRequest(f"{WEBHOOK_HEADER} must be an http(s) URL", param=WEBHOOK_HEADER)
        if not service.settings.webhook_secret:
            raise InvalidRequest(
                "webhooks need jobs.webhook_secret (TOKENOMY_JOBS__WEBHOOK_SECRET) to be set: they are always signed",
                param=WEBHOOK_HEADER,
            )
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    headers.update(bound_headers(identity))
    incoming = request.headers.get("x-request-id")
    job = Job(
        id=new_job_id(),
        kind=kind,
        traffic_class=traffic_class,
        model=str(body["model"]),
        body=body,
        headers=headers,
        webhook_url=webhook,
        owner=identity.key_id if identity is not None else None,
    )
    await service.submit(job)
    out = job_object(job)
    response_headers = {"location": f"/v1/async/jobs/{job.id}", "x-tokenomy-job-id": job.id}
    if incoming:
        response_headers["x-request-id"] = incoming
    return JSONResponse(out, status_code=202, headers=response_headers)


async def _visible_job(request: Request, gateway: Gateway) -> Job:
    """The job, if the caller may see it: its submitter's key or the master key (404 otherwise)."""
    caller = await caller_of(request, gateway)
    job_id = request.path_params["job_id"]
    job = await jobs_of(request).store.get_job(job_id)
    if job is None or not caller.may_see(job.owner):
        raise NotFound(f"No such job: {job_id}", param="job_id")
    return job


async def get_job(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        return JSONResponse(job_object(await _visible_job(request, gateway)))
    except GatewayError as err:
        return error_response(err)
    except Exception as exc:
        return internal_error_response(exc)


async def cancel_job(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        store = jobs_of(request).store
        job_id = (await _visible_job(request, gateway)).id
        await store.finish_job(job_id, "cancelled", error={"code": "cancelled", "message": "cancelled by the client"})
        job = await store.get_job(job_id)
        assert job is not None
        return JSONResponse(job_object(job))
    except GatewayError as err:
        return error_response(err)
    except Exception as exc:
        return internal_error_response(exc)
