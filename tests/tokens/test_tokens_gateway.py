"""Token policies through a real gateway: output caps, cap reports, prompt versions, savings in spend."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai

from bench.conversations import conversation
from tests.harness import GatewayServer
from tokenomy.observe.spend_report import caps_command, spend_command
from tokenomy.store.ledger import LedgerRow

SIM_LONG = {
    "name": "sim-long",
    "deployments": [
        {"provider": "simulated", "model": "sim-long", "price_model": "gpt-4o-mini", "options": {"output_tokens": 50}}
    ],
}

CAPS = {
    "default": {"default_max_tokens": 20, "max_tokens_cap": 30},
    "features": {"essay": {"max_tokens_cap": 1000}},
}


def rows_by_id(server: GatewayServer) -> dict[str, LedgerRow]:
    server.flush_ledger()
    assert server.gateway.ledger is not None
    return {row.request_id: row for row in server.run_coro(server.gateway.ledger.fetch())}


def test_output_caps_default_and_clamp_and_the_ledger_says_when_answers_hit_them(
    start_gateway: Callable[..., GatewayServer],
) -> None:
    server = start_gateway(models=[SIM_LONG], tokens=CAPS)
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    ask = [{"role": "user", "content": "Tell me everything."}]

    def create(request_id: str, feature: str = "chat", **kwargs: Any) -> Any:
        headers = {"x-request-id": request_id, "x-tokenomy-feature": feature}
        return sdk.chat.completions.create(model="sim-long", messages=ask, extra_headers=headers, **kwargs)

    absent = create("cap-default")
    assert absent.usage is not None and absent.usage.completion_tokens == 20
    assert absent.choices[0].finish_reason == "length"
    clamped = create("cap-clamp", max_tokens=100)
    assert clamped.usage is not None and clamped.usage.completion_tokens == 30
    own = create("cap-own", max_tokens=10)  # below the cap: the client's own limit stands
    assert own.usage is not None and own.usage.completion_tokens == 10
    essay = create("cap-essay", feature="essay", max_completion_tokens=500)  # a more specific policy
    assert essay.usage is not None and essay.usage.completion_tokens == 50 and essay.choices[0].finish_reason == "stop"
    stream = create("cap-stream", stream=True, max_tokens=400)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    # Anthropic clients always send max_tokens: it is clamped too
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    message = client.messages.create(
        model="sim-long", max_tokens=200, messages=ask, extra_headers={"x-request-id": "cap-anthropic"}
    )
    assert message.usage.output_tokens == 30 and message.stop_reason == "max_tokens"

    rows = rows_by_id(server)
    got = {rid: (rows[rid].output_cap, rows[rid].finish_reason) for rid in rows}
    assert got == {
        "cap-default": (20, "length"),
        "cap-clamp": (30, "length"),
        "cap-own": (None, "length"),
        "cap-essay": (None, "stop"),
        "cap-stream": (30, "length"),
        "cap-anthropic": (30, "length"),
    }
    report = json.loads(server.run_coro(caps_command(server.settings.ledger, "feature", None, "json")))
    chat = next(g for g in report["groups"] if g["group"] == "chat")
    assert chat["requests"] == 4 and chat["capped"] == 3 and chat["cap_hits"] == 3 and chat["hit_rate"] == 1.0
    assert chat["length_total"] == 4  # cap-own stopped at the client's own limit
    table = server.run_coro(caps_command(server.settings.ledger, "feature", None, "table"))
    assert "Hit rate" in table and "100.0%" in table


def test_prompt_versions_reach_the_ledger_and_spend_by_prompt(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway()
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    for version, system in (("support@1", "Be brief."), ("support@2", "Be brief. " * 200)):
        for _ in range(2):
            sdk.chat.completions.create(
                model="sim-mini",
                messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
                extra_headers={"x-tokenomy-prompt": version},
            )
    server.flush_ledger()
    document = json.loads(server.run_coro(spend_command(server.settings.ledger, "prompt", None, "json")))
    groups = {g["group"]: g for g in document["groups"]}
    assert groups["support@2"]["requests"] == 2
    assert groups["support@2"]["input_tokens"] > 10 * groups["support@1"]["input_tokens"]  # the bloated version
    assert groups["support@2"]["cost_usd"] > groups["support@1"]["cost_usd"]


def test_pruning_savings_are_in_the_response_the_ledger_and_spend(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(
        tokens={
            "summarizer_model": "sim-mini",  # not `auto`: that would pick local-smollm2 where it is installed
            "features": {
                "support": {
                    "pruning": {"strategy": "summarize", "keep_last_turns": 4, "summarize_step": 4},
                    "compression": {"normalize_whitespace": True},
                }
            }
        }
    )
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    convo = conversation(5, turns=20)
    messages = convo["messages"][:-1]
    for request_id in ("summarized", "pruned"):  # the second reuses the first one's summary
        raw = sdk.chat.completions.with_raw_response.create(
            model="sim-mini",
            messages=messages,
            tools=convo["tools"],
            extra_headers={"x-request-id": request_id, "x-tokenomy-feature": "support"},
        )
    body = raw.parse()
    cost = float(raw.headers["x-tokenomy-cost-usd"])
    baseline = float(raw.headers["x-tokenomy-baseline-cost-usd"])
    assert baseline > 2 * cost
    raw = sdk.chat.completions.with_raw_response.create(
        model="sim-mini", messages=messages, tools=convo["tools"], extra_headers={"x-request-id": "unpruned"}
    )
    assert float(raw.headers["x-tokenomy-cost-usd"]) == float(raw.headers["x-tokenomy-baseline-cost-usd"])
    # the baseline of the pruned call is what the unpruned call cost (same prompt, same answer length)
    unpruned = raw.parse()
    assert body.usage is not None and unpruned.usage is not None
    rows = rows_by_id(server)
    row = rows["pruned"]
    assert set(row.savings) == {"summarize"}
    assert row.savings["summarize"]["tokens"] == unpruned.usage.prompt_tokens - body.usage.prompt_tokens
    assert [item["step"] for item in row.cost_items] == ["generation"]
    # every dollar between baseline and cost is the summary's saving (the answer is priced the same)
    assert abs(row.savings["summarize"]["usd"] - (row.baseline_usd - row.cost_usd)) < 1e-9
    first = rows["summarized"]
    assert [item["step"] for item in first.cost_items] == ["summarize", "generation"]
    # the first call paid for the summary: its saving is net of that cost
    summary_usd = first.cost_items[0]["usd"]
    assert abs(first.savings["summarize"]["usd"] - (row.savings["summarize"]["usd"] - summary_usd)) < 1e-9
    assert rows["unpruned"].savings == {}
    table = server.run_coro(spend_command(server.settings.ledger, "feature", None, "table"))
    assert "Savings by technique" in table and "summarize" in table
