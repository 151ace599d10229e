"""A deterministic, priced stand-in for a real model: for demos, tests and benchmarks.

The answer is derived from the prompt (same prompt, same answer), usage is real
token counts, and the deployment's ``options`` (see ``config.SimulatedOptions``)
add latency and inject faults: errors, 429 with Retry-After, timeouts, slow and
cut streams. Nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from tokenomy.config import SimulatedOptions
from tokenomy.pipeline.call import new_request_id
from tokenomy.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from tokenomy.providers.base import ChatResult, ChatStream, Deployment, Provider
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages, count_text

# Common English words that are one token each in o200k and cl100k (with their
# leading space), so an answer's length in tokens is its number of words.
_WORDS = (
    " the of and to in is that for it as with was on be by this are or from at an not have"
    " but can all we one will more about which when there their has been if would so what"
    " up out some time them these other into only new its also two may first like any use"
    " over then how our well way even most after made back work year good well long make"
).split(" ")[1:]
_WORDS = [" " + word for word in _WORDS]
_WORDS_PER_CHUNK = 4


class SimulatedProvider(Provider):
    name = "simulated"

    def __init__(self) -> None:
        self._rngs: dict[str, random.Random] = {}
        self._options: dict[str, SimulatedOptions] = {}

    def options(self, deployment: Deployment) -> SimulatedOptions:
        key = deployment.name + "|" + deployment.upstream_model
        opts = self._options.get(key)
        if opts is None:
            opts = self._options[key] = SimulatedOptions(**deployment.options)
            self._rngs[key] = random.Random(opts.seed)
        return opts

    def _fault_roll(self, deployment: Deployment) -> float:
        return self._rngs[deployment.name + "|" + deployment.upstream_model].random()

    async def _before_answer(self, deployment: Deployment, opts: SimulatedOptions) -> None:
        """Latency and injected faults, in the order a real upstream shows them."""
        roll = self._fault_roll(deployment)
        if roll < opts.timeout_rate:
            await asyncio.sleep(deployment.read_timeout_s)
            raise UpstreamTimeout(f"upstream {deployment.name!r} timed out (simulated)")
        roll -= opts.timeout_rate
        if opts.latency_ms:
            await asyncio.sleep(opts.latency_ms / 1000.0)
        if roll < opts.rate_limit_rate:
            retry = f"{opts.retry_after_s:g}"
            raise RateLimited(
                f"upstream {deployment.name!r} answered 429: rate limit reached (simulated)",
                code="upstream_rate_limited",
                headers={"Retry-After": retry},
            )
        roll -= opts.rate_limit_rate
        if roll < opts.error_rate:
            raise UpstreamError(f"upstream {deployment.name!r} answered 500: internal error (simulated)")

    def _check_request(self, deployment: Deployment, body: dict[str, Any], opts: SimulatedOptions) -> None:
        """The request-dependent refusals: prompt too long for the context window, blocked words."""
        messages = body.get("messages") or []
        if opts.context_window is not None:
            tokens = count_messages(messages, deployment.upstream_model, tools=body.get("tools"))
            if tokens > opts.context_window:
                raise ContextWindowExceeded(
                    f"upstream {deployment.name!r} answered 400: maximum context length is "
                    f"{opts.context_window} tokens, the messages have {tokens} (simulated)"
                )
        if opts.blocked_words:
            text = _last_user_text(messages).lower()
            if any(word.lower() in text for word in opts.blocked_words):
                raise ContentPolicyViolation(
                    f"upstream {deployment.name!r} answered 400: rejected by the content policy (simulated)"
                )

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        opts = self.options(deployment)
        await self._before_answer(deployment, opts)
        self._check_request(deployment, body, opts)
        answer = _Answer.build(deployment, body, opts)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_call is not None:
            message["content"] = None
            message["tool_calls"] = [answer.tool_call]
        data = {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": deployment.upstream_model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": answer.finish_reason}
            ],
            "usage": answer.usage.openai_dict(),
            "system_fingerprint": "fp_simulated",
        }
        return ChatResult(body=data, usage=answer.usage)

    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        opts = self.options(deployment)
        await self._before_answer(deployment, opts)
        self._check_request(deployment, body, opts)
        answer = _Answer.build(deployment, body, opts)
        return ChatStream(self._chunks(deployment, answer, opts))

    async def _chunks(
        self, deployment: Deployment, answer: _Answer, opts: SimulatedOptions
    ) -> AsyncIterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": answer.id,
                "object": "chat.completion.chunk",
                "created": answer.created,
                "model": deployment.upstream_model,
                "system_fingerprint": "fp_simulated",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        sent = 0
        delay = opts.chunk_delay_ms / 1000.0

        async def pace() -> None:
            nonlocal sent
            sent += 1
            if opts.cut_stream_after is not None and sent > opts.cut_stream_after:
                raise UpstreamError(f"upstream {deployment.name!r} broke the stream (simulated)")
            if delay:
                await asyncio.sleep(delay)

        await pace()
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        if answer.tool_call is not None:
            await pace()
            yield chunk({"tool_calls": [{"index": 0, **answer.tool_call}]})
        else:
            for piece in answer.pieces():
                await pace()
                yield chunk({"content": piece})
        await pace()
        yield chunk({}, answer.finish_reason)
        yield {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": deployment.upstream_model,
            "system_fingerprint": "fp_simulated",
            "choices": [],
            "usage": answer.usage.openai_dict(),
        }

    async def embeddings(self, deployment: Deployment, body: dict[str, Any]) -> ChatResult:
        opts = self.options(deployment)
        await self._before_answer(deployment, opts)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise InvalidRequest("input must be a string or a non-empty list", param="input")
        dims = int(body.get("dimensions") or 256)
        data = []
        tokens = 0
        for index, text in enumerate(inputs):
            if not isinstance(text, str):
                # token-id arrays are valid OpenAI input: embed their textual form
                text = str(text)
            tokens += count_text(text)
            data.append({"object": "embedding", "index": index, "embedding": _vector(text, dims)})
        usage = Usage(input_tokens=tokens)
        return ChatResult(
            body={
                "object": "list",
                "data": data,
                "model": deployment.upstream_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            usage=usage,
        )


class _Answer:
    """A deterministic answer to one request."""

    __slots__ = ("id", "created", "words", "text", "finish_reason", "usage", "tool_call")

    @classmethod
    def build(cls, deployment: Deployment, body: dict[str, Any], opts: SimulatedOptions) -> _Answer:
        messages = body.get("messages") or []
        prompt = _last_user_text(messages)
        digest = hashlib.blake2b(
            (deployment.upstream_model + "\x00" + prompt).encode(), digest_size=8
        ).digest()
        seed = struct.unpack("<Q", digest)[0]
        wanted = opts.output_tokens if opts.output_tokens is not None else 12 + seed % 48
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        answer = cls()
        answer.id = "chatcmpl-sim" + new_request_id()[4:]
        answer.created = int(time.time())
        answer.tool_call = _forced_tool_call(body, seed)
        count = wanted
        answer.finish_reason = "stop"
        if limit is not None and count > int(limit):
            count = int(limit)
            answer.finish_reason = "length"
        # "Re" then words picked by the prompt's hash: one token each, so ``count`` is exact.
        words = ["Re"] + [_WORDS[(seed >> (i % 48)) % len(_WORDS)] for i in range(1, count)]
        answer.words = words[:count]
        if opts.fixed_answer is not None:
            answer.words = [opts.fixed_answer]
        answer.text = "".join(answer.words)
        if answer.tool_call is not None:
            answer.finish_reason = "tool_calls"
            count = count_text(answer.tool_call["function"]["name"] + answer.tool_call["function"]["arguments"]) + 3
        input_tokens = count_messages(messages, deployment.upstream_model, tools=body.get("tools"))
        answer.usage = Usage(input_tokens=input_tokens, output_tokens=count)
        return answer

    def pieces(self) -> list[str]:
        words = self.words
        return ["".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)]


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
                )
    return ""


def _forced_tool_call(body: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """A tool call when the request forces one (``tool_choice`` required or named)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or choice in (None, "none", "auto"):
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    else:
        name = (tools[0].get("function") or {}).get("name")
    if not name:
        return None
    return {
        "id": f"call_{seed:016x}"[:29],
        "type": "function",
        "function": {"name": name, "arguments": "{}"},
    }


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text`` (same text, same vector)."""
    rng = random.Random(hashlib.blake2b(text.encode(), digest_size=8).digest())
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]
