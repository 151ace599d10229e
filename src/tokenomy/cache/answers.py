"""A cached answer and its two renderings: an OpenAI chat completion and an SSE chunk stream.

Streams and JSON requests share entries: a streamed answer is assembled into a
completion once it is complete (``StreamAssembler``), and a cached completion
is replayed as ``chat.completion.chunk`` dicts (``replay_chunks``) that the
HTTP layer renders as server-sent events exactly like a live stream.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenomy.providers.usage import Usage

#: finish reasons of an answer that is whole (``length`` and ``content_filter`` are cut short)
COMPLETE_REASONS = frozenset({"stop", "tool_calls", "function_call"})
#: characters per replayed content chunk (small enough to look like a stream, few enough to be cheap)
REPLAY_CHUNK_CHARS = 96


@dataclass(slots=True)
class CachedAnswer:
    """One stored answer, with what it cost to produce and where it came from."""

    body: dict[str, Any]  # OpenAI chat completion (or embeddings list) without gateway fields
    usage: Usage
    model_served: str | None
    provider: str | None
    namespace: str
    created_at: float = field(default_factory=time.time)
    tags: tuple[str, ...] = ()
    request_id: str | None = None
    #: the text the semantic cache matched on (for guards and verification), if any
    intent: str | None = None

    def age_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.created_at

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "body": self.body,
                "usage": [
                    self.usage.input_tokens,
                    self.usage.output_tokens,
                    self.usage.cached_tokens,
                    self.usage.cache_write_tokens,
                    self.usage.cache_write_1h_tokens,
                ],
                "model_served": self.model_served,
                "provider": self.provider,
                "namespace": self.namespace,
                "created_at": self.created_at,
                "tags": list(self.tags),
                "request_id": self.request_id,
                "intent": self.intent,
            }
        )

    @classmethod
    def loads(cls, data: bytes | str) -> CachedAnswer:
        raw = orjson.loads(data)
        return cls(
            body=raw["body"],
            usage=Usage(*raw["usage"]),
            model_served=raw.get("model_served"),
            provider=raw.get("provider"),
            namespace=raw.get("namespace", ""),
            created_at=float(raw.get("created_at") or 0.0),
            tags=tuple(raw.get("tags") or ()),
            request_id=raw.get("request_id"),
            intent=raw.get("intent"),
        )

    def completion(self) -> dict[str, Any]:
        """A fresh copy of the completion body (callers add gateway fields to it)."""
        return copy.deepcopy(self.body)

    def text(self) -> str:
        """The answer's text (all choices), for verification."""
        return completion_text(self.body)


def completion_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            parts.append(f"{function.get('name', '')}({function.get('arguments', '')})")
    return "\n".join(parts)


def is_complete(body: dict[str, Any], *, allow_truncated: bool = False) -> bool:
    """True when every choice ended on its own (never store cut or filtered answers)."""
    choices = body.get("choices")
    if not choices:
        return False
    allowed = COMPLETE_REASONS | {"length"} if allow_truncated else COMPLETE_REASONS
    return all(choice.get("finish_reason") in allowed for choice in choices)


def storable_body(body: dict[str, Any]) -> dict[str, Any]:
    """The completion without per-call gateway fields (cost, request id) in its usage."""
    out = dict(body)
    usage = out.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {
            k: v for k, v in usage.items() if k not in ("cost_usd", "baseline_cost_usd", "tokenomy_request_id")
        }
    return out


class StreamAssembler:
    """Rebuilds a chat completion from the chunks of a stream (content, tool calls, finish)."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or chunk.get("id")
        self.created = self.created or chunk.get("created")
        self.model = self.model or chunk.get("model")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            state = self.choices.setdefault(
                index, {"role": "assistant", "content": [], "refusal": [], "tool_calls": {}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                state["content"].append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                state["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                slot = state["tool_calls"].setdefault(
                    int(call.get("index") or 0), {"id": None, "type": "function", "name": [], "arguments": []}
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["name"].append(function["name"])
                if function.get("arguments"):
                    slot["arguments"].append(function["arguments"])
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message: dict[str, Any] = {
                "role": state["role"],
                # a tool-call answer has content null (a stream's opening chunk says content "")
                "content": ("".join(state["content"]) or None) if state["tool_calls"] else "".join(state["content"]),
                "refusal": "".join(state["refusal"]) or None,
            }
            if state["tool_calls"]:
                message["tool_calls"] = [
                    {
                        "id": slot["id"],
                        "type": slot["type"],
                        "function": {"name": "".join(slot["name"]), "arguments": "".join(slot["arguments"])},
                    }
                    for _, slot in sorted(state["tool_calls"].items())
                ]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": state["finish_reason"]}
            )
        body: dict[str, Any] = {
            "id": self.id or "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": self.created or int(time.time()),
            "model": self.model or "",
            "choices": choices,
        }
        if self.usage is not None:
            body["usage"] = storable_body({"usage": self.usage})["usage"]
        if self.system_fingerprint:
            body["system_fingerprint"] = self.system_fingerprint
        return body


def replay_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A completion as the chunks a live stream would have sent (usage chunk last)."""
    base = {
        "id": body.get("id") or "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion.chunk",
        "created": body.get("created") or int(time.time()),
        "model": body.get("model") or "",
    }
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    out: list[dict[str, Any]] = []
    for choice in body.get("choices") or ():
        index = int(choice.get("index") or 0)
        message = choice.get("message") or {}
        out.append(chunk(index, {"role": message.get("role") or "assistant", "content": "", "refusal": None}))
        content = message.get("content")
        if isinstance(content, str):
            for start in range(0, len(content), REPLAY_CHUNK_CHARS):
                out.append(chunk(index, {"content": content[start : start + REPLAY_CHUNK_CHARS]}))
        if message.get("refusal"):
            out.append(chunk(index, {"refusal": message["refusal"]}))
        for position, call in enumerate(message.get("tool_calls") or ()):
            out.append(chunk(index, {"tool_calls": [{"index": position, **call}]}))
        out.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    usage = body.get("usage")
    if usage:
        out.append({**base, "choices": [], "usage": dict(usage)})
    return out


async def iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk
