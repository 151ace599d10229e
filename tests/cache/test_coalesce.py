"""In-flight coalescing: 50 identical concurrent requests make exactly one upstream call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import openai
import pytest

from tests.conftest_gateway import fake_openai_models
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer

N = 50


def upstream_calls(fake: FakeOpenAI, text: str) -> int:
    return sum(1 for r in fake.requests if text in str(r["body"].get("messages")))


@pytest.fixture
def coalescing(start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI) -> GatewayServer:
    # the exact cache is off so only coalescing can explain a single upstream call
    models = fake_openai_models(fake_openai.base_url, ["up-slow", "up-slow-stream", "up-fail-500"], read_timeout_s=5.0)
    return start_gateway(models=models, cache={"exact": {"enabled": False}})


async def _many(server: GatewayServer, text: str, *, stream: bool, model: str) -> list[str]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client:

        async def one() -> str:
            messages = [{"role": "user", "content": text}]
            if not stream:
                done = await client.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
                return done.choices[0].message.content or ""
            parts = []
            live = await client.chat.completions.create(model=model, messages=messages, stream=True)  # type: ignore[arg-type]
            async for chunk in live:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
            return "".join(parts)

        return await asyncio.gather(*(one() for _ in range(N)))


def test_fifty_identical_json_requests_make_one_upstream_call(coalescing: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = f"coalesce me {uuid.uuid4().hex[:8]}"
    answers = asyncio.run(_many(coalescing, text, stream=False, model="up-slow"))
    assert answers == [f"echo: {text}"] * N
    assert upstream_calls(fake_openai, text) == 1


def test_fifty_identical_streams_fan_out_from_one_upstream_call(
    coalescing: GatewayServer, fake_openai: FakeOpenAI
) -> None:
    text = "stream " + " ".join(f"w{i}" for i in range(12)) + f" {uuid.uuid4().hex[:8]}"
    answers = asyncio.run(_many(coalescing, text, stream=True, model="up-slow-stream"))
    assert answers == [f"echo: {text}"] * N
    assert upstream_calls(fake_openai, text) == 1


def test_mixed_json_and_stream_followers(coalescing: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = f"mixed {uuid.uuid4().hex[:8]}"

    async def both() -> tuple[list[str], list[str]]:
        return await asyncio.gather(
            _many(coalescing, text, stream=True, model="up-slow"), _many(coalescing, text, stream=False, model="up-slow")
        )

    streamed, plain = asyncio.run(both())
    assert streamed == plain == [f"echo: {text}"] * N
    assert upstream_calls(fake_openai, text) == 1


def test_coalesced_followers_are_recorded_as_such(coalescing: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = f"ledger coalesce {uuid.uuid4().hex[:8]}"
    asyncio.run(_many(coalescing, text, stream=False, model="up-slow"))
    coalescing.flush_ledger()
    rows = coalescing.run_coro(coalescing.gateway.ledger.fetch(limit=200))  # type: ignore[union-attr]
    statuses = [r.cache_status for r in rows if r.model_asked == "up-slow"]
    assert statuses.count("coalesced") >= N - 1
    followers = [r for r in rows if r.cache_status == "coalesced"]
    assert all(r.cost_usd == 0 and (r.baseline_usd or 0) > 0 for r in followers)


def test_a_failing_leader_does_not_fail_followers_one_by_one(coalescing: GatewayServer, fake_openai: FakeOpenAI) -> None:
    text = f"fail together {uuid.uuid4().hex[:8]}"

    async def run() -> list[BaseException | object]:
        async with openai.AsyncOpenAI(base_url=coalescing.base_url, api_key="unused", max_retries=0) as client:
            calls = [
                client.chat.completions.create(model="up-fail-500", messages=[{"role": "user", "content": text}])
                for _ in range(10)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(r, openai.APIStatusError) for r in results)
    assert upstream_calls(fake_openai, text) <= 10


def test_coalescing_across_replicas_through_redis(
    start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI, redis_prefix: str
) -> None:
    models = fake_openai_models(fake_openai.base_url, ["up-slow"], read_timeout_s=5.0)
    shared = {
        "backend": "redis",
        "key_prefix": redis_prefix,
        "exact": {"enabled": False},
        "coalesce": {"backend": "redis"},
    }
    replicas = [start_gateway(models=models, cache=shared) for _ in range(2)]
    text = f"two replicas {uuid.uuid4().hex[:8]}"

    async def both() -> list[list[str]]:
        return await asyncio.gather(*(_many(r, text, stream=False, model="up-slow") for r in replicas))

    answers = asyncio.run(both())
    assert answers == [[f"echo: {text}"] * N] * 2
    assert upstream_calls(fake_openai, text) == 1


def test_exact_cache_shared_by_replicas_through_redis(
    start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI, redis_prefix: str
) -> None:
    models = fake_openai_models(fake_openai.base_url, ["up-gpt"])
    replicas = [start_gateway(models=models, cache={"backend": "redis", "key_prefix": redis_prefix}) for _ in range(2)]
    text = f"shared answer {uuid.uuid4().hex[:8]}"
    clients = [openai.OpenAI(base_url=r.base_url, api_key="unused", max_retries=0) for r in replicas]
    first = clients[0].chat.completions.with_raw_response.create(
        model="up-gpt", messages=[{"role": "user", "content": text}]
    )
    second = clients[1].chat.completions.with_raw_response.create(
        model="up-gpt", messages=[{"role": "user", "content": text}]
    )
    assert first.headers["x-tokenomy-cache"] == "miss"
    assert second.headers["x-tokenomy-cache"] == "hit-exact"
    assert second.parse().choices[0].message.content == f"echo: {text}"
    assert upstream_calls(fake_openai, text) == 1
