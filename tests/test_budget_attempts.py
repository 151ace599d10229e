"""The reservation covers every answer a call can be charged for: failover, context
fallbacks, every cascade level and its judge calls — so settled spend never exceeds
a hard budget, however the call is executed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.budget_helpers import run, start_gateway
from tokenomy.app import Gateway
from tokenomy.budgets.counters import NANO
from tokenomy.budgets.estimate import estimate
from tokenomy.errors import BudgetExceeded
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.providers.usage import Usage
from tokenomy.routing.cascade import JUDGE_MAX_TOKENS, judge_prompt_tokens
from tokenomy.tokens.counting import count_messages

HELLO = [{"role": "user", "content": "hello there"}]
#: every simulated answer is this long (before max_tokens cuts it)
ANSWER_TOKENS = 20


def sim(name: str, price_model: str, **options: Any) -> dict[str, Any]:
    options.setdefault("output_tokens", ANSWER_TOKENS)
    return {"name": name, "deployments": [{"provider": "simulated", "model": name, "price_model": price_model,
                                           "read_timeout_s": 1.0, "options": options}]}  # fmt: skip


def price(model: str) -> Any:
    found = PriceCatalog.load_default().get(model)
    assert found is not None
    return found


def worst(price_model: str, input_tokens: int, output_tokens: int) -> float:
    p = price(price_model)
    return (input_tokens * p.input + output_tokens * p.output) / 1e6


def body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, "max_tokens": ANSWER_TOKENS, **extra}


def reserved(call: Call, amount: float) -> float:
    """What the call reserved in a fresh budget of ``amount``: the remaining header says what was left."""
    return amount - float(call.annotations["headers"]["x-tokenomy-budget-remaining-usd"])


async def settled(gateway: Gateway) -> float:
    """Settled spend in the (memory) counter store, all budgets' counters."""
    await gateway.enforcement.enforcer.drain()
    store = gateway.enforcement.counters
    keys = [k for k in store._settled if k.startswith("b:")]  # type: ignore[attr-defined]
    return (await store.read([keys]))[0] / NANO


# -- failover and fallbacks ----------------------------------------------------------------


async def test_failed_attempts_cost_nothing_and_a_fallback_is_reserved_at_its_dearer_price(tmp_path: Path) -> None:
    models = [sim("cheap", "gpt-4o-mini", error_rate=1.0), sim("dear", "gpt-4o")]
    amount = 1.0
    gateway = await start_gateway(
        tmp_path, models=models, routing={"fallbacks": {"cheap": ["dear"]}},
        budgets={"budgets": [{"id": "g", "amount_usd": amount}]},
    )  # fmt: skip
    try:
        call = await run(gateway, body("cheap"))
        assert "error" not in call.annotations and call.model_served == "dear"
        attempts = [item for item in call.trace.items if item.step == "attempt"]
        assert attempts and all(item.usd == 0.0 for item in attempts)  # retries of the failing model: free
        (answer,) = [item for item in call.trace.items if item.step == "generation"]
        assert answer.model == "dear"
        inp = count_messages(HELLO, "cheap")
        assert reserved(call, amount) == pytest.approx(worst("gpt-4o", inp, ANSWER_TOKENS), abs=2e-6)
        assert await settled(gateway) == pytest.approx(answer.usd, abs=1e-9)  # charged the answer, once
    finally:
        await gateway.stop()


async def test_a_budget_that_fits_the_first_choice_but_not_its_fallback_refuses(tmp_path: Path) -> None:
    inp = count_messages(HELLO, "cheap")
    amount = worst("gpt-4o-mini", inp, ANSWER_TOKENS) * 3  # room for the cheap model, not for gpt-4o
    assert amount < worst("gpt-4o", inp, ANSWER_TOKENS)
    gateway = await start_gateway(
        tmp_path, models=[sim("cheap", "gpt-4o-mini", error_rate=1.0), sim("dear", "gpt-4o")],
        routing={"fallbacks": {"cheap": ["dear"]}}, budgets={"budgets": [{"id": "g", "amount_usd": amount}]},
    )  # fmt: skip
    try:
        call = await run(gateway, body("cheap"))
        assert isinstance(call.annotations["error"], BudgetExceeded)
        assert await settled(gateway) == 0.0
    finally:
        await gateway.stop()


