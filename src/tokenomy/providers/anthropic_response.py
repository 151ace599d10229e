"""Whole (non-streamed) answers and errors, translated between Anthropic Messages and OpenAI.

Pure functions, no I/O. Thinking is kept, not thrown away: an Anthropic answer's
thinking text goes to the OpenAI message's ``reasoning_content`` (the field
vLLM, DeepSeek and others use) and its signed blocks, verbatim, to
``thinking_blocks`` so a tool-use loop can send them back to Anthropic, which
requires them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from tokenomy.errors import UpstreamError
from tokenomy.providers.usage import Usage

#: Anthropic ``stop_reason`` → OpenAI ``finish_reason``.
FINISH_REASON_FOR_STOP_REASON = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",  # a paused server-tool turn: nothing an OpenAI client can resume
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

#: OpenAI ``finish_reason`` → Anthropic ``stop_reason``.
STOP_REASON_FOR_FINISH_REASON = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

#: Anthropic's error ``type`` per HTTP status (docs: "Errors — HTTP errors").
_ERROR_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def finish_reason_for(stop_reason: str | None) -> str:
    """OpenAI's finish reason for an Anthropic stop reason (unknown ones read as ``stop``)."""
    return FINISH_REASON_FOR_STOP_REASON.get(stop_reason or "", "stop")


def stop_reason_for(finish_reason: str | None) -> str:
    """Anthropic's stop reason for an OpenAI finish reason (unknown ones read as ``end_turn``)."""
    return STOP_REASON_FOR_FINISH_REASON.get(finish_reason or "", "end_turn")


def anthropic_to_openai_response(msg: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic ``message`` object as an OpenAI ``chat.completion``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in msg.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(block)
        # server-tool blocks (web search results…) have no OpenAI form; their text arrives in text blocks
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(b.get("thinking") or "" for b in thinking)
        message["thinking_blocks"] = thinking
    usage = Usage.from_anthropic(msg.get("usage")) or Usage()
    return {
        "id": msg.get("id") or f"msg_{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason_for(msg.get("stop_reason")),
                "logprobs": None,
            }
        ],
        "usage": usage.openai_dict(),
    }


def openai_to_anthropic_response(body: dict[str, Any], usage: Usage | None, model: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` as an Anthropic ``message`` object.

    ``usage`` is the call's normalized usage (from the pipeline); when ``None``
    the body's own ``usage`` is read. Tool-call arguments that are not a JSON
    object raise ``UpstreamError``: Anthropic's ``tool_use.input`` must be one.
    """
    choices = body.get("choices") or []
    if not choices:
        raise UpstreamError("upstream answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = list(_thinking_blocks(message))
    text = message.get("content")
    if isinstance(text, list):  # some servers answer with content parts
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    elif message.get("refusal"):
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        content.append(_tool_use_from_call(call))
    if usage is None:
        usage = Usage.from_openai(body.get("usage")) or Usage()
    return {
        "id": _message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason_for(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = message.get("thinking_blocks")
    if blocks:
        return [dict(b) for b in blocks if isinstance(b, dict)]
    reasoning = message.get("reasoning_content")
    if reasoning:
        # Reasoning from a non-Anthropic model: shown to the client, unsigned (so never replayable upstream).
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def _tool_use_from_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"model produced tool arguments that are not JSON: {arguments[:200]!r}") from exc
    if not isinstance(parsed, dict):
        raise UpstreamError(f"model produced tool arguments that are not a JSON object: {arguments[:200]!r}")
    return {"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name"), "input": parsed}


def _message_id(openai_id: Any) -> str:
    """``msg_…`` ids like Anthropic's, derived from the upstream id when there is one."""
    if isinstance(openai_id, str) and openai_id:
        if openai_id.startswith("msg_"):
            return openai_id
        return "msg_" + openai_id.removeprefix("chatcmpl-")
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def anthropic_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's ``usage`` object, with the ``cache_creation`` split by TTL that the API reports."""
    out = usage.anthropic_dict()
    out["cache_creation"] = {
        "ephemeral_5m_input_tokens": usage.cache_write_tokens,
        "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
    }
    return out


def anthropic_error_type(status: int) -> str:
    """Anthropic's error ``type`` name for an HTTP status."""
    if status in _ERROR_TYPE_FOR_STATUS:
        return _ERROR_TYPE_FOR_STATUS[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}
