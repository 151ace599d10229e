"""The official openai SDK, used as a user would, through a real gateway."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer
from tokenomy.pricing.catalog import PriceCatalog


def client(server: GatewayServer, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, **kwargs)


def gpt_4o_mini_cost(prompt: int, completion: int) -> float:
    price = PriceCatalog.load_default().get("gpt-4o-mini")
    assert price is not None
    return (prompt * price.input + completion * price.output) / 1e6


def test_chat_completion_simulated(gateway: GatewayServer) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="sim-mini",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        extra_headers={"x-tokenomy-team": "growth", "x-tokenomy-feature": "faq"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    expected = gpt_4o_mini_cost(usage.prompt_tokens, usage.completion_tokens)
    assert usage.model_extra["cost_usd"] == pytest.approx(expected)
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    assert float(raw.headers["x-tokenomy-baseline-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    assert raw.headers["x-tokenomy-model"] == "sim-mini"
    assert raw.headers["x-tokenomy-request-id"].startswith("req_")


def test_simulated_answers_are_deterministic(gateway: GatewayServer) -> None:
    ask = dict(model="sim-mini", messages=[{"role": "user", "content": "same question"}])
    first = client(gateway).chat.completions.create(**ask)  # type: ignore[arg-type]
    second = client(gateway).chat.completions.create(**ask)  # type: ignore[arg-type]
    assert first.choices[0].message.content == second.choices[0].message.content


def test_stream_with_usage_carries_cost(gateway: GatewayServer) -> None:
    stream = client(gateway).chat.completions.create(
        model="sim-mini",
        messages=[{"role": "user", "content": "Tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    expected = gpt_4o_mini_cost(final.usage.prompt_tokens, final.usage.completion_tokens)
    assert final.usage.model_extra["cost_usd"] == pytest.approx(expected)
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(gateway: GatewayServer) -> None:
    stream = client(gateway).chat.completions.create(
        model="sim-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_proxy_to_openai_compatible_upstream(gateway: GatewayServer, fake_openai: FakeOpenAI) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="up-gpt",
        messages=[{"role": "user", "content": "hello there"}],
        max_tokens=50,
        seed=7,
        extra_body={"some_future_field": {"x": 1}},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    sent = fake_openai.requests[-1]
    assert sent["body"]["model"] == "gpt"  # the upstream id, not the public name
    assert sent["body"]["seed"] == 7
    assert sent["body"]["some_future_field"] == {"x": 1}  # unknown fields pass through
    assert sent["headers"]["Authorization"] == "Bearer sk-fake"
    usage = completion.usage
    assert usage is not None
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(
        gpt_4o_mini_cost(usage.prompt_tokens, usage.completion_tokens), rel=1e-6
    )


def test_proxy_stream_passes_chunks_and_usage(gateway: GatewayServer, fake_openai: FakeOpenAI) -> None:
    stream = client(gateway).chat.completions.create(
        model="up-gpt",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three four five six"
    # usage was requested upstream to price the stream, but not passed to a client that did not ask
    assert fake_openai.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)


def test_embeddings(gateway: GatewayServer) -> None:
    raw = client(gateway).embeddings.with_raw_response.create(model="up-embed", input=["a b c", "d e"])
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 5
    price = PriceCatalog.load_default().get("text-embedding-3-small")
    assert price is not None
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(5 * price.input / 1e6, rel=1e-6)


def test_simulated_embeddings(gateway: GatewayServer) -> None:
    result = client(gateway).embeddings.create(model="sim-embed", input="hello")
    vector = result.data[0].embedding
    assert len(vector) == 256
    assert sum(v * v for v in vector) == pytest.approx(1.0)


def test_models_list(gateway: GatewayServer) -> None:
    ids = {model.id for model in client(gateway).models.list()}
    assert {"sim-mini", "sim-flagship", "sim-embed", "up-gpt"} <= ids


def test_incoming_request_id_is_kept(gateway: GatewayServer) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="sim-mini",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "trace-123"},
    )
    assert raw.headers["x-tokenomy-request-id"] == "trace-123"


def test_unknown_price_is_reported_unknown_not_zero(start_gateway) -> None:
    server = start_gateway(
        models=[{"name": "mystery", "deployments": [{"provider": "simulated", "price_model": "no-such-model"}]}]
    )
    raw = client(server).chat.completions.with_raw_response.create(
        model="mystery", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "unpriced"}
    )
    assert raw.headers["x-tokenomy-cost-usd"] == "unknown"
    usage = raw.parse().usage
    assert usage is not None and usage.model_extra["cost_usd"] is None
    server.flush_ledger()
    row = {r.request_id: r for r in server.run_coro(server.gateway.ledger.fetch())}["unpriced"]
    assert row.cost_usd is None and row.input_tokens > 0


def test_price_override_in_config_is_charged(start_gateway) -> None:
    server = start_gateway(
        models=[
            {
                "name": "cheap",
                "deployments": [
                    {"provider": "simulated", "price_model": "gpt-4o", "prices": {"input": 1.0, "output": 2.0}}
                ],
            }
        ]
    )
    raw = client(server).chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "hi"}]
    )
    usage = raw.parse().usage
    assert usage is not None
    expected = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(expected, rel=1e-6)
