"""``POST /v1/messages``: the Anthropic Messages API, through the same pipeline.

The request is translated to the gateway's OpenAI shape, run like any other
call (same cost, ledger, and later budgets, cache and routing), and the answer
translated back — JSON or Anthropic's SSE event sequence. Errors use
Anthropic's error body so the ``anthropic`` SDK raises its usual exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tokenomy.api.http import (
    ClientGone,
    JSONResponse,
    authenticate,
    gateway_of,
    internal_error_response,
    new_call,
    read_json,
    sse_event,
    until_disconnect,
)
from tokenomy.api.openai import add_cost
from tokenomy.api.sse import SSEResponse
from tokenomy.errors import GatewayError
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.tokens.counting import count_messages
from tokenomy.providers.anthropic_format import (
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)


async def messages(request: Request) -> Response:
    gateway = gateway_of(request)
    call: Call | None = None
    try:
        identity = await authenticate(request, gateway)
        raw = await read_json(request, gateway.settings.server.max_body_bytes)
        body = anthropic_to_openai_request(raw)
        call = new_call(request, "chat", body, api="anthropic", identity=identity)
        reply = await until_disconnect(request, gateway.pipeline.run(call))
        return render(call, reply, raw.get("model", ""))
    except GatewayError as err:
        headers = dict(err.headers)
        if call is not None:
            headers.update(call.response_headers())
        return JSONResponse(anthropic_error_body(err.status, err.message), status_code=err.status, headers=headers)
    except ClientGone:
        return Response(status_code=499)
    except Exception as exc:  # a bug: logged with its trace, reported as a clean 500
        return internal_error_response(exc, call)


def render(call: Call, reply: Reply, model: str) -> Response:
    if isinstance(reply, Completion):
        usage = call.trace.usage() if call.trace.items else None
        message = openai_to_anthropic_response(reply.body, usage, model)
        add_cost(message["usage"], call)
        return JSONResponse(message, headers={**call.response_headers(), **reply.headers})
    return SSEResponse(reply, anthropic_events(call, reply, model))


async def anthropic_events(call: Call, reply: StreamReply, model: str) -> AsyncIterator[bytes]:
    """Anthropic's event sequence; the final ``message_delta`` usage carries the cost."""
    translator = OpenAIToAnthropicStream(model, input_tokens=_estimated_input(call))
    try:
        for event, data in translator.start():
            yield sse_event(orjson.dumps(data), event)
        async for chunk in reply.chunks():
            for event, data in translator.feed(chunk):
                yield sse_event(orjson.dumps(data), event)
        for event, data in translator.close(reply.stream.usage):
            if event == "message_delta":
                add_cost(data["usage"], call)
            yield sse_event(orjson.dumps(data), event)
    except GatewayError as err:
        event, data = OpenAIToAnthropicStream.error_event(err.status, err.message)
        yield sse_event(orjson.dumps(data), event)


def _estimated_input(call: Call) -> int:
    """``message_start`` must state input tokens before the upstream reports them: count them."""
    return count_messages(call.body.get("messages") or [], call.model_served, tools=call.body.get("tools"))
