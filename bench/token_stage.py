"""Hot-path cost of the token-policy stage: microseconds per call, policy off and on.

The stage runs alone with a ``next`` that answers at once, so the numbers are
the stage's own work: with no policy (what every call pays), with output caps
only, and with pruning/compression/caching on a short and a 30-turn conversation
(tokenizing the prompt is most of it).

    .venv/bin/python bench/token_stage.py
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conversations import conversation  # noqa: E402
from tokenomy.config import load_settings  # noqa: E402
from tokenomy.models import ModelRegistry  # noqa: E402
from tokenomy.pipeline.call import Call  # noqa: E402
from tokenomy.pipeline.reply import Completion, Reply  # noqa: E402
from tokenomy.pricing.catalog import PriceCatalog  # noqa: E402
from tokenomy.providers import available_providers  # noqa: E402
from tokenomy.tokens.counting import warm_up  # noqa: E402
from tokenomy.tokens.stage import build_token_stage  # noqa: E402

ANSWER = Completion({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})
CLAUDE = {
    "name": "claude",
    "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5", "base_url": "http://127.0.0.1:9"}],
}


async def _next(call: Call) -> Reply:
    return ANSWER


async def measure(tokens: dict[str, Any], body: dict[str, Any], n: int) -> tuple[float, float]:
    settings = load_settings(None, tokens=tokens, models=[CLAUDE], ledger={"enabled": False})
    registry = ModelRegistry.from_settings(settings, PriceCatalog.load_default())
    providers = available_providers({t.deployment.provider for e in registry for t in e.targets}, settings)
    stage = build_token_stage(settings.tokens, registry, providers)
    entry = registry.resolve(body["model"])
    samples = []
    for i in range(n):
        call = Call(kind="chat", body=dict(body), model_asked=body["model"], headers={"x-tokenomy-prompt": "p@1"})
        call.targets, call.baseline_price = entry.targets, entry.primary.price
        start = time.perf_counter()
        await stage(call, _next)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


async def main() -> None:
    warm_up()
    short = {"model": "sim-mini", "messages": [{"role": "user", "content": "Where is my order A-1234?"}]}
    convo = conversation(1, 30)
    long = {"model": "sim-mini", "messages": copy.deepcopy(convo["messages"][:-1]), "tools": convo["tools"]}
    long_claude = {**long, "model": "claude"}
    cases = [
        ("no policy", {}, short),
        ("no policy, 30 turns", {}, long),
        ("output caps", {"default": {"default_max_tokens": 512, "max_tokens_cap": 2048}}, short),
        ("caps + compression, short", {"default": {"max_tokens_cap": 2048, "compression": {}}}, short),
        ("last_n, 30 turns", {"default": {"pruning": {"strategy": "last_n"}}}, long),
        ("budget, 30 turns", {"default": {"pruning": {"strategy": "budget", "budget_tokens": 3000}}}, long),
        ("compression, 30 turns", {"default": {"compression": {}}}, long),
        ("summarize (cached), 30 turns", {"default": {"pruning": {"strategy": "summarize"}}}, long),
        ("anthropic breakpoints, 30 turns", {"default": {"prompt_caching": {}}}, long_claude),
    ]
    print(f"{'case':<34} {'p50 µs':>9} {'p99 µs':>9}")
    for name, tokens, body in cases:
        n = 20_000 if "30 turns" not in name else 300
        p50, p99 = await measure(tokens, body, n)
        print(f"{name:<34} {p50:>9.1f} {p99:>9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
