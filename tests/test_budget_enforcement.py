"""Reserve → settle in the pipeline: hard budgets, worst-case reservations, periods, restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.budget_fixtures import REDIS_URL, FakeClock, clear_prefix, redis_keys, redis_prefix, require_redis
from tests.budget_helpers import chat_body, one_call_cost, run, start_gateway
from tokenomy.budgets.counters import NANO
from tokenomy.errors import BudgetExceeded, BudgetStoreUnavailable, ModelNotAllowed, RateLimitExceeded
from tokenomy.pipeline.call import Identity


def budgets(backend: str, prefix: str, *rules: dict, **extra) -> dict:
    return {"backend": backend, "redis_url": REDIS_URL, "redis_prefix": prefix, "budgets": list(rules), **extra}


@pytest.fixture
async def backend_prefix(counter_backend: str):
    prefix = redis_prefix()
    if counter_backend == "redis":
        await require_redis()
    yield counter_backend, prefix
    if counter_backend == "redis":
        await clear_prefix(prefix)


async def test_hard_budget_admits_its_capacity_under_concurrency(tmp_path: Path, backend_prefix) -> None:
    backend, prefix = backend_prefix
    probe = await start_gateway(tmp_path / "probe")
    cost = one_call_cost(probe)
    await probe.stop()
    capacity = 37
    amount = cost * capacity + cost / 2
    gateway = await start_gateway(
        tmp_path, budgets=budgets(backend, prefix, {"id": "all", "amount_usd": amount, "period": "monthly"})
    )
    try:
        calls = await asyncio.gather(*(run(gateway, chat_body()) for _ in range(120)))
        await gateway.enforcement.enforcer.drain()
        admitted = [c for c in calls if "error" not in c.annotations]
        refused = [c for c in calls if "error" in c.annotations]
        assert all(isinstance(c.annotations["error"], BudgetExceeded) for c in refused)
        assert len(admitted) == capacity
        spent = sum(c.trace.total_usd for c in admitted)
        assert spent <= amount
        counted = (await gateway.enforcement.counters.read([[k for k in await _budget_keys(gateway, prefix)]]))[0]
        assert counted / NANO <= amount
    finally:
        await gateway.stop()


async def _budget_keys(gateway, prefix: str) -> list[str]:
    store = gateway.enforcement.counters
    if hasattr(store, "_settled"):
        return [k for k in store._settled if ":b:" in k or k.startswith("b:")]
    return await redis_keys(prefix + "b:*")


async def test_refusal_names_scope_remaining_and_reset(tmp_path: Path) -> None:
    gateway = await start_gateway(
        tmp_path,
        budgets={"budgets": [{"id": "growth-daily", "scope": "team", "value": "growth", "amount_usd": 0.00001, "period": "daily"}]},
    )
    try:
        call = await run(gateway, chat_body(), Identity(team="growth"))
        err = call.annotations["error"]
        assert isinstance(err, BudgetExceeded) and err.status == 429 and err.code == "budget_exceeded"
        assert "team 'growth'" in err.message and "remaining" in err.message and "resets at" in err.message
        assert err.headers["x-tokenomy-budget-remaining-usd"] == "0.000010"
        assert int(err.headers["retry-after"]) > 0
        # another team is not affected
        assert "error" not in (await run(gateway, chat_body(), Identity(team="search"))).annotations
    finally:
        await gateway.stop()


async def test_huge_max_tokens_cannot_inflate_or_bypass(tmp_path: Path) -> None:
    gateway = await start_gateway(
        tmp_path, budgets={"output_cap_tokens": 1000, "budgets": [{"id": "g", "amount_usd": 1.0}]}
    )
    try:
        call = await run(gateway, chat_body(max_tokens=999999999))
        assert "error" not in call.annotations
        # the reservation was the policy cap, and the cap went upstream instead of 999999999
        assert call.body["max_tokens"] == 1000
        remaining = float(call.annotations["headers"]["x-tokenomy-budget-remaining-usd"])
        price_out = gateway.registry.resolve("sim-fixed").primary.price.output
        assert 1.0 - remaining == pytest.approx(1000 * price_out / 1e6, rel=0.05)
    finally:
        await gateway.stop()


async def test_missing_max_tokens_reserves_the_policy_cap(tmp_path: Path) -> None:
    gateway = await start_gateway(
        tmp_path, budgets={"output_cap_tokens": 500, "budgets": [{"id": "g", "amount_usd": 0.0002}]}
    )
    try:
        body = chat_body()
        del body["max_tokens"]
        # 500 output tokens at $0.60/M = $0.0003 > budget: refused though the answer would cost 1/25 of it
        call = await run(gateway, body)
        err = call.annotations["error"]
        assert isinstance(err, BudgetExceeded)
        assert "needs up to $0.0003" in err.message
        small = await run(gateway, chat_body(max_tokens=100))
        assert "error" not in small.annotations
    finally:
        await gateway.stop()


async def test_restart_keeps_spend_and_periods_reset(tmp_path: Path, backend_prefix) -> None:
    backend, prefix = backend_prefix
    clock = FakeClock()  # Monday 2025-11-24 16:00 UTC = 11:00 in New York
    probe = await start_gateway(tmp_path / "probe")
    cost = one_call_cost(probe)
    await probe.stop()
    settings = budgets(
        backend, prefix, {"id": "day", "amount_usd": cost * 3.5, "period": "daily", "timezone": "America/New_York"}
    )
    gateway = await start_gateway(tmp_path, clock, budgets=settings)
    try:
        for _ in range(2):
            assert "error" not in (await run(gateway, chat_body())).annotations
        await gateway.enforcement.enforcer.drain()
    finally:
        await gateway.stop()
    clock.advance(6 * 3600)  # 17:00 in New York: same day
    gateway = await start_gateway(tmp_path, clock, budgets=settings)
    try:
        assert "error" not in (await run(gateway, chat_body())).annotations
        assert "error" in (await run(gateway, chat_body())).annotations  # 2 before the restart + 1 = capacity
        clock.advance(7 * 3600 + 1)  # past midnight in New York (05:00 UTC)
        assert "error" not in (await run(gateway, chat_body())).annotations
    finally:
        await gateway.stop()


async def test_soft_budget_only_counts(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, budgets={"budgets": [{"id": "s", "amount_usd": 0.0, "mode": "soft"}]})
    try:
        assert "error" not in (await run(gateway, chat_body())).annotations
    finally:
        await gateway.stop()


async def test_downgrade_budget_routes_to_cheaper_model(tmp_path: Path) -> None:
    probe = await start_gateway(tmp_path / "probe")
    cost = one_call_cost(probe)
    await probe.stop()
    rule = {"id": "d", "amount_usd": cost * 5, "mode": "downgrade", "downgrade_to": "sim-fixed"}
    gateway = await start_gateway(tmp_path, budgets={"budgets": [rule]})
    try:
        # sim-flagship (gpt-4o prices) does not fit; the call is served by sim-fixed instead
        call = await run(gateway, {"model": "sim-flagship", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20})
        assert "error" not in call.annotations
        assert call.model_served == "sim-fixed"
        assert call.annotations["budget_downgraded_from"] == "sim-flagship"
    finally:
        await gateway.stop()


async def test_allowed_models(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path)
    try:
        call = await run(gateway, chat_body(), Identity(key_id="k", allowed_models=frozenset({"sim-mini"})))
        assert isinstance(call.annotations["error"], ModelNotAllowed)
        assert call.annotations["error"].status == 403
    finally:
        await gateway.stop()


async def test_rate_limits_and_headers(tmp_path: Path, clock: FakeClock) -> None:
    gateway = await start_gateway(
        tmp_path, clock, budgets={"rate_limits": [{"id": "rl", "scope": "key", "rpm": 3, "tpm": 100000}]}
    )
    ident = Identity(key_id="key_1")
    try:
        first = await run(gateway, chat_body(), ident)
        headers = first.annotations["headers"]
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == "2"
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        assert int(headers["x-ratelimit-remaining-tokens"]) < 100000
        await run(gateway, chat_body(), ident)
        await run(gateway, chat_body(), ident)
        refused = (await run(gateway, chat_body(), ident)).annotations["error"]
        assert isinstance(refused, RateLimitExceeded) and "3 requests per minute" in refused.message
        assert "retry-after" in refused.headers
        assert "error" not in (await run(gateway, chat_body(), Identity(key_id="key_2"))).annotations
        clock.advance(61)
        assert "error" not in (await run(gateway, chat_body(), ident)).annotations
    finally:
        await gateway.stop()


async def test_concurrency_limit(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, budgets={"rate_limits": [{"id": "cc", "concurrent": 2}]})
    try:
        calls = await asyncio.gather(*(run(gateway, chat_body(model="sim-slow")) for _ in range(5)))
        assert sum("error" not in c.annotations for c in calls) == 2
        await gateway.enforcement.enforcer.drain()
        assert "error" not in (await run(gateway, chat_body(model="sim-slow"))).annotations
    finally:
        await gateway.stop()


@pytest.mark.parametrize(("mode", "admitted"), [("closed", False), ("open", True)])
async def test_unreachable_store_fails_as_configured(tmp_path: Path, mode: str, admitted: bool, caplog) -> None:
    settings = budgets("redis", "x:", {"id": "g", "amount_usd": 10}, fail_mode=mode, redis_timeout_s=0.2)
    settings["redis_url"] = "redis://127.0.0.1:9/0"
    overrides = {"budgets": settings}
    from tests.harness import settings_for
    from tokenomy.app import build_gateway

    gateway = build_gateway(settings_for(tmp_path, ledger={"enabled": False}, models=[], **overrides))
    await gateway.enforcement.access.start()  # the counter store is down: start only the rest
    await gateway.enforcement.book.start()
    try:
        call = await run(gateway, {"model": "sim-mini", "messages": [{"role": "user", "content": "hi"}]})
        if admitted:
            assert "error" not in call.annotations
            assert "failing OPEN" in caplog.text
        else:
            assert isinstance(call.annotations["error"], BudgetStoreUnavailable)
            assert call.annotations["error"].status == 503
            assert "failing CLOSED" in caplog.text
    finally:
        await gateway.enforcement.book.aclose()
        await gateway.enforcement.access.aclose()
        await gateway.enforcement.counters.aclose()


async def test_streams_settle_to_their_actual_cost(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, budgets={"budgets": [{"id": "g", "amount_usd": 1.0}]})
    try:
        call = await run(gateway, chat_body(stream=True))
        assert "error" not in call.annotations
        await gateway.enforcement.enforcer.drain()
        spent = (await gateway.enforcement.counters.read([[k for k in await _budget_keys(gateway, "")]]))[0]
        assert spent / NANO == pytest.approx(call.trace.total_usd, abs=1e-9)
    finally:
        await gateway.stop()


async def test_client_that_leaves_is_charged_at_least_the_input(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, budgets={"budgets": [{"id": "g", "amount_usd": 1.0}]})
    try:
        from tokenomy.pipeline.call import Call

        call = Call(kind="chat", body=chat_body(model="sim-slow"), model_asked="sim-slow")
        task = asyncio.ensure_future(gateway.pipeline.run(call))
        await asyncio.sleep(0.1)  # upstream is answering (300 ms)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await gateway.enforcement.enforcer.drain()
        spent = (await gateway.enforcement.counters.read([[k for k in await _budget_keys(gateway, "")]]))[0]
        price = gateway.registry.resolve("sim-slow").primary.price
        from tokenomy.tokens.counting import count_messages

        input_usd = count_messages(chat_body()["messages"], "sim-slow") * price.input / 1e6
        assert spent / NANO == pytest.approx(input_usd, rel=0.01)
    finally:
        await gateway.stop()


async def test_embeddings_go_through_budgets(tmp_path: Path) -> None:
    gateway = await start_gateway(tmp_path, budgets={"budgets": [{"id": "g", "amount_usd": 0.0}]})
    try:
        from tokenomy.errors import GatewayError
        from tokenomy.pipeline.call import Call

        call = Call(kind="embeddings", body={"model": "sim-embed", "input": "hello"}, model_asked="sim-embed")
        with pytest.raises(GatewayError) as info:
            await gateway.pipeline.run(call)
        assert info.value.code == "budget_exceeded"
    finally:
        await gateway.stop()


async def test_customer_ids_cannot_break_counter_keys(tmp_path: Path, backend_prefix) -> None:
    backend, prefix = backend_prefix
    probe = await start_gateway(tmp_path / "probe")
    cost = one_call_cost(probe)
    await probe.stop()
    rule = {"id": "per-customer", "scope": "customer", "value": "*", "amount_usd": cost * 1.5, "period": "daily"}
    gateway = await start_gateway(tmp_path, budgets=budgets(backend, prefix, rule))
    try:
        sneaky = chat_body(user="victim\u00000\u0000-1\u0000x")  # fields of the Redis wire format
        assert "error" not in (await run(gateway, sneaky)).annotations
        await gateway.enforcement.enforcer.drain()
        assert isinstance((await run(gateway, sneaky)).annotations["error"], BudgetExceeded)
        assert "error" not in (await run(gateway, chat_body(user="victim"))).annotations
    finally:
        await gateway.stop()


async def test_model_and_provider_scopes(tmp_path: Path) -> None:
    rules = [
        {"id": "fixed-model", "scope": "model", "value": "sim-fixed", "amount_usd": 0.0},
        {"id": "sim-provider", "scope": "provider", "value": "simulated", "amount_usd": 1.0},
    ]
    gateway = await start_gateway(tmp_path, budgets={"budgets": rules})
    try:
        refused = (await run(gateway, chat_body())).annotations["error"]
        assert "model 'sim-fixed'" in refused.message
        ok = await run(gateway, chat_body(model="sim-mini"))
        assert "error" not in ok.annotations
        assert float(ok.annotations["headers"]["x-tokenomy-budget-remaining-usd"]) < 1.0  # the provider budget
    finally:
        await gateway.stop()
