"""The simulated provider: deterministic, exactly counted, and faulty on demand."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tokenomy.errors import RateLimited, UpstreamError, UpstreamTimeout
from tokenomy.providers.base import Deployment
from tokenomy.providers.simulated import SimulatedProvider
from tokenomy.tokens.counting import count_messages, count_text

ASK = {"messages": [{"role": "user", "content": "How do refunds work?"}]}


def deployment(name: str = "sim", **options: Any) -> Deployment:
    return Deployment(name=name, provider="simulated", upstream_model=name, read_timeout_s=0.2, options=options)


async def test_same_prompt_same_answer_and_exact_usage() -> None:
    provider = SimulatedProvider()
    first = await provider.chat(deployment(), ASK)
    second = await provider.chat(deployment(), ASK)
    other = await provider.chat(deployment(), {"messages": [{"role": "user", "content": "Something else"}]})
    text = first.body["choices"][0]["message"]["content"]
    assert text == second.body["choices"][0]["message"]["content"]
    assert text != other.body["choices"][0]["message"]["content"]
    assert first.usage is not None
    assert first.usage.output_tokens == count_text(text)
    assert first.usage.input_tokens == count_messages(ASK["messages"], "sim")
    assert first.body["usage"]["completion_tokens"] == first.usage.output_tokens


async def test_max_tokens_cuts_with_length() -> None:
    result = await SimulatedProvider().chat(deployment(output_tokens=50), {**ASK, "max_tokens": 5})
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage is not None and result.usage.output_tokens == 5


async def test_stream_matches_json_answer() -> None:
    provider = SimulatedProvider()
    whole = await provider.chat(deployment(), ASK)
    stream = await provider.chat_stream(deployment(), ASK)
    chunks = [chunk async for chunk in stream]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole.body["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and stream.usage == whole.usage
    assert stream.finish_reason == "stop"


async def test_error_rate_one_always_fails() -> None:
    with pytest.raises(UpstreamError):
        await SimulatedProvider().chat(deployment(error_rate=1.0), ASK)


async def test_rate_limit_carries_retry_after() -> None:
    with pytest.raises(RateLimited) as excinfo:
        await SimulatedProvider().chat(deployment(rate_limit_rate=1.0, retry_after_s=3), ASK)
    assert excinfo.value.headers["Retry-After"] == "3"


async def test_timeout_waits_for_the_read_timeout() -> None:
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout):
        await SimulatedProvider().chat(deployment(timeout_rate=1.0), ASK)
    assert time.perf_counter() - started >= 0.2


async def test_error_rate_is_a_rate() -> None:
    provider = SimulatedProvider()
    failures = 0
    for _ in range(400):
        try:
            await provider.chat(deployment("flaky", error_rate=0.25, seed=7), ASK)
        except UpstreamError:
            failures += 1
    assert 60 < failures < 140


async def test_cut_stream_breaks_mid_answer() -> None:
    stream = await SimulatedProvider().chat_stream(deployment(cut_stream_after=2, output_tokens=40), ASK)
    received = []
    with pytest.raises(UpstreamError):
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2 and stream.usage is None


async def test_slow_stream_paces_chunks() -> None:
    stream = await SimulatedProvider().chat_stream(deployment(chunk_delay_ms=20, output_tokens=8), ASK)
    started = time.perf_counter()
    chunks = [chunk async for chunk in stream]
    assert time.perf_counter() - started >= 0.02 * (len(chunks) - 2)


async def test_latency_is_added() -> None:
    started = time.perf_counter()
    await SimulatedProvider().chat(deployment(latency_ms=50), ASK)
    assert time.perf_counter() - started >= 0.05


async def test_forced_tool_call() -> None:
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    result = await SimulatedProvider().chat(deployment(), {**ASK, "tools": tools, "tool_choice": "required"})
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "lookup_order"


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    provider = SimulatedProvider()
    first = await provider.embeddings(deployment(), {"input": ["a", "b"], "dimensions": 32})
    second = await provider.embeddings(deployment(), {"input": "a", "dimensions": 32})
    vector = first.body["data"][0]["embedding"]
    assert vector == second.body["data"][0]["embedding"] and len(vector) == 32
    assert sum(v * v for v in vector) == pytest.approx(1.0)
    assert first.usage is not None and first.usage.input_tokens == 2
