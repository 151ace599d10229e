"""Retries, failover and circuit breakers with the simulated provider's fault injection.

Each error class ends in its documented behaviour (routing/fallback.py); every
attempt shows in the trace and the ledger row; only the answer is charged.
"""

from __future__ import annotations

import pytest

from tokenomy.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from tests.routing.pipeline import make_rig, model, sim

OK = sim("ok-mini")


def charged(call) -> list:
    return [i for i in call.trace.items if i.usd]


def attempts(call) -> list:
    return [(i.step, i.model, i.outcome) for i in call.trace.items]


async def test_5xx_retries_then_next_deployment() -> None:
    rig = make_rig([model("m", sim("broken", error_rate=1.0), sim("good", "gpt-4o"))])
    call, body = await rig.chat("m")
    assert body["model"] == "good"
    # cheapest first (gpt-4o-mini-priced "broken"), two tries, then the dearer healthy deployment
    assert attempts(call) == [
        ("attempt", "m", "upstream_error"),
        ("attempt", "m", "upstream_error"),
        ("generation", "m", "ok"),
    ]
    assert len(charged(call)) == 1
    assert len(rig.sleep.waits) == 1 and 0.15 <= rig.sleep.waits[0] <= 0.25  # one backoff of ~0.2 s
    row = rig.rows[-1]
    assert row.outcome == "ok" and [i["outcome"] for i in row.cost_items] == ["upstream_error", "upstream_error", "ok"]
    assert row.cost_usd == pytest.approx(call.trace.items[-1].usd)
    # baseline: the model asked (its primary deployment), priced on the answer's usage
    assert row.baseline_usd is not None and row.baseline_usd > 0


async def test_timeout_then_fallback_model() -> None:
    rig = make_rig(
        [model("m", sim("slow", timeout_rate=1.0)), model("backup", sim("backup"))],
        routing={"fallbacks": {"m": ["backup"]}, "retry": {"attempts": 2}},
    )
    call, body = await rig.chat("m")
    assert call.model_served == "backup"
    assert [a[2] for a in attempts(call)] == ["upstream_timeout", "upstream_timeout", "ok"]
    assert call.route == "fallback -> backup (asked m)"
    assert call.response_headers()["x-tokenomy-route"] == call.route
    assert rig.rows[-1].route == call.route


async def test_429_opens_circuit_for_retry_after_and_goes_on() -> None:
    rig = make_rig([model("m", sim("limited", rate_limit_rate=1.0, retry_after_s=7), sim("other", "gpt-4o"))])
    call, _ = await rig.chat("m")
    assert [a[2] for a in attempts(call)] == ["upstream_rate_limited", "ok"]
    assert rig.sleep.waits == []  # another deployment was free: no waiting
    # the limited deployment cools down for its Retry-After: the next call skips it without trying
    call2, _ = await rig.chat("m")
    assert [a[2] for a in attempts(call2)] == ["ok"]
    assert call2.annotations["skipped"][0]["why"] == "skipped:circuit_open"


async def test_429_alone_waits_retry_after_when_short() -> None:
    rig = make_rig([model("m", sim("limited", rate_limit_rate=1.0, retry_after_s=1))], routing={"retry": {"attempts": 3}})
    with pytest.raises(RateLimited) as info:
        await rig.chat("m")
    assert rig.sleep.waits == [1.0, 1.0]  # waited Retry-After twice, three tries in all
    assert info.value.headers["x-tokenomy-attempts"] == "3"
    assert info.value.headers["Retry-After"] == "1"
    row = rig.rows[-1]
    assert row.status == 429 and row.cost_usd == 0 and len(row.cost_items) == 3


async def test_429_with_long_retry_after_is_not_waited() -> None:
    rig = make_rig([model("m", sim("limited", rate_limit_rate=1.0, retry_after_s=30))])
    with pytest.raises(RateLimited):
        await rig.chat("m")
    assert rig.sleep.waits == []


async def test_context_window_goes_to_larger_context_model() -> None:
    rig = make_rig(
        [model("small", sim("small", context_window=20)), model("big", sim("big", "gpt-4o"))],
        routing={"context_fallbacks": {"small": ["big"]}},
    )
    call, _ = await rig.chat("small", "word " * 100)
    assert call.model_served == "big"
    assert [a[2] for a in attempts(call)] == ["context_length_exceeded", "ok"]
    assert rig.sleep.waits == []  # no retry: the same model cannot take it
    # short prompts stay on the small model
    call, _ = await rig.chat("small", "hi")
    assert call.model_served == "small"


async def test_context_window_uses_catalog_windows_when_not_configured() -> None:
    # gpt-4o-mini and gpt-4o both have 128k windows in the catalog: no larger one, so the 400 is answered
    rig = make_rig(
        [model("small", sim("small", context_window=20)), model("big", sim("big", "gpt-4o"))],
        routing={"fallbacks": {"small": ["big"]}},
    )
    with pytest.raises(ContextWindowExceeded) as info:
        await rig.chat("small", "word " * 100)
    assert info.value.status == 400
    assert rig.rows[-1].outcome == "context_length_exceeded"