async def test_a_context_fallback_outside_the_chain_is_reserved_too(tmp_path: Path) -> None:
    # "short" overflows its context window; the executor then switches to "dear", which is not in
    # call.targets (context_fallbacks are not part of the chain): the reservation must cover it
    models = [sim("short", "gpt-4o-mini", context_window=5), sim("dear", "gpt-4o")]
    routing = {"context_fallbacks": {"short": ["dear"]}}
    inp = count_messages(HELLO, "short")
    tight = worst("gpt-4o-mini", inp, ANSWER_TOKENS) * 3
    gateway = await start_gateway(tmp_path, models=models, routing=routing,
                                  budgets={"budgets": [{"id": "g", "amount_usd": tight}]})  # fmt: skip
    try:
        refused = await run(gateway, body("short"))
        assert isinstance(refused.annotations["error"], BudgetExceeded)
        assert await settled(gateway) == 0.0
    finally:
        await gateway.stop()
    amount = 1.0
    gateway = await start_gateway(tmp_path / "roomy", models=models, routing=routing,
                                  budgets={"budgets": [{"id": "g", "amount_usd": amount}]})  # fmt: skip
    try:
        call = await run(gateway, body("short"))
        assert call.model_served == "dear"
        assert reserved(call, amount) == pytest.approx(worst("gpt-4o", inp, ANSWER_TOKENS), abs=2e-6)
        assert await settled(gateway) <= reserved(call, amount)
    finally:
        await gateway.stop()


# -- cascades -----------------------------------------------------------------------------

CASCADE_MODELS = [
    sim("small", "gpt-4o-mini", fixed_answer=""),  # empty: rejected, escalate
    sim("medium", "claude-haiku-4-5", fixed_answer=""),  # empty: rejected, escalate
    sim("large", "gpt-4o"),
]
LEVEL_PRICES = ("gpt-4o-mini", "claude-haiku-4-5", "gpt-4o")
CASCADE = {"routers": [{"name": "cheap-first", "strategy": "cascade",
                        "cascade": {"models": ["small", "medium", "large"]}}]}  # fmt: skip


def cascade_worst(input_tokens: int, output_tokens: int) -> float:
    return sum(worst(model, input_tokens, output_tokens) for model in LEVEL_PRICES)


async def test_a_cascade_is_reserved_for_every_level(tmp_path: Path) -> None:
    amount = 1.0
    gateway = await start_gateway(tmp_path, models=CASCADE_MODELS, routing=CASCADE,
                                  budgets={"budgets": [{"id": "g", "amount_usd": amount}]})  # fmt: skip
    try:
        call = await run(gateway, body("cheap-first"))
        assert call.model_served == "large"
        assert [(i.step, i.model) for i in call.trace.items] == [
            ("cascade", "small"), ("cascade", "medium"), ("generation", "large")]  # fmt: skip
        inp = count_messages(HELLO, "small")
        assert reserved(call, amount) == pytest.approx(cascade_worst(inp, ANSWER_TOKENS), abs=3e-6)
        spent = await settled(gateway)
        assert spent == pytest.approx(call.trace.total_usd, abs=1e-9)  # every level paid, all settled
        assert spent <= reserved(call, amount)
    finally:
        await gateway.stop()


async def test_a_budget_for_one_cheap_call_is_never_overspent_by_an_escalating_cascade(tmp_path: Path) -> None:
    inp = count_messages(HELLO, "small")
    one_cheap = worst("gpt-4o-mini", inp, ANSWER_TOKENS)
    full = cascade_worst(inp, ANSWER_TOKENS)
    amount = one_cheap * 4  # admits a single cheap call (the first level's worst case), not the cascade's
    assert one_cheap < amount < full
    gateway = await start_gateway(tmp_path, models=CASCADE_MODELS, routing=CASCADE,
                                  budgets={"budgets": [{"id": "g", "amount_usd": amount}]})  # fmt: skip
    try:
        calls = await asyncio.gather(*(run(gateway, body("cheap-first")) for _ in range(5)))
        assert all(isinstance(c.annotations.get("error"), BudgetExceeded) for c in calls)
        assert all(not c.trace.items for c in calls)  # refused before any level ran
        assert await settled(gateway) == 0.0 <= amount
        cheap = await run(gateway, body("small"))  # the cheap model asked directly still fits
        assert "error" not in cheap.annotations
    finally:
        await gateway.stop()


async def test_escalating_cascades_under_a_hard_budget_settle_within_it(tmp_path: Path) -> None:
    inp = count_messages(HELLO, "small")
    full = cascade_worst(inp, ANSWER_TOKENS)
    amount = full * 3.5
    gateway = await start_gateway(tmp_path, models=CASCADE_MODELS, routing=CASCADE,
                                  budgets={"budgets": [{"id": "g", "amount_usd": amount}]})  # fmt: skip
    try:
        one_cheap = worst("gpt-4o-mini", inp, ANSWER_TOKENS)
        admitted = 0
        for _ in range(4):  # concurrent waves until the budget is spent
            calls = await asyncio.gather(*(run(gateway, body("cheap-first")) for _ in range(6)))
            ok = [c for c in calls if "error" not in c.annotations]
            assert all(c.model_served == "large" for c in ok)  # every admitted call escalated to the top
            assert all(isinstance(c.annotations["error"], BudgetExceeded) for c in calls if c not in ok)
            # each costs far more than one attempt at the first level (what used to be reserved)
            assert all(c.trace.total_usd > 5 * one_cheap for c in ok)
            admitted += len(ok)
            assert await settled(gateway) <= amount
        assert admitted >= 3
    finally:
        await gateway.stop()


