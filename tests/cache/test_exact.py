"""Exact cache through a real gateway, with the official openai SDK."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import openai
import pytest

from tests.conftest_gateway import fake_openai_models
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer


def client(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def unique(text: str) -> str:
    return f"{text} [{uuid.uuid4().hex[:8]}]"


def upstream_calls(fake: FakeOpenAI, text: str) -> int:
    return sum(
        1
        for r in fake.requests
        if r["path"].endswith("/chat/completions") and text in str(r["body"].get("messages"))
    )


@pytest.fixture
def cached(start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI) -> GatewayServer:
    models = fake_openai_models(fake_openai.base_url, ["up-gpt", "up-fail-500", "up-cut-stream"], read_timeout_s=2.0)
    return start_gateway(models=models)


def ask(server: GatewayServer, text: str, **kwargs: object):  # noqa: ANN201
    return client(server).chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "up-gpt"),  # type: ignore[arg-type]
        messages=[{"role": "user", "content": text}],
        **kwargs,  # type: ignore[arg-type]
    )


def test_second_identical_request_is_an_exact_hit(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("What is our refund policy?")
    first = ask(cached, text)
    assert first.headers["x-tokenomy-cache"] == "miss"
    second = ask(cached, text)
    assert second.headers["x-tokenomy-cache"] == "hit-exact"
    assert upstream_calls(fake_openai, text) == 1
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content == f"echo: {text}"
    # the hit costs nothing and records what it saved
    assert float(second.headers["x-tokenomy-cost-usd"]) == 0
    assert float(second.headers["x-tokenomy-baseline-cost-usd"]) == pytest.approx(
        float(first.headers["x-tokenomy-cost-usd"])
    )
    assert b.usage is not None and b.usage.model_extra["cost_usd"] == 0
    assert second.headers["x-tokenomy-cache-key"] == first.headers["x-tokenomy-cache-key"]


def test_any_output_affecting_parameter_changes_the_key(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("Summarize the plan")
    ask(cached, text, max_tokens=50)
    assert ask(cached, text, max_tokens=60).headers["x-tokenomy-cache"] == "miss"
    assert ask(cached, text, max_tokens=50, seed=3).headers["x-tokenomy-cache"] == "miss"
    system = client(cached).chat.completions.with_raw_response.create(
        model="up-gpt",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": text}],
        max_tokens=50,
    )
    assert system.headers["x-tokenomy-cache"] == "miss"
    assert ask(cached, text, max_tokens=50).headers["x-tokenomy-cache"] == "hit-exact"
    assert upstream_calls(fake_openai, text) == 4


def test_stream_is_stored_once_complete_and_replayed(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("one two three four five six seven")
    live = client(cached).chat.completions.create(
        model="up-gpt", messages=[{"role": "user", "content": text}], stream=True
    )
    live_text = "".join(c.choices[0].delta.content or "" for c in live if c.choices)
    assert live_text == f"echo: {text}"
    # replayed as a stream, with the usage chunk when asked for
    raw = client(cached).chat.completions.with_raw_response.create(
        model="up-gpt",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-tokenomy-cache"] == "hit-exact"
    assert raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == live_text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_extra["cost_usd"] == 0
    assert chunks[-1].usage.model_extra["baseline_cost_usd"] > 0
    # and as JSON
    hit = ask(cached, text)
    assert hit.headers["x-tokenomy-cache"] == "hit-exact"
    assert hit.parse().choices[0].message.content == live_text
    assert upstream_calls(fake_openai, text) == 1


def test_json_answer_replays_as_stream_without_usage(cached: GatewayServer) -> None:
    text = unique("hello stream replay")
    ask(cached, text)
    chunks = list(
        client(cached).chat.completions.create(model="up-gpt", messages=[{"role": "user", "content": text}], stream=True)
    )
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == f"echo: {text}"


def test_errors_and_cut_streams_are_never_stored(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("fail please")
    with pytest.raises(openai.APIStatusError):
        ask(cached, text, model="up-fail-500")
    after_first = upstream_calls(fake_openai, text)  # retries included
    with pytest.raises(openai.APIStatusError) as second:
        ask(cached, text, model="up-fail-500")
    # the error was not stored: the second request failed on its own (upstream again, or an open circuit)
    assert upstream_calls(fake_openai, text) > after_first or second.value.status_code == 503
    assert second.value.response.headers.get("x-tokenomy-cache") != "hit-exact"
    cut = unique("one two three four five six seven eight nine ten")
    for _ in range(2):
        try:
            list(
                client(cached).chat.completions.create(
                    model="up-cut-stream", messages=[{"role": "user", "content": cut}], stream=True
                )
            )
        except openai.APIError:
            pass
    assert upstream_calls(fake_openai, cut) >= 2


def test_sampled_requests_are_not_served_unless_opted_in(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("Write a poem")
    ask(cached, text, temperature=0.9)
    assert ask(cached, text, temperature=0.9).headers["x-tokenomy-cache"] == "miss"
    opted = ask(cached, text, temperature=0.9, extra_headers={"x-tokenomy-cache": "exact"})
    assert opted.headers["x-tokenomy-cache"] == "hit-exact"
    assert ask(cached, text, temperature=0).headers["x-tokenomy-cache"] == "miss"  # a different request
    assert ask(cached, text, temperature=0).headers["x-tokenomy-cache"] == "hit-exact"


def test_cache_control_headers(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("controls")
    ask(cached, text)
    assert ask(cached, text, extra_headers={"cache-control": "no-cache"}).headers["x-tokenomy-cache"] == "miss"
    assert ask(cached, text, extra_headers={"cache-control": "max-age=0"}).headers["x-tokenomy-cache"] == "miss"
    assert ask(cached, text, extra_headers={"cache-control": "max-age=3600"}).headers["x-tokenomy-cache"] == "hit-exact"
    off = ask(cached, text, extra_headers={"x-tokenomy-cache": "off"})
    assert off.headers["x-tokenomy-cache"] == "bypass"
    assert upstream_calls(fake_openai, text) == 4
    other = unique("never stored")
    ask(cached, other, extra_headers={"cache-control": "no-store"})
    assert ask(cached, other).headers["x-tokenomy-cache"] == "miss"


def test_tenants_never_share_entries(cached: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = unique("What is my account balance?")
    ask(cached, text, extra_headers={"x-tokenomy-team": "alpha"})
    assert ask(cached, text, extra_headers={"x-tokenomy-team": "beta"}).headers["x-tokenomy-cache"] == "miss"
    assert ask(cached, text, extra_headers={"x-tokenomy-team": "alpha"}).headers["x-tokenomy-cache"] == "hit-exact"


def test_ledger_records_cache_status_and_savings(cached: GatewayServer) -> None:
    text = unique("ledger me")
    ask(cached, text)
    hit = ask(cached, text)
    cached.flush_ledger()
    ledger = cached.gateway.ledger
    assert ledger is not None
    rows = {row.request_id: row for row in cached.run_coro(ledger.fetch(limit=50))}
    row = rows[hit.headers["x-tokenomy-request-id"]]
    assert row.cache_status == "hit-exact"
    assert row.cost_usd == 0 and row.baseline_usd and row.savings_usd == row.baseline_usd
    assert [item["step"] for item in row.cost_items] == ["cache_lookup"]


def test_embeddings_are_never_embedded_twice(cached: GatewayServer, fake_openai: FakeOpenAI, start_gateway) -> None:  # noqa: ANN001
    server = start_gateway(
        models=[
            {
                "name": "up-embed",
                "kind": "embeddings",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "text-embedding-3-small",
                        "base_url": fake_openai.base_url,
                        "api_key_env": "FAKE_OPENAI_KEY",
                    }
                ],
            }
        ]
    )
    a, b, c = unique("alpha"), unique("beta beta"), unique("gamma gamma gamma")
    first = client(server).embeddings.with_raw_response.create(model="up-embed", input=[a, b])
    assert first.headers["x-tokenomy-cache"] == "miss"
    second = client(server).embeddings.with_raw_response.create(model="up-embed", input=[b, c, a])
    assert second.headers["x-tokenomy-cache"] == "hit-partial"
    sent = [r["body"]["input"] for r in fake_openai.requests if r["path"].endswith("/embeddings")]
    assert sent[-1] == [c]  # only the new text went upstream
    vectors = {d.index: d.embedding for d in second.parse().data}
    firsts = {d.index: d.embedding for d in first.parse().data}
    assert vectors[0] == firsts[1] and vectors[2] == firsts[0]
    third = client(server).embeddings.with_raw_response.create(model="up-embed", input=c)
    assert third.headers["x-tokenomy-cache"] == "hit-exact"
    assert float(third.headers["x-tokenomy-cost-usd"]) == 0
