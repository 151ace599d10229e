"""A fake Anthropic Messages API speaking Anthropic's documented wire format.

``POST /v1/messages`` with Anthropic's header checks (``x-api-key``,
``anthropic-version``), body validation (required fields, unknown fields
refused, roles alternate, first message from the user, every ``tool_result``
answering a ``tool_use`` of the previous turn and vice versa), JSON answers and
the SSE event sequence (``message_start``, ``content_block_*``, ``ping``,
``message_delta``, ``message_stop``), and Anthropic's error bodies
``{"type": "error", "error": {...}, "request_id": ...}``.

Answers are deterministic: ``"echo: <last user text>"``; ``"tool said: <text>"``
after a tool result; a ``tool_use`` of the weather tool (or the first tool) when
tools are given and the prompt mentions weather or ``tool_choice`` forces one; a
thinking block first when ``thinking`` is enabled. ``max_tokens`` (counted in
words) and ``stop_sequences`` cut the answer as Anthropic would.

Prompt caching: the prefix up to each ``cache_control`` breakpoint (tools, then
system, then messages) is a cache entry keyed by its content (where the marks
sit does not matter). A request reads the longest cached prefix among its
breakpoints and writes the rest up to its last breakpoint, so usage reports
``cache_creation_input_tokens`` (split 5m/1h in ``cache_creation``) and
``cache_read_input_tokens``. Tokens are words. Breakpoints whose prefix is under
``min_cacheable_tokens`` (default 0) are ignored, as the real API ignores those
under the model's minimum.

Strictness: the current API merges consecutive same-role turns; this fake
rejects them (``strict_alternation=True``, as the API did until 2024) so tests
prove the gateway sends alternating turns.

Failures, injected by ``[[fail:KIND]]`` in the last user text or queued with
``inject(KIND)``: ``500`` (api_error), ``529`` (overloaded_error), ``429``
(rate_limit_error, ``retry-after: 7``), ``400``, ``malformed`` (a 200 body that
is not JSON, or a stream event that is not), ``cut-stream`` (drops the
connection mid-stream), ``truncate-stream`` (ends cleanly before
``message_stop``), ``error-event`` (an in-band ``error`` event mid-stream).

Every request is kept in ``requests`` (path, headers, JSON body).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import re
import uuid
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.background import BackgroundServer

API_VERSIONS = ("2023-06-01", "2023-01-01")
ALLOWED_FIELDS = {
    "model", "messages", "max_tokens", "system", "temperature", "top_p", "top_k", "stop_sequences", "stream",
    "tools", "tool_choice", "metadata", "thinking", "output_config", "service_tier", "container", "mcp_servers",
    "context_management", "inference_geo",
}  # fmt: skip
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_FAIL = re.compile(r"\[\[fail:([\w-]+)\]\]")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                500: "api_error", 529: "overloaded_error"}  # fmt: skip


class RequestInvalid(Exception):
    """A request Anthropic would refuse with 400 invalid_request_error."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def _words(value: Any) -> int:
    """Tokens, as the fake counts them: whitespace-separated words of any text or JSON."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return len(text.split())


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        _text_of(b.get("content") or "") if b.get("type") == "tool_result" else b.get("text", "")
        for b in content or ()
        if isinstance(b, dict)
    ).strip()


def validate(body: Any, *, strict_alternation: bool = True) -> None:
    """Raise ``RequestInvalid`` with Anthropic's message for what Anthropic refuses."""
    if not isinstance(body, dict):
        raise RequestInvalid("body: Input should be a valid dictionary")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise RequestInvalid(f"{name}: Field required")
    extra = sorted(set(body) - ALLOWED_FIELDS)
    if extra:
        raise RequestInvalid(f"{extra[0]}: Extra inputs are not permitted")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestInvalid("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise RequestInvalid(f"{name}: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise RequestInvalid("stop_sequences: Input should be a valid list of strings")
    if set(body.get("metadata") or {}) - {"user_id"}:
        raise RequestInvalid("metadata: Extra inputs are not permitted")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for j, block in enumerate(system):
            _check_block(block, f"system.{j}", ("text",))
    _check_tools(body.get("tools"), body.get("tool_choice"))
    _check_messages(body["messages"], strict_alternation)
    _check_thinking(body.get("thinking"), max_tokens, body["messages"])
    breakpoints = sum(1 for _ in _cache_breakpoints(body))
    if breakpoints > 4:
        raise RequestInvalid(f"A maximum of 4 blocks with cache_control may be provided. Found {breakpoints}.")


def _check_tools(tools: Any, choice: Any) -> None:
    names: set[str] = set()
    for i, tool in enumerate(tools or ()):
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,128}", str(tool.get("name", ""))):
            raise RequestInvalid(f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise RequestInvalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
        _check_cache_control(tool, f"tools.{i}")
        names.add(tool["name"])
    if choice is not None:
        kind = choice.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise RequestInvalid("tool_choice: Input tag does not match any of the expected tags")
        if kind == "tool" and choice.get("name") not in names:
            raise RequestInvalid(f"tool_choice: tool {choice.get('name')!r} not found in tools")
        if kind != "none" and not names:
            raise RequestInvalid("tool_choice may only be specified while providing tools.")
        if kind == "none" and "disable_parallel_tool_use" in choice:
            raise RequestInvalid("tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted")


def _check_messages(messages: Any, strict_alternation: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestInvalid("messages: at least one message is required")
    previous_tool_uses: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise RequestInvalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise RequestInvalid('messages: first message must use the "user" role')
        if strict_alternation and i and messages[i - 1].get("role") == role:
            raise RequestInvalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        content = msg.get("content")
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if not (isinstance(content, (str, list)) and (content or final_assistant)):
            raise RequestInvalid(
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        blocks: list[Any] = content if isinstance(content, list) else []
        allowed = (
            ("text", "image", "document", "tool_result")
            if role == "user"
            else ("text", "tool_use", "thinking", "redacted_thinking")
        )
        seen_other = False
        results: set[str] = set()
        for j, block in enumerate(blocks):
            _check_block(block, f"messages.{i}.content.{j}", allowed)
            if block["type"] == "tool_result":
                if seen_other:
                    raise RequestInvalid(
                        f"messages.{i}.content.{j}: tool_result blocks must come before any other content "
                        "in a user message"
                    )
                if block.get("tool_use_id") not in previous_tool_uses:
                    raise RequestInvalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
                results.add(block["tool_use_id"])
            else:
                seen_other = True
        missing = previous_tool_uses - results
        if missing:
            raise RequestInvalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(sorted(missing))}. Each `tool_use` block must have a corresponding `tool_result` "
                "block in the next message."
            )
        previous_tool_uses = {b["id"] for b in blocks if b.get("type") == "tool_use"} if role == "assistant" else set()


def _check_block(block: Any, where: str, allowed: tuple[str, ...]) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in allowed:
        raise RequestInvalid(f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags")
    if kind == "text" and not (isinstance(block.get("text"), str) and block["text"]):
        raise RequestInvalid(f"{where}.text: text content blocks must be non-empty")
    if kind in ("image", "document"):
        source = block.get("source") or {}
        if source.get("type") == "base64":
            media_ok = source.get("media_type") in (IMAGE_TYPES if kind == "image" else ("application/pdf",))
            if not media_ok or not source.get("data"):
                raise RequestInvalid(f"{where}.source.base64.media_type: Input should be a supported media type")
        elif not (source.get("type") == "url" and str(source.get("url", "")).startswith(("http://", "https://"))):
            raise RequestInvalid(f"{where}.source: Input tag does not match any of the expected tags")
    if kind == "tool_use" and not (block.get("id") and block.get("name") and isinstance(block.get("input"), dict)):
        raise RequestInvalid(f"{where}.tool_use: id, name and input (an object) are required")
    if kind == "thinking" and not block.get("signature"):
        raise RequestInvalid(f"{where}.thinking.signature: Field required")
    if kind == "tool_result" and isinstance(block.get("content"), list):
        for k, inner in enumerate(block["content"]):
            _check_block(inner, f"{where}.content.{k}", ("text", "image"))
    _check_cache_control(block, where)


def _check_cache_control(block: dict[str, Any], where: str) -> None:
    control = block.get("cache_control")
    if control is not None and (control.get("type") != "ephemeral" or control.get("ttl", "5m") not in ("5m", "1h")):
        raise RequestInvalid(f"{where}.cache_control: Input should be {{'type': 'ephemeral', 'ttl': '5m' | '1h'}}")


def _check_thinking(thinking: Any, max_tokens: int, messages: list[dict[str, Any]]) -> None:
    if not thinking or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise RequestInvalid("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if budget >= max_tokens:
        raise RequestInvalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    # In a tool-use loop the assistant turn being answered must bring back its (signed) thinking.
    last = messages[-1].get("content")
    if len(messages) >= 2 and isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        first = messages[-2]["content"][0] if isinstance(messages[-2]["content"], list) else {"type": "text"}
        if first.get("type") not in ("thinking", "redacted_thinking"):
            raise RequestInvalid(
                f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )


def _prompt_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Everything Anthropic caches, in its cache order: tools, system, then message blocks."""
    parts: list[dict[str, Any]] = list(body.get("tools") or ())
    system = body.get("system")
    parts += [{"type": "text", "text": system}] if isinstance(system, str) else list(system or ())
    for msg in body["messages"]:
        content = msg["content"]
        parts += [{"type": "text", "text": content}] if isinstance(content, str) else content
    return parts


def _cache_breakpoints(body: dict[str, Any]) -> Any:
    for position, part in enumerate(_prompt_parts(body)):
        if part.get("cache_control"):
            yield position, part["cache_control"].get("ttl", "5m")


class FakeAnthropic(BackgroundServer):
    label = "fake-anthropic"

    def __init__(
        self, *, api_key: str | None = "sk-ant-fake", strict_alternation: bool = True, min_cacheable_tokens: int = 0
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.strict_alternation = strict_alternation
        self.min_cacheable_tokens = min_cacheable_tokens
        self.cache_events: list[dict[str, int]] = []
        self.requests: list[dict[str, Any]] = []
        self.failures: collections.deque[str] = collections.deque()
        self._cache: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last_request(self) -> dict[str, Any]:
        return self.requests[-1]

    def inject(self, kind: str, times: int = 1) -> None:
        """Make the next ``times`` requests fail as ``kind`` (see the module docstring)."""
        self.failures.extend([kind] * times)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        return app

    # -- the endpoint -------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        if self.api_key and request.headers.get("x-api-key") != self.api_key:
            return error_response(401, "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if not version:
            return error_response(400, "anthropic-version: header is required")
        if version not in API_VERSIONS:
            return error_response(400, f"anthropic-version: invalid version {version!r}")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "There was an issue with the format of your request: invalid JSON")
        self.requests.append(
            {"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        )
        try:
            validate(body, strict_alternation=self.strict_alternation)
        except RequestInvalid as exc:
            return error_response(400, str(exc))
        last_text = _text_of(body["messages"][-1]["content"])
        match = _FAIL.search(last_text)
        failure = self.failures.popleft() if self.failures else (match[1] if match else None)
        if failure in ("500", "529", "400"):
            status = int(failure)
            message = {500: "Internal server error", 529: "Overloaded", 400: "Injected invalid request"}[status]
            return error_response(status, message)
        if failure == "429":
            return error_response(
                429, "Number of request tokens has exceeded your per-minute rate limit", {"retry-after": "7"}
            )
        message = self._answer(body)
        if body.get("stream"):
            return await self._stream(request, message, failure)
        if failure == "malformed":
            return web.Response(
                body=b'{"id": "msg_01", "type": "message", "content": [', content_type="application/json"
            )
        return web.Response(body=orjson.dumps(message), content_type="application/json", headers=self._headers())

    def _headers(self) -> dict[str, str]:
        return {"request-id": f"req_{uuid.uuid4().hex[:24]}"}

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        text = _text_of(last["content"])
        content: list[dict[str, Any]] = []
        thinking = body.get("thinking") or {}
        if thinking.get("type") == "enabled":
            signature = hashlib.sha256(text.encode()).hexdigest()[:32]
            content.append({"type": "thinking", "thinking": f"The user said: {text}", "signature": f"sig_{signature}"})
        tools = body.get("tools") or []
        choice = (body.get("tool_choice") or {}).get("type", "auto")
        after_tool = isinstance(last["content"], list) and any(b.get("type") == "tool_result" for b in last["content"])
        wants_tool = (
            tools and choice != "none" and not after_tool and ("weather" in text.lower() or choice in ("any", "tool"))
        )
        stop_reason, stop_sequence = "end_turn", None
        if wants_tool:
            named = (body.get("tool_choice") or {}).get("name")
            tool = next((t for t in tools if t["name"] == named), None) or next(
                (t for t in tools if "weather" in t["name"]), tools[0]
            )
            if choice == "auto":
                content.append({"type": "text", "text": "Let me check the weather."})
            city = re.search(r"\bin ([A-Z][a-z]+)", text)
            tool_input = {"location": city[1] if city else "Paris"}
            content.append(
                {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool["name"], "input": tool_input}
            )
            stop_reason = "tool_use"
        else:
            answer = ("tool said: " if after_tool else "echo: ") + text
            if "[[refuse]]" in text:
                answer, stop_reason = "I can't help with that.", "refusal"
            for seq in body.get("stop_sequences") or ():
                if seq and seq in answer:
                    answer, stop_reason, stop_sequence = answer[: answer.index(seq)], "stop_sequence", seq
                    break
            words = answer.split(" ")
            if len(words) > body["max_tokens"]:
                words, stop_reason, stop_sequence = words[: body["max_tokens"]], "max_tokens", None
            content.append({"type": "text", "text": " ".join(words)})
        output = sum(_words(b.get("text") or b.get("thinking") or b.get("input") or "") for b in content)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {**self._input_usage(body), "output_tokens": max(output, 1)},
        }

    def _input_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        parts = _prompt_parts(body)
        sizes = [_words(p.get("text") if p.get("type") == "text" else p) for p in parts]
        total = sum(sizes)
        # a breakpoint whose prefix is under the minimum is ignored, as Anthropic does
        breakpoints = [
            (pos, ttl) for pos, ttl in _cache_breakpoints(body) if sum(sizes[: pos + 1]) >= self.min_cacheable_tokens
        ]
        read = write_5m = write_1h = 0
        if breakpoints:
            # The cache key is the prefix's content: where the marks sit does not change it.
            plain = [{k: v for k, v in part.items() if k != "cache_control"} for part in parts]
            keys = [
                (pos, ttl, hashlib.sha256(orjson.dumps([body["model"], plain[: pos + 1]])).hexdigest())
                for pos, ttl in breakpoints
            ]
            # read the longest cached prefix; write from there to the last breakpoint
            hit = max((pos for pos, _, key in keys if key in self._cache), default=-1)
            read = sum(sizes[: hit + 1])
            last = keys[-1][0]
            last_1h = max((pos for pos, ttl, _ in keys if ttl == "1h" and pos > hit), default=hit)
            write_1h = sum(sizes[hit + 1 : last_1h + 1])
            write_5m = sum(sizes[max(hit, last_1h) + 1 : last + 1])
            self._cache.update(key for _, _, key in keys)
            self.cache_events.append({"read": read, "write_5m": write_5m, "write_1h": write_1h, "hit": hit})
        return {
            "input_tokens": total - read - write_5m - write_1h,
            "cache_creation_input_tokens": write_5m + write_1h,
            "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
            "service_tier": "standard",
        }

    async def _stream(self, request: web.Request, message: dict[str, Any], failure: str | None) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", **self._headers()}
        )
        await response.prepare(request)

        async def send(data: dict[str, Any]) -> None:
            await response.write(b"event: " + data["type"].encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        await send({"type": "message_start", "message": start})
        if failure == "malformed":
            await response.write(b'event: content_block_start\ndata: {"type": "content_bl\n\n')
            await response.write_eof()
            return response
        for index, block in enumerate(message["content"]):
            await self._send_block(send, index, block)
            if index == 0:
                await send({"type": "ping"})
        if failure == "cut-stream":
            await asyncio.sleep(0.01)  # let the client read what was sent before the drop
            request.transport.close()  # type: ignore[union-attr]
            return response
        if failure == "error-event":
            await send({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        if failure in ("error-event", "truncate-stream"):
            await response.write_eof()
            return response
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
        final_usage = {
            k: usage[k]
            for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }
        await send({"type": "message_delta", "delta": delta, "usage": final_usage})
        await send({"type": "message_stop"})
        await response.write_eof()
        return response

    @staticmethod
    async def _send_block(send: Any, index: int, block: dict[str, Any]) -> None:
        kind = block["type"]
        if kind == "text":
            await send({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            words = block["text"].split(" ")
            for i in range(0, len(words), 2):
                piece = " ".join(words[i : i + 2])
                delta = {"type": "text_delta", "text": piece if i == 0 else " " + piece}
                await send({"type": "content_block_delta", "index": index, "delta": delta})
        elif kind == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            await send({"type": "content_block_start", "index": index, "content_block": start})
            delta = {"type": "thinking_delta", "thinking": block["thinking"]}
            await send({"type": "content_block_delta", "index": index, "delta": delta})
            delta = {"type": "signature_delta", "signature": block["signature"]}
            await send({"type": "content_block_delta", "index": index, "delta": delta})
        elif kind == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            await send({"type": "content_block_start", "index": index, "content_block": start})
            arguments = orjson.dumps(block["input"]).decode()
            third = max(1, len(arguments) // 3)
            for piece in ("", arguments[:third], arguments[third : 2 * third], arguments[2 * third :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                await send({"type": "content_block_delta", "index": index, "delta": delta})
        await send({"type": "content_block_stop", "index": index})
