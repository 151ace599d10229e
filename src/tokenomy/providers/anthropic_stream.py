"""Streams, translated between Anthropic Messages events and OpenAI chat-completion chunks.

Both translators are small state machines fed one event (or chunk) at a time
that return what to emit; they do no I/O, so the provider and the HTTP layer
decide how bytes move.

* ``AnthropicToOpenAIStream`` — an Anthropic upstream's SSE events → OpenAI
  ``chat.completion.chunk`` dicts (the gateway's internal stream).
* ``OpenAIToAnthropicStream`` — the internal stream → the exact Anthropic event
  sequence, for clients of ``/v1/messages``: ``message_start``, then per block
  ``content_block_start`` / ``content_block_delta``… / ``content_block_stop``
  (a ``ping`` after the first start, as Anthropic does), then ``message_delta``
  (stop reason, cumulative usage) and ``message_stop``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from tokenomy.errors import UpstreamError
from tokenomy.providers.anthropic_response import anthropic_error_body, finish_reason_for, stop_reason_for
from tokenomy.providers.usage import Usage

#: an Anthropic SSE event: its name and its data object
Event = tuple[str, dict[str, Any]]


def encode_sse(event: str, data: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event on the wire (the event name repeats the data's ``type``)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class AnthropicToOpenAIStream:
    """Turns Anthropic stream events into OpenAI chunks.

    Feed each event's parsed data; ``feed`` returns the chunks to pass on
    (often none). The first chunk carries ``role: assistant``; tool calls stream
    as OpenAI does (``id``/``name`` first, then ``arguments`` fragments under the
    same ``index``); thinking streams as ``reasoning_content``, its signature (and
    redacted thinking) as ``thinking_blocks`` deltas. ``message_delta``
    yields the chunk with ``finish_reason``; ``message_stop`` a usage-only chunk
    (``choices: []``) combining input usage from ``message_start`` with the
    cumulative counts of ``message_delta``. An ``error`` event raises
    ``UpstreamError``. ``finished`` tells whether ``message_stop`` arrived: a
    stream that ends without it was cut.
    """

    def __init__(self, model: str | None = None) -> None:
        self.model = model
        self.id = ""
        self.created = int(time.time())
        self.finished = False
        self.usage: Usage | None = None
        self._started = False
        self._raw_usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}  # Anthropic block index → OpenAI tool_calls index
        self._finish_sent = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "error":
            error = event.get("error") or {}
            raise UpstreamError(f"Anthropic stream error ({error.get('type')}): {error.get('message')}")
        if kind == "ping" or self.finished:
            return []
        if kind == "message_start":
            return self._message_start(event.get("message") or {})
        if not self._started:
            raise UpstreamError(f"Anthropic stream sent {kind!r} before message_start")
        if kind == "content_block_start":
            return self._block_start(int(event.get("index", 0)), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(event.get("index", 0)), event.get("delta") or {})
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_stop":
            self.finished = True
            chunks = [] if self._finish_sent else [self._chunk({}, "stop")]
            self.usage = Usage.from_anthropic(self._raw_usage) or Usage()
            usage_chunk = self._chunk({})
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self.usage.openai_dict()
            return [*chunks, usage_chunk]
        return []  # content_block_stop, and event types added after this was written

    def _message_start(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        self._started = True
        self.id = message.get("id") or self.id
        self.model = self.model or message.get("model")
        self._raw_usage = dict(message.get("usage") or {})
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "thinking" and block.get("thinking"):
            return [self._chunk({"reasoning_content": block["thinking"]})]
        if kind == "redacted_thinking":
            return [self._chunk({"thinking_blocks": [dict(block)]})]
        if kind != "tool_use":
            return []
        tool_index = self._tool_index[index] = len(self._tool_index)
        arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        call = {
            "index": tool_index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": arguments},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [self._chunk({"reasoning_content": delta["thinking"]})]
        if kind == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            call = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "signature_delta" and delta.get("signature"):
            # the signature closes the thinking streamed as reasoning_content; Anthropic needs it back next turn
            block = {"type": "thinking", "signature": delta["signature"]}
            return [self._chunk({"thinking_blocks": [block]})]
        return []  # citations_delta: no OpenAI form in a stream

    def _message_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        # message_delta usage is cumulative: present fields replace message_start's
        for key, value in (event.get("usage") or {}).items():
            if value is not None:
                self._raw_usage[key] = value
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        if not stop_reason or self._finish_sent:
            return []
        self._finish_sent = True
        return [self._chunk({}, finish_reason_for(stop_reason))]

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }


@dataclass(slots=True)
class _OpenBlock:
    index: int
    kind: str  # "text" | "thinking" | "redacted_thinking" | "tool_use"


class OpenAIToAnthropicStream:
    """Turns OpenAI chunks into Anthropic stream events ``(event_name, data)``.

    Call ``feed(chunk)`` per chunk and ``close()`` once the OpenAI stream has
    ended; each returns the events to send, in order. ``start()`` sends
    ``message_start`` early (e.g. before the first upstream byte) and is implied
    by the first ``feed``.

    ``message_start`` must carry input usage before any is known (OpenAI reports
    usage last): pass ``input_tokens`` (the gateway's estimate) or accept 0; the
    final ``message_delta`` carries the upstream's real, cumulative counts
    (input, cache reads/writes, output), which Anthropic's SDKs take as final.

    Blocks are sequential, as Anthropic streams them. An OpenAI upstream that
    interleaves fragments of several tool calls gets each late fragment sent as
    a delta for its (already stopped) block rather than lost.
    """

    def __init__(self, model: str, *, message_id: str | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.message_id = message_id or f"msg_{uuid.uuid4().hex[:24]}"
        self.input_tokens = input_tokens
        self.stop_reason: str | None = None
        self.usage: Usage | None = None
        self._started = False
        self._closed = False
        self._pinged = False
        self._next_index = 0
        self._open: _OpenBlock | None = None
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool_calls index → Anthropic block index

    def start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": self.input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events = self.start()
        if self._closed:
            return events
        if chunk.get("usage"):
            self.usage = Usage.from_openai(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # /v1/messages never asks for n > 1
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                events += self._ensure_open("thinking")
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            for block in delta.get("thinking_blocks") or ():
                events += self._thinking_block(block)
            text = delta.get("content") or delta.get("refusal")
            if text:
                events += self._ensure_open("text")
                events.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = stop_reason_for(choice["finish_reason"])
                events += self._close_open()
        return events

    def close(self, usage: Usage | None = None) -> list[Event]:
        """Finish the message: stop the open block, then ``message_delta`` and ``message_stop``.

        ``usage`` overrides what the chunks reported (e.g. the ``ChatStream``'s).
        """
        events = self.start()
        if self._closed:
            return events
        events += self._close_open()
        self._closed = True
        final = usage or self.usage or Usage()
        delta_usage = {
            "input_tokens": final.uncached_input_tokens,
            "cache_creation_input_tokens": final.cache_write_tokens + final.cache_write_1h_tokens,
            "cache_read_input_tokens": final.cached_tokens,
            "output_tokens": final.output_tokens,
        }
        delta = {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": delta_usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    @staticmethod
    def error_event(status: int, message: str) -> Event:
        """The in-band ``error`` event for a stream that broke after it started."""
        return ("error", anthropic_error_body(status, message))

    def _tool_call(self, call: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        openai_index = int(call.get("index", 0))
        function = call.get("function") or {}
        block_index = self._tool_blocks.get(openai_index)
        if block_index is None:
            events += self._close_open()
            block_index = self._tool_blocks[openai_index] = self._next_index
            block = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name") or "",
                "input": {},
            }
            events += self._open_block("tool_use", block)
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": block_index, "delta": delta})
            )
        return events

    def _thinking_block(self, block: dict[str, Any]) -> list[Event]:
        """A signature ends the open thinking block; redacted thinking is a block of its own."""
        if block.get("type") == "redacted_thinking":
            events = self._close_open() + self._open_block("redacted_thinking", dict(block))
            return events + self._close_open()
        if not block.get("signature"):
            return []
        events = self._ensure_open("thinking")
        events.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
        return events

    def _ensure_open(self, kind: str) -> list[Event]:
        if self._open is not None and self._open.kind == kind:
            return []
        events = self._close_open()
        initial = (
            {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
        )
        return events + self._open_block(kind, initial)

    def _open_block(self, kind: str, block: dict[str, Any]) -> list[Event]:
        self._open = _OpenBlock(self._next_index, kind)
        self._next_index += 1
        events: list[Event] = [
            ("content_block_start", {"type": "content_block_start", "index": self._open.index, "content_block": block})
        ]
        if not self._pinged:
            self._pinged = True
            events.append(("ping", {"type": "ping"}))
        return events

    def _close_open(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open = self._open.index, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _delta(self, delta: dict[str, Any]) -> Event:
        assert self._open is not None
        return ("content_block_delta", {"type": "content_block_delta", "index": self._open.index, "delta": delta})
