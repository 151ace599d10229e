"""Context pruning benchmark: long synthetic conversations replayed under each policy, in one run.

Every conversation (``bench/conversations.py``: a long system prompt, tools, tool
calls every third turn) is replayed as a client would send it — one request per
user turn, the whole history each time — through the gateway's real pipeline
(in process, the simulated ``sim-mini`` model, priced as gpt-4o-mini). For each
policy it prints, per conversation, the input tokens sent over the whole replay
and the cost (summaries included), against no pruning measured in the same run,
and the size of the last request.

    .venv/bin/python bench/pruning.py                   # 8 conversations of 30 turns
    .venv/bin/python bench/pruning.py --count 3 --turns 50

Exits non-zero if the summarize policy cuts the input tokens of the 30-turn
conversations by less than 50 % (over the whole replay).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.conversations import conversation, requests_of  # noqa: E402
from tokenomy.app import build_gateway  # noqa: E402
from tokenomy.config import load_settings  # noqa: E402
from tokenomy.pipeline.call import Call  # noqa: E402

POLICIES: dict[str, dict[str, Any] | None] = {
    "none": None,
    "last_n": {"strategy": "last_n", "keep_last_turns": 3},
    "budget": {"strategy": "budget", "budget_tokens": 3000},
    "summarize": {"strategy": "summarize", "keep_last_turns": 3, "summarize_step": 3},  # the defaults
    "summ_4x4": {"strategy": "summarize", "keep_last_turns": 4, "summarize_step": 4},
}
MODEL = "sim-mini"
TARGET_CUT = 0.50
#: The summarizer: simulated, priced as gpt-4o-mini, and made to write long summaries (250 tokens)
#: so the benchmark does not flatter the policy with the simulator's short answers.
SUMMARIZER = {
    "name": "sim-summarizer",
    "deployments": [
        {"provider": "simulated", "model": "sim-summarizer", "price_model": "gpt-4o-mini",
         "options": {"output_tokens": 250}}
    ],
}  # fmt: skip


@dataclass
class Replay:
    input_tokens: int = 0
    cost_usd: float = 0.0
    summary_usd: float = 0.0
    summary_tokens: int = 0  # the summarizer's input and output
    last_input_tokens: int = 0
    requests: int = 0
    stage_ms: list[float] = field(default_factory=list)


async def replay(policy: dict[str, Any] | None, conversations: list[dict[str, Any]]) -> list[Replay]:
    tokens: dict[str, Any] = {"summarizer_model": SUMMARIZER["name"]}
    if policy:
        tokens["default"] = {"pruning": policy}
    settings = load_settings(None, ledger={"enabled": False}, tokens=tokens, models=[SUMMARIZER])
    gateway = build_gateway(settings)
    await gateway.start()
    results = []
    try:
        for convo in conversations:
            result = Replay()
            for messages in requests_of(convo):
                body = {"model": MODEL, "messages": messages, "tools": convo["tools"], "max_tokens": 200}
                call = Call(kind="chat", body=body, model_asked=MODEL)
                await gateway.pipeline.run(call)
                generation = next(item for item in call.trace.items if item.step == "generation")
                result.input_tokens += generation.usage.input_tokens
                result.last_input_tokens = generation.usage.input_tokens
                result.cost_usd += call.trace.total_usd or 0.0
                for item in call.trace.items:
                    if item.step == "summarize":
                        result.summary_usd += item.usd or 0.0
                        result.summary_tokens += item.usage.input_tokens + item.usage.output_tokens
                result.requests += 1
                result.stage_ms.append(call.stage_ms.get("tokens", 0.0))
            results.append(result)
    finally:
        await gateway.stop()
    return results


def _pct(new: float, base: float) -> str:
    return f"{(1 - new / base) * 100:5.1f}%" if base else "  –  "


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="conversations")
    parser.add_argument("--turns", type=int, default=30, help="user turns per conversation")
    args = parser.parse_args(argv)
    conversations = [conversation(seed, args.turns) for seed in range(args.count)]
    started = time.perf_counter()
    results = {name: await replay(policy, conversations) for name, policy in POLICIES.items()}
    elapsed = time.perf_counter() - started
    base = results["none"]
    print(f"{args.count} conversations × {args.turns} turns, model {MODEL} (gpt-4o-mini prices), one request per turn")
    print(f"{'conversation':<12} {'policy':<10} {'input tokens':>13} {'cut':>6} {'cost USD':>10} {'cut':>6}"
          f" {'summarizer tok':>14} {'last request':>13} {'cut':>6}")  # fmt: skip
    for i, convo in enumerate(conversations):
        for name in POLICIES:
            r, b = results[name][i], base[i]
            print(
                f"{convo['id']:<12} {name:<10} {r.input_tokens:>13,} {_pct(r.input_tokens, b.input_tokens):>6}"
                f" {r.cost_usd:>10.5f} {_pct(r.cost_usd, b.cost_usd):>6} {r.summary_tokens:>14,}"
                f" {r.last_input_tokens:>13,} {_pct(r.last_input_tokens, b.last_input_tokens):>6}"
            )
    print()
    print(f"{'total':<12} {'policy':<10} {'input tokens':>13} {'cut':>6} {'cost USD':>10} {'cut':>6}"
          f" {'stage ms p50':>13} {'stage ms max':>13}")  # fmt: skip
    for name in POLICIES:
        tokens = sum(r.input_tokens for r in results[name])
        cost = sum(r.cost_usd for r in results[name])
        base_tokens = sum(r.input_tokens for r in base)
        base_cost = sum(r.cost_usd for r in base)
        timings = sorted(ms for r in results[name] for ms in r.stage_ms)
        p50 = timings[len(timings) // 2] if timings else 0.0
        print(
            f"{'all':<12} {name:<10} {tokens:>13,} {_pct(tokens, base_tokens):>6} {cost:>10.5f}"
            f" {_pct(cost, base_cost):>6} {p50:>13.3f} {timings[-1] if timings else 0.0:>13.3f}"
        )
    base_tokens = sum(r.input_tokens for r in base)
    summarized = results["summarize"]
    summarize_cut = 1 - sum(r.input_tokens for r in summarized) / base_tokens
    with_summarizer = 1 - sum(r.input_tokens + r.summary_tokens for r in summarized) / base_tokens
    last_cut = 1 - sum(r.last_input_tokens for r in summarized) / sum(r.last_input_tokens for r in base)
    print(
        f"\nsummarize: input tokens cut by {summarize_cut:.1%} over the whole replay (target ≥ {TARGET_CUT:.0%}),"
        f" {with_summarizer:.1%} counting the summarizer's own tokens, {last_cut:.1%} on the last request;"
        f" cost cut {_pct(sum(r.cost_usd for r in summarized), sum(r.cost_usd for r in base)).strip()}"
        f" (summaries included). {elapsed:.1f} s"
    )
    if args.turns >= 30 and summarize_cut < TARGET_CUT:
        print("FAIL: summarize policy below target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
