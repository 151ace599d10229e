"""Failover against the fake OpenAI upstream: real HTTP errors mapped to each behaviour."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tokenomy.errors import ContentPolicyViolation, ContextWindowExceeded, UpstreamRejected
from tests.fakes.openai_upstream import FakeOpenAI
from tests.routing.pipeline import make_rig


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-fake")


def up(base_url: str, name: str, upstream_model: str, price: str = "gpt-4o-mini") -> dict:
    return {
        "name": name,
        "deployments": [
            {
                "provider": "openai",
                "model": upstream_model,
                "base_url": base_url,
                "api_key_env": "FAKE_OPENAI_KEY",
                "price_model": price,
                "read_timeout_s": 0.3,
            }
        ],
    }


async def test_http_errors_fail_over_in_order(upstream: FakeOpenAI) -> None:
    url = upstream.base_url
    models = [
        up(url, "a", "fail-500"),
        up(url, "b", "hang"),
        up(url, "c", "fail-429"),
        up(url, "d", "malformed"),
        up(url, "e", "gpt"),
    ]
    rig = make_rig(models, {"fallbacks": {"a": ["b", "c", "d", "e"]}, "retry": {"attempts": 1}})
    call, body = await rig.chat("a", "hi there")
    assert body["choices"][0]["message"]["content"].startswith("echo")
    assert [(i.model, i.outcome) for i in call.trace.items] == [
        ("a", "upstream_error"),
        ("b", "upstream_timeout"),
        ("c", "upstream_rate_limited"),
        ("d", "upstream_error"),
        ("e", "ok"),
    ]
    assert call.route == "fallback -> e (asked a)"
    await rig.execute.providers["openai"].aclose()


async def test_flaky_upstream_succeeds_on_retry(upstream: FakeOpenAI) -> None:
    rig = make_rig([up(upstream.base_url, "f", "flaky-500")])
    upstream._flaky = 0
    call, _ = await rig.chat("f")
    assert [i.outcome for i in call.trace.items] == ["upstream_error", "ok"]
    assert len(rig.sleep.waits) == 1
    await rig.execute.providers["openai"].aclose()


async def test_context_and_policy_errors_are_recognised(upstream: FakeOpenAI) -> None:
    url = upstream.base_url
    rig = make_rig(
        [up(url, "ctx", "fail-context"), up(url, "pol", "fail-policy"), up(url, "bad", "fail-400"), up(url, "ok", "gpt")],
        {"context_fallbacks": {"ctx": ["ok"]}, "fallbacks": {"pol": ["ok"], "bad": ["ok"]}},
    )
    call, _ = await rig.chat("ctx")
    assert [i.outcome for i in call.trace.items] == ["context_length_exceeded", "ok"]
    # no content-policy fallback configured: the 400 is the answer (ordinary fallbacks do not apply)
    with pytest.raises(ContentPolicyViolation):
        await rig.chat("pol")
    with pytest.raises(UpstreamRejected) as info:
        await rig.chat("bad")
    assert not isinstance(info.value, ContextWindowExceeded) and info.value.status == 400
    assert rig.sleep.waits == []
    await rig.execute.providers["openai"].aclose()
