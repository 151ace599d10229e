"""Deterministic synthetic multi-turn conversations with tool calls, for pruning tests and benchmarks.

``conversation(seed, turns)`` builds one OpenAI-shaped chat: a long system
prompt, two tools, and ``turns`` turns; every third turn the assistant calls a
tool (sometimes two in parallel) and gets JSON results before answering. The
same seed always gives the same conversation (``random.Random(seed)``), so
benchmark numbers are comparable across runs and machines.

    python bench/conversations.py --count 3 --turns 30 > conversations.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

_WORDS = (
    "order refund invoice shipping address customer account password reset delivery tracking warranty "
    "product replacement subscription billing payment card charge receipt discount coupon return label "
    "package courier warehouse stock backorder email phone support ticket escalation policy days week "
    "status update confirm cancel change upgrade downgrade plan monthly annual trial feature setting "
    "the a to of and in for with on is was will can please thanks hello could would should have has "
    "when where why how what which after before during within about between under over again still"
).split()

SYSTEM_PROMPT_PARAGRAPHS = 12

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order by its id: status, items, shipping and payment details.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "The order id, e.g. A-1234."}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_docs",
            "description": "Search the help-centre articles and return the best passages.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["query"],
            },
        },
    },
]


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng, 8, 18) for _ in range(sentences))


def system_prompt(seed: int = 0) -> str:
    rng = random.Random(f"system-{seed}")
    rules = [f"{i + 1}. {_paragraph(rng, 4)}" for i in range(SYSTEM_PROMPT_PARAGRAPHS)]
    return "You are the support assistant of an online shop. Follow these rules.\n\n" + "\n\n".join(rules)


def conversation(seed: int, turns: int = 30, *, tools: bool = True) -> dict[str, Any]:
    """One conversation: ``{"id", "tools", "messages"}``; it ends with an assistant answer."""
    rng = random.Random(seed)
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(seed % 3)}]
    call_number = 0
    for turn in range(turns):
        messages.append({"role": "user", "content": _paragraph(rng, rng.randint(2, 4))})
        if tools and turn % 3 == 2:
            calls = []
            for _ in range(1 if rng.random() < 0.7 else 2):
                call_number += 1
                name = rng.choice(["get_order", "search_docs"])
                arguments = (
                    {"order_id": f"A-{rng.randint(1000, 9999)}"}
                    if name == "get_order"
                    else {"query": " ".join(rng.choice(_WORDS) for _ in range(4)), "limit": 3}
                )
                calls.append(
                    {
                        "id": f"call_{seed}_{call_number}",
                        "type": "function",
                        "function": {"name": name, "arguments": json.dumps(arguments)},
                    }
                )
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            for call in calls:
                result = {
                    "ok": True,
                    "passages": [_paragraph(rng, 3) for _ in range(rng.randint(2, 4))],
                    "status": rng.choice(["shipped", "pending", "delivered", "refunded"]),
                }
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
        messages.append({"role": "assistant", "content": _paragraph(rng, rng.randint(5, 10))})
    return {"id": f"conv-{seed}", "tools": TOOLS if tools else [], "messages": messages}


def requests_of(convo: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The message lists a client sends while having ``convo``: one per user turn, history included."""
    messages = convo["messages"]
    out = []
    for i, message in enumerate(messages):
        if message["role"] == "user":
            out.append(messages[: i + 1])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args(argv)
    for seed in range(args.count):
        sys.stdout.write(json.dumps(conversation(seed, args.turns)) + "\n")


if __name__ == "__main__":
    main()
