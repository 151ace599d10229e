"""Cascades: cheapest first, escalate on failed checks; every attempt is a cost item."""

from __future__ import annotations

import pytest

from tokenomy.errors import UpstreamError
from tokenomy.routing.cascade import static_check
from tokenomy.routing.settings import CascadeChecks
from tests.routing.pipeline import make_rig, model, sim


def rig_with(small: dict, medium: dict | None = None, large: dict | None = None, **cascade):
    models = [
        model("small", sim("small", "gpt-4o-mini", **small)),
        model("medium", sim("medium", "claude-haiku-4-5", **(medium or {}))),
        model("large", sim("large", "gpt-4o", **(large or {}))),
    ]
    routing = {
        "tiers": {"s": ["small"], "m": ["medium"], "l": ["large"]},
        "routers": [{"name": "cheap-first", "strategy": "cascade", "cascade": cascade}],
    }
    return make_rig(models, routing)


async def test_accepts_the_cheapest_adequate_answer() -> None:
    rig = rig_with({})
    call, body = await rig.chat("cheap-first", "hello")
    assert call.model_served == "small"
    assert [(i.step, i.model) for i in call.trace.items] == [("generation", "small")]
    assert call.route == "cheap-first:cascade -> small (cascade over small, medium, large); accepted small (depth 1)"
    assert call.trace.baseline_usd > call.trace.total_usd  # baseline: the dearest candidate (large)


async def test_refusal_escalates_and_each_attempt_is_charged() -> None:
    rig = rig_with({"fixed_answer": "I'm sorry, I can't help with that."}, {"fixed_answer": ""})
    call, body = await rig.chat("cheap-first", "hello")
    assert call.model_served == "large"
    items = [(i.step, i.model, i.outcome) for i in call.trace.items]
    assert items == [
        ("cascade", "small", "rejected:refusal"),
        ("cascade", "medium", "rejected:empty"),
        ("generation", "large", "ok"),
    ]
    assert all(i.usd > 0 for i in call.trace.items)  # paid for: all three generated
    assert call.trace.total_usd == pytest.approx(sum(i.usd for i in call.trace.items))
    assert "accepted large (depth 3, last)" in call.route
    row = rig.rows[-1]
    assert len(row.cost_items) == 3 and row.cost_usd == pytest.approx(call.trace.total_usd)
    # baseline = the large model's price on the final answer's usage = its own cost
    assert row.baseline_usd == pytest.approx(call.trace.items[-1].usd)


async def test_json_mode_escalates_on_invalid_json() -> None:
    rig = rig_with({"fixed_answer": "sure! {oops"}, {"fixed_answer": '{"name": "x"}'})
    fmt = {"type": "json_object"}
    call, body = await rig.chat("cheap-first", "give json", response_format=fmt)
    assert call.model_served == "medium"
    assert [i.outcome for i in call.trace.items] == ["rejected:invalid_json", "ok"]
    schema = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"required": ["name", "age"]}}}
    call, body = await rig.chat("cheap-first", "give json", response_format=schema)
    assert [i.outcome for i in call.trace.items] == ["rejected:invalid_json", "rejected:schema", "ok"]


async def test_failed_model_is_skipped_not_fatal() -> None:
    rig = rig_with({"error_rate": 1.0})
    call, _ = await rig.chat("cheap-first", "hello")
    assert call.model_served == "medium"
    assert [(i.step, i.outcome) for i in call.trace.items] == [
        ("attempt", "upstream_error"),
        ("attempt", "upstream_error"),
        ("generation", "ok"),
    ]


async def test_max_depth_and_last_model_failure() -> None:
    rig = rig_with({"fixed_answer": ""}, {"error_rate": 1.0}, max_depth=2)
    with pytest.raises(UpstreamError):
        await rig.chat("cheap-first", "hello")
    assert [i["outcome"] for i in rig.rows[-1].cost_items] == ["rejected:empty", "upstream_error", "upstream_error"]


async def test_latency_budget_returns_current_answer() -> None:
    rig = rig_with({"fixed_answer": "", "latency_ms": 30}, latency_budget_ms=10)
    call, body = await rig.chat("cheap-first", "hello")
    assert call.model_served == "small"
    assert [i.outcome for i in call.trace.items] == ["budget_spent:empty"]
    assert call.trace.baseline_usd is not None and "latency budget spent" in call.route


async def test_judge_model_gates_answers() -> None:
    models = [
        model("small", sim("small", "gpt-4o-mini")),
        model("large", sim("large", "gpt-4o")),
        model("judge-no", sim("judge-no", "gpt-4o-mini", fixed_answer="NO")),
    ]
    routing = {
        "routers": [
            {"name": "c", "strategy": "cascade", "cascade": {"models": ["small", "large"], "checks": {"judge_model": "judge-no"}}}
        ]
    }
    rig = make_rig(models, routing)
    call, _ = await rig.chat("c", "hello")
    assert [(i.step, i.model, i.outcome) for i in call.trace.items] == [
        ("cascade", "small", "rejected:judge"),
        ("judge", "judge-no", "ok"),
        ("generation", "large", "ok"),
    ]


async def test_streams_go_to_the_stream_model() -> None:
    rig = rig_with({})
    call, chunks = await rig.chat("cheap-first", "hello", stream=True)
    assert call.model_served == "large" and "cascade skipped" in call.route


def test_static_checks() -> None:
    checks = CascadeChecks(min_mean_logprob=-1.0)
    body = lambda text, lp=None: {"choices": [{"message": {"content": text}, "logprobs": lp}]}  # noqa: E731
    assert static_check(body("fine"), {}, checks) is None
    assert static_check(body("As an AI, I cannot"), {}, checks) == "refusal"
    assert static_check(body("```json\n{\"a\": 1}\n```"), {"response_format": {"type": "json_object"}}, checks) is None
    low = {"content": [{"logprob": -3.0}, {"logprob": -2.0}]}
    assert static_check(body("maybe", low), {}, checks) == "low_confidence"
    tool = {"choices": [{"message": {"content": None, "tool_calls": [{"id": "x"}]}}]}
    assert static_check(tool, {}, checks) is None
