"""The rule router, tiers and aliases, substitution policies and the route header."""

from __future__ import annotations

import pytest

from tokenomy.config import ConfigError, load_settings
from tokenomy.errors import ModelNotFound
from tokenomy.routing.stage import RoutingConfigError
from tests.routing.pipeline import make_rig, model, sim

MODELS = [
    model("small", sim("small", "gpt-4o-mini")),
    model("coder", sim("coder", "gpt-4o-mini")),
    model("large", sim("large", "gpt-4o")),
]
ROUTING = {
    "tiers": {"cheap": ["small"], "code": ["coder", "large"], "strong": ["large"]},
    "routers": [
        {
            "name": "auto",
            "strategy": "rules",
            "default_tier": "cheap",
            "rules": [
                {"name": "vip", "when": {"teams": ["research"], "priorities": ["high"]}, "tier": "strong"},
                {"name": "json", "when": {"response_format": ["json_schema"]}, "tier": "strong"},
                {"name": "tools", "when": {"tools": True}, "tier": "strong"},
                {"name": "code", "when": {"code": True}, "tier": "code"},
                {"name": "legal", "when": {"keywords": ["contract", "liability"]}, "tier": "strong"},
                {"name": "ticket", "when": {"regex": r"\bTICKET-\d+\b"}, "tier": "strong"},
                {"name": "long", "when": {"min_prompt_tokens": 500}, "tier": "strong"},
                {"name": "tagged", "when": {"tags": ["eval"], "features": ["grader"]}, "tier": "large"},
            ],
        }
    ],
}


@pytest.fixture
def rig():
    return make_rig(MODELS, ROUTING)


async def test_default_tier(rig) -> None:
    call, _ = await rig.chat("auto", "what time is it?")
    assert call.model_served == "small"
    assert call.route == "auto:rules -> small (tier cheap; no rule matched: default tier)"
    assert call.response_headers()["x-tokenomy-route"] == call.route
    assert call.response_headers()["x-tokenomy-model"] == "small"
    assert rig.rows[-1].route == call.route and rig.rows[-1].model_asked == "auto"


@pytest.mark.parametrize(
    ("text", "extra", "headers", "served", "rule"),
    [
        ("hello", {}, {"x-tokenomy-team": "research", "x-tokenomy-priority": "HIGH"}, "large", "vip: team=research, priority=high"),
        ("hello", {}, {"x-tokenomy-team": "research"}, "small", "no rule matched"),
        ("hello", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, {}, "large", "json: response_format=json_schema"),
        ("hello", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, {}, "large", "tools: tools"),
        ("fix this:\n```python\ndef f(): pass\n```", {}, {}, "coder", "code: code"),
        ("review the CONTRACT terms", {}, {}, "large", "legal: keyword=contract"),
        ("status of TICKET-123?", {}, {}, "large", "ticket: regex"),
        ("word " * 600, {}, {}, "large", "long: prompt_tokens="),
        ("hi", {}, {"x-tokenomy-tags": "eval,x", "x-tokenomy-feature": "grader"}, "large", "tagged: feature=grader, tag=eval"),
    ],
)
async def test_rules(rig, text, extra, headers, served, rule) -> None:
    call, _ = await rig.chat("auto", text, headers=headers, **extra)
    assert call.model_served == served
    assert rule in call.route


async def test_tier_order_gives_fallbacks(rig) -> None:
    # the code tier is [coder, large]: when coder fails, large answers
    rig.execute.providers["simulated"].options(rig.route.registry.resolve("coder").primary.deployment).error_rate = 1.0
    call, _ = await rig.chat("auto", "```\nx = 1;\n```")
    assert call.model_served == "large"
    assert call.route.endswith("; fallback -> large")
    assert [i.outcome for i in call.trace.items] == ["upstream_error", "upstream_error", "ok"]


async def test_baseline_is_the_dearest_candidate_for_a_router(rig) -> None:
    call, _ = await rig.chat("auto", "hello")
    item = call.trace.items[-1]
    assert call.trace.baseline_usd > item.usd  # baseline priced as gpt-4o (large), served by gpt-4o-mini
    assert call.trace.savings_usd > 0


async def test_concrete_model_is_honoured(rig) -> None:
    call, _ = await rig.chat("large", "hello")
    assert call.model_served == "large" and call.route is None
    assert "x-tokenomy-route" not in call.response_headers()


async def test_substitution_policy_routes_concrete_models() -> None:
    routing = {**ROUTING, "substitute": [{"when": {"features": ["chatbot"]}, "router": "auto", "models": ["large"]}]}
    rig = make_rig(MODELS, routing)
    call, _ = await rig.chat("large", "hello", headers={"x-tokenomy-feature": "chatbot"})
    assert call.model_served == "small"
    assert call.route.startswith("auto:rules -> small")
    # the baseline stays the model asked
    assert call.trace.baseline_usd > call.trace.items[-1].usd
    call, _ = await rig.chat("large", "hello", headers={"x-tokenomy-feature": "other"})
    assert call.model_served == "large"


async def test_unknown_router_name_is_404(rig) -> None:
    with pytest.raises(ModelNotFound):
        await rig.chat("autox", "hello")


def test_config_errors() -> None:
    with pytest.raises(RoutingConfigError):
        make_rig(MODELS, {"tiers": {"t": ["nope"]}, "routers": [{"name": "auto", "default_tier": "t"}]})
    with pytest.raises(RoutingConfigError):
        make_rig(MODELS, {"routers": [{"name": "small", "default_tier": "large"}]})
    with pytest.raises(ConfigError):
        load_settings(None, routing={"substitute": [{"router": "missing"}]})
    with pytest.raises(ConfigError):
        load_settings(None, routing={"routers": [{"name": "a", "strategy": "learned"}]})