async def test_huge_max_tokens_on_a_cascade_reserves_and_sends_the_cap_at_every_level(tmp_path: Path) -> None:
    cap = 1000
    models = [
        sim("small", "gpt-4o-mini", output_tokens=5000),
        sim("medium", "claude-haiku-4-5", output_tokens=5000),
        sim("large", "gpt-4o", output_tokens=5000),
        sim("judge-no", "gpt-4o-mini", fixed_answer="NO"),  # rejects every answer it grades
    ]
    routing = {"routers": [{"name": "judged", "strategy": "cascade",
                            "cascade": {"models": ["small", "medium", "large"], "checks": {"judge_model": "judge-no"}}}]}  # fmt: skip
    amount = 1.0
    gateway = await start_gateway(tmp_path, models=models, routing=routing,
                                  budgets={"output_cap_tokens": cap, "budgets": [{"id": "g", "amount_usd": amount}]})  # fmt: skip
    try:
        call = await run(gateway, body("judged", max_tokens=999999999))
        assert "error" not in call.annotations
        assert call.body["max_tokens"] == cap
        levels = [item for item in call.trace.items if item.step in ("cascade", "generation")]
        judges = [item for item in call.trace.items if item.step == "judge"]
        assert [i.model for i in levels] == ["small", "medium", "large"]
        assert all(i.usage.output_tokens == cap for i in levels)  # the cap went upstream at every level
        assert len(judges) == 2 and all(i.usage.output_tokens <= JUDGE_MAX_TOKENS for i in judges)
        inp = count_messages(HELLO, "small")
        judge_in = judge_prompt_tokens(call, "judge-no") + cap
        expected = cascade_worst(inp, cap) + 2 * worst("gpt-4o-mini", judge_in, JUDGE_MAX_TOKENS)
        assert reserved(call, amount) == pytest.approx(expected, abs=3e-6)
        assert judge_in >= max(i.usage.input_tokens for i in judges)  # the judge's prompt was covered
        spent = await settled(gateway)
        assert spent == pytest.approx(call.trace.total_usd, abs=1e-9) and spent <= reserved(call, amount)
    finally:
        await gateway.stop()


async def test_a_downgrade_budget_stops_the_cascade_from_escalating(tmp_path: Path) -> None:
    inp = count_messages(HELLO, "small")
    amount = worst("gpt-4o-mini", inp, ANSWER_TOKENS) * 4
    rule = {"id": "d", "amount_usd": amount, "mode": "downgrade", "downgrade_to": "small"}
    gateway = await start_gateway(tmp_path, models=CASCADE_MODELS, routing=CASCADE, budgets={"budgets": [rule]})
    try:
        call = await run(gateway, body("cheap-first"))
        assert "error" not in call.annotations
        assert [(i.step, i.model) for i in call.trace.items] == [("generation", "small")]  # its answer, as it is
        assert await settled(gateway) <= amount
    finally:
        await gateway.stop()


# -- what was spent before admission -------------------------------------------------------


async def test_spend_before_admission_is_part_of_the_reservation(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, models=[sim("cheap", "gpt-4o-mini")])
    try:
        call = Call(kind="chat", body=body("cheap"), model_asked="cheap")
        call.targets = gateway.registry.resolve("cheap").targets
        alone = estimate(call, 4096).usd
        call.trace.add(CostItem("summarize", "cheap", "simulated", Usage(100, 20), 0.25))  # a summary, already paid
        assert estimate(call, 4096).usd == pytest.approx(alone + 0.25)
    finally:
        await gateway.stop()


def test_reasoning_models_get_their_own_limit_field() -> None:
    from tokenomy.models import Target
    from tokenomy.providers.base import Deployment

    target = Target(Deployment(name="o3", provider="openai", upstream_model="o3-mini"), price("gpt-4o"))
    call = Call(kind="chat", body={"model": "o3", "messages": HELLO}, model_asked="o3", targets=(target,))
    estimate(call, 500)
    assert call.body.get("max_completion_tokens") == 500 and "max_tokens" not in call.body  # o-series refuse max_tokens
    both = Call(kind="chat", body={"model": "o3", "messages": HELLO, "max_tokens": 10**9, "max_completion_tokens": 10**9},
                model_asked="o3", targets=(target,))  # fmt: skip
    estimate(both, 500)
    assert both.body["max_tokens"] == both.body["max_completion_tokens"] == 500  # neither may exceed the reservation
