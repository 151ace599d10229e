"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``.

Thin by design: parse and check the request, build a ``Call``, run the
pipeline, render JSON or server-sent events. Cost, caching and routing are the
pipeline's business.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenomy.api.http import (
    ClientGone,
    JSONResponse,
    authenticate,
    error_response,
    gateway_of,
    internal_error_response,
    new_call,
    read_json,
    sse_event,
    until_disconnect,
)
from tokenomy.api.jobs import queue_request
from tokenomy.api.sse import SSEResponse
from tokenomy.api.validate import validate_chat, validate_embeddings
from tokenomy.errors import GatewayError
from tokenomy.jobs.traffic import traffic_class_for
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion, Reply, StreamReply


async def chat_completions(request: Request) -> Response:
    return await handle(request, "chat", validate_chat, render_chat)


async def embeddings(request: Request) -> Response:
    return await handle(request, "embeddings", validate_embeddings, render_json)


async def list_models(request: Request) -> Response:
    gateway = gateway_of(request)
    try:
        await authenticate(request, gateway)
    except GatewayError as err:
        return error_response(err)
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": entry.owned_by}
        for entry in gateway.registry
        for name in (entry.name, *entry.aliases)
    ]
    # routers (``model: "auto"``) are asked for like models
    data += [
        {"id": router.name, "object": "model", "created": 0, "owned_by": "tokenomy-router"}
        for router in gateway.settings.routing.routers
    ]
    return JSONResponse({"object": "list", "data": data})


Renderer = Callable[[Call, Reply], Response]


async def handle(
    request: Request,
    kind: str,
    validate: Callable[[dict[str, Any]], None],
    render: Renderer,
) -> Response:
    """The common life of an OpenAI-style request."""
    gateway = gateway_of(request)
    call: Call | None = None
    try:
        identity = await authenticate(request, gateway)
        body = await read_json(request, gateway.settings.server.max_body_bytes)
        validate(body)
        if "x-tokenomy-priority" in request.headers or gateway.settings.traffic.features:
            traffic_class = traffic_class_for(request.headers, gateway.settings.traffic)
            if traffic_class != "realtime":
                return await queue_request(request, kind, body, traffic_class, identity)
        call = new_call(request, kind, body, identity=identity)
        reply = await until_disconnect(request, gateway.pipeline.run(call))
        return render(call, reply)
    except GatewayError as err:
        return error_response(err, call)
    except ClientGone:
        return Response(status_code=499)
    except Exception as exc:  # a bug: logged with its trace, reported as a clean 500
        return internal_error_response(exc, call)


def render_json(call: Call, reply: Reply) -> Response:
    assert isinstance(reply, Completion)
    body = reply.body
    usage = body.get("usage")
    if isinstance(usage, dict):
        add_cost(usage, call)
    return JSONResponse(body, headers={**call.response_headers(), **reply.headers})


def render_chat(call: Call, reply: Reply) -> Response:
    if isinstance(reply, Completion):
        return render_json(call, reply)
    options = call.body.get("stream_options") or {}
    return SSEResponse(reply, openai_events(call, reply, bool(options.get("include_usage"))))


def add_cost(usage: dict[str, Any], call: Call) -> None:
    """Put the call's cost next to its token usage (OpenAI clients keep unknown usage fields)."""
    usage["cost_usd"] = call.trace.total_usd
    usage["baseline_cost_usd"] = call.trace.baseline_usd
    usage["tokenomy_request_id"] = call.request_id


async def openai_events(call: Call, reply: StreamReply, include_usage: bool) -> AsyncIterator[bytes]:
    """The OpenAI SSE stream: chunks, the usage chunk if asked for (with cost), ``[DONE]``."""
    try:
        async for chunk in reply.chunks():
            if chunk.get("usage"):
                if not include_usage:
                    if chunk.get("choices"):
                        chunk = {**chunk, "usage": None}
                    else:
                        continue
                else:
                    add_cost(chunk["usage"], call)
            elif include_usage and "usage" not in chunk:
                chunk["usage"] = None  # as OpenAI does on every chunk when usage is asked for
            yield sse_event(orjson.dumps(chunk))
    except GatewayError as err:
        yield sse_event(orjson.dumps(err.envelope()))
        return
    yield b"data: [DONE]\n\n"