async def test_content_policy_fallback_or_400() -> None:
    rig = make_rig(
        [model("strict", sim("strict", blocked_words=["forbidden"])), model("lenient", sim("lenient"))],
        routing={"content_policy_fallbacks": {"strict": ["lenient"]}},
    )
    call, _ = await rig.chat("strict", "a forbidden topic")
    assert call.model_served == "lenient"
    assert [a[2] for a in attempts(call)] == ["content_policy_violation", "ok"]
    bare = make_rig([model("strict", sim("strict", blocked_words=["forbidden"])), model("other", OK)], routing={"fallbacks": {"strict": ["other"]}})
    with pytest.raises(ContentPolicyViolation):
        await bare.chat("strict", "a forbidden topic")  # ordinary fallbacks do not take policy refusals
    assert bare.sleep.waits == [] and len(bare.rows[-1].cost_items) == 1
    # another deployment of the same model (another provider's filter) is tried first
    two = make_rig([model("m", sim("strict", blocked_words=["forbidden"]), sim("other-provider", "gpt-4o"))])
    call, body = await two.chat("m", "a forbidden topic")
    assert body["model"] == "other-provider"
    assert [a[2] for a in attempts(call)] == ["content_policy_violation", "ok"]


async def test_circuit_opens_after_failures_and_503_when_all_cool() -> None:
    rig = make_rig(
        [model("m", sim("bad", error_rate=1.0))],
        routing={"retry": {"attempts": 1}, "health": {"failures": 2, "cooldown_s": 60}},
    )
    for _ in range(2):
        with pytest.raises(UpstreamError) as info:
            await rig.chat("m")
        assert info.value.status == 502
    with pytest.raises(ServiceUnavailable) as info:
        await rig.chat("m")
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "60"
    assert rig.rows[-1].status == 503 and rig.rows[-1].cost_items == []


async def test_client_errors_are_not_retried() -> None:
    rig = make_rig([model("m", OK), model("other", sim("other"))], routing={"fallbacks": {"m": ["other"]}})
    from tokenomy.errors import UpstreamRejected

    class Rejecting:
        name = "simulated"

        async def chat(self, deployment, body):
            raise UpstreamRejected("upstream 'm' answered 400: bad temperature")

    rig.execute.providers["simulated"] = Rejecting()  # type: ignore[assignment]
    with pytest.raises(UpstreamRejected):
        await rig.chat("m")
    assert len(rig.rows[-1].cost_items) == 1 and rig.sleep.waits == []


async def test_stream_fails_over_before_first_chunk_and_is_charged_once() -> None:
    rig = make_rig([model("m", sim("broken", error_rate=1.0), sim("good", "gpt-4o"))])
    call, chunks = await rig.chat("m", stream=True)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    assert [a[2] for a in attempts(call)] == ["upstream_error", "upstream_error", "ok"]
    assert len(charged(call)) == 1


async def test_stream_cut_mid_way_is_charged_for_what_streamed_not_replayed() -> None:
    rig = make_rig([model("m", sim("cut", cut_stream_after=2)), model("other", OK)], routing={"fallbacks": {"m": ["other"]}})
    with pytest.raises(UpstreamError):
        await rig.chat("m", stream=True)
    row = rig.rows[-1]
    assert row.model_served == "m" and len(row.cost_items) == 1 and row.cost_usd > 0


async def test_deadline_stops_retrying() -> None:
    rig = make_rig([model("m", sim("bad", error_rate=1.0))], routing={"retry": {"attempts": 5, "deadline_s": 0.01, "backoff_s": 1}})
    with pytest.raises(UpstreamError):
        await rig.chat("m")
    assert len(rig.rows[-1].cost_items) == 1


async def test_timeout_error_class_is_504_when_exhausted() -> None:
    rig = make_rig([model("m", sim("slow", timeout_rate=1.0))], routing={"retry": {"attempts": 1}})
    with pytest.raises(UpstreamTimeout) as info:
        await rig.chat("m")
    assert info.value.status == 504


async def test_cheapest_healthy_deployment_first() -> None:
    rig = make_rig([model("m", sim("dear", "gpt-4o"), sim("cheap", "gpt-4o-mini"))])
    call, body = await rig.chat("m")
    assert body["model"] == "cheap"


async def test_latency_aware_ordering_breaks_price_ties() -> None:
    from tokenomy.models import ModelRegistry
    from tokenomy.pricing.catalog import PriceCatalog
    from tokenomy.routing.fallback import LatencyBoard
    from tokenomy.routing.health import deployment_key
    from tokenomy.routing.stage import RouteStage
    from tokenomy.config import load_settings

    settings = load_settings(None, models=[model("m", sim("a"), sim("b"), sim("dear", "gpt-4o"))])
    registry = ModelRegistry.from_settings(settings, PriceCatalog.load_default())
    board = LatencyBoard()
    stage = RouteStage(registry, settings.routing, latency=board)
    a, b, dear = registry.resolve("m").targets
    board.observe(deployment_key(a.deployment), 80.0)
    board.observe(deployment_key(b.deployment), 20.0)
    assert [t.deployment.upstream_model for t in stage.chain(["m"])] == ["b", "a", "dear"]
    board.observe(deployment_key(b.deployment), 500.0)
    board.observe(deployment_key(b.deployment), 500.0)
    assert [t.deployment.upstream_model for t in stage.chain(["m"])][0] == "a"
