"""What every route shares: reading bodies within limits, authentication, error
rendering, building a ``Call`` and running it until the client goes away.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenomy.errors import AuthenticationFailed, GatewayError, InvalidRequest, PayloadTooLarge
from tokenomy.budgets.keys import looks_like_key
from tokenomy.jobs.owner import Caller
from tokenomy.pipeline.call import Call, Identity

if TYPE_CHECKING:
    from tokenomy.app import Gateway

log = logging.getLogger(__name__)

T = TypeVar("T")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

#: headers copied into ``Call.headers`` (lower-cased); the rest are not the pipeline's business
FORWARDED_HEADERS = (
    "x-tokenomy-team",
    "x-tokenomy-feature",
    "x-tokenomy-customer",
    "x-tokenomy-endpoint",
    "x-tokenomy-tags",
    "x-tokenomy-priority",
    "x-tokenomy-cache",
    "x-tokenomy-prompt",
    "cache-control",
)


class ClientGone(Exception):
    """The client disconnected before its answer was complete."""


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 beyond ``max_bytes``, 400 if not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise PayloadTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
        except ValueError:
            raise InvalidRequest("invalid Content-Length header") from None
        body = await request.body()
    else:
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than the limit of {max_bytes} bytes")
    if not body:
        raise InvalidRequest("the request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def bearer_token(request: Request) -> str:
    """The API key sent as ``Authorization: Bearer <key>`` or ``x-api-key`` (empty if none)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")


def is_master(token: str, master_key: str | None) -> bool:
    return bool(master_key) and hmac.compare_digest(token.encode(), master_key.encode())  # type: ignore[union-attr]


async def authenticate(request: Request, gateway: Gateway) -> Identity | None:
    """Who is calling: a virtual key's ``Identity``, or ``None`` for the master key / an open gateway.

    A virtual key (``tk-…``) is looked up by the key service (cached); the master
    key is compared in constant time. With no master key and ``keys.required``
    off, the gateway is open (local use) — but a ``tk-`` key that does not
    check out is still refused, so a revoked key never falls back to anonymous.
    """
    settings = gateway.settings
    master_key = settings.server.master_key
    token = bearer_token(request)
    if token and is_master(token, master_key):
        return None
    enforcement = gateway.enforcement
    if token and enforcement is not None and looks_like_key(token):
        identity = await enforcement.keys.authenticate(token)
        if identity is None:
            raise AuthenticationFailed("invalid, revoked or expired API key")
        return identity
    if master_key is None and not settings.keys.required:
        return None
    if not token:
        raise AuthenticationFailed("missing API key: send it as 'Authorization: Bearer <key>'")
    raise AuthenticationFailed("incorrect API key provided")


async def caller_of(request: Request, gateway: Gateway) -> Caller:
    """``authenticate``, and whether it was the master key (which sees every key's files, batches and jobs)."""
    token = bearer_token(request)
    if token and is_master(token, gateway.settings.server.master_key):
        return Caller(master=True)
    return Caller(identity=await authenticate(request, gateway))


def new_call(
    request: Request, kind: str, body: dict[str, Any], *, api: str = "openai", identity: Identity | None = None
) -> Call:
    """A Call for this request: its id (the client's ``x-request-id`` when sane), headers, and who sent it."""
    raw = request.headers
    headers = {name: raw[name] for name in FORWARDED_HEADERS if name in raw}
    call = Call(kind=kind, body=body, model_asked=body["model"], api=api, headers=headers)
    if identity is not None:
        call.identity = identity
    incoming = raw.get("x-request-id")
    if incoming and _REQUEST_ID.match(incoming):
        call.request_id = incoming
    call.stream = bool(body.get("stream"))
    return call


def error_response(err: GatewayError, call: Call | None = None) -> JSONResponse:
    headers = dict(err.headers)
    if call is not None:
        headers.update(call.response_headers())
    return JSONResponse(err.envelope(), status_code=err.status, headers=headers)


def internal_error_response(exc: BaseException, call: Call | None = None) -> JSONResponse:
    """A bug: log it with its trace, tell the client only that it happened."""
    log.error("internal error on %s", call.request_id if call else "request", exc_info=exc)
    envelope = {
        "error": {
            "message": "The gateway hit an internal error; it has been logged.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    headers = call.response_headers() if call is not None else {}
    return JSONResponse(envelope, status_code=500, headers=headers)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (so the upstream call
    stops) and raise ``ClientGone``.

    The body has been read by now, so the next ASGI ``receive`` only returns when
    the client goes away. One watcher task per request; the work itself runs in
    the request's own task, which the watcher cancels.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = finished = False

    def on_disconnect(watcher: asyncio.Task[None]) -> None:
        nonlocal gone
        # ``finished``: the work ended before this callback ran; cancelling now
        # would hit whatever the request does next (rendering, sending).
        if not finished and not watcher.cancelled() and watcher.exception() is None:
            gone = True
            current.cancel()

    watcher = asyncio.ensure_future(_wait_disconnect(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        finished = True
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    receive: Callable[[], Awaitable[dict[str, Any]]] = request.receive
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def sse_event(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
