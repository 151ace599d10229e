"""Provider prompt caching: automatic Anthropic breakpoints checked by a fake Anthropic upstream that
caches per breakpoint, and cache reads/writes priced in the CostTrace as the catalog says."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic, _prompt_parts
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer
from tests.tokens.helpers import make_stage, run
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.store.ledger import LedgerRow
from tokenomy.tokens.prompt_cache import anthropic_min_tokens

# One o200k token per word (with its leading space), so the fake's word counts match our token counts.
_WORDS = "the of and to in is that for it as with was on be by this are or from at".split()


def words(n: int, offset: int = 0) -> str:
    return " ".join(_WORDS[(i + offset) % len(_WORDS)] for i in range(n))


@pytest.fixture
def caching_upstream() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic(min_cacheable_tokens=1024).start()
    yield server
    server.stop()


def claude(base_url: str, model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    return {
        "name": "claude",
        "deployments": [
            {"provider": "anthropic", "model": model, "base_url": base_url, "api_key_env": "FAKE_ANTHROPIC_KEY"}
        ],
    }


def marks(body: dict[str, Any]) -> list[int]:
    """Positions of the cache breakpoints in Anthropic's cache order (tools, system, message blocks)."""
    return [i for i, part in enumerate(_prompt_parts(body)) if part.get("cache_control")]


def priced(row: LedgerRow, event: dict[str, int], model: str = "claude-sonnet-4-5") -> tuple[float, float]:
    """(cost, baseline) of a row from the upstream's own cache report and the catalog's prices."""
    price = PriceCatalog.load_default().get(model)
    assert price is not None and price.cached_input and price.cache_write and price.cache_write_1h
    plain = row.input_tokens - event["read"] - event["write_5m"] - event["write_1h"]
    cost = (
        plain * price.input
        + event["read"] * price.cached_input
        + event["write_5m"] * price.cache_write
        + event["write_1h"] * price.cache_write_1h
        + row.output_tokens * price.output
    ) / 1e6
    baseline = (row.input_tokens * price.input + row.output_tokens * price.output) / 1e6
    return cost, baseline


def test_breakpoints_on_system_and_turns_and_cache_reads_writes_priced_as_the_catalog_says(
    start_gateway: Callable[..., GatewayServer], caching_upstream: FakeAnthropic
) -> None:
    server = start_gateway(
        models=[claude(caching_upstream.base_url)], tokens={"default": {"prompt_caching": {"anthropic_breakpoints": True}}}
    )
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    system = words(1500)
    history: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in range(3):
        history.append({"role": "user", "content": f"question {turn} " + words(30, turn)})
        answer = sdk.chat.completions.create(
            model="claude", messages=history, max_tokens=50, extra_headers={"x-request-id": f"turn-{turn}"}
        )
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
    bodies = [r["body"] for r in caching_upstream.requests]
    events = caching_upstream.cache_events
    # turn 0: system and the question; later: system, the previous question and the new one
    assert marks(bodies[0]) == [0, 1]
    assert marks(bodies[1]) == [0, 1, 3] and marks(bodies[2]) == [0, 3, 5]
    assert all(len(marks(b)) <= 4 for b in bodies)
    assert isinstance(bodies[1]["system"], list) and bodies[1]["system"][0]["cache_control"] == {"type": "ephemeral"}
    # turn 0 writes everything; each later turn reads the previous turn's prefix and writes the new exchange
    assert events[0]["read"] == 0 and events[0]["write_5m"] > 1500
    for before, event in zip(events, events[1:]):
        assert event["read"] == before["read"] + before["write_5m"]
        assert 0 < event["write_5m"] < 200

    server.flush_ledger()
    assert server.gateway.ledger is not None
    rows = {r.request_id: r for r in server.run_coro(server.gateway.ledger.fetch())}
    for turn, event in enumerate(events):
        row = rows[f"turn-{turn}"]
        assert row.cached_tokens == event["read"] and row.cache_write_tokens == event["write_5m"]
        cost, baseline = priced(row, event)
        assert row.cost_usd == pytest.approx(cost, rel=1e-9)
        assert row.baseline_usd == pytest.approx(baseline, rel=1e-9)  # the baseline prices the prompt uncached
        saving = row.savings["prompt_cache"]
        assert saving["tokens"] == event["read"]
        assert saving["usd"] == pytest.approx(baseline - cost, rel=1e-9)
    assert rows["turn-0"].savings["prompt_cache"]["usd"] < 0  # the first write costs 1.25x
    assert rows["turn-2"].savings["prompt_cache"]["usd"] > 0


def test_one_hour_ttl_and_tools_take_a_breakpoint(
    start_gateway: Callable[..., GatewayServer], caching_upstream: FakeAnthropic
) -> None:
    server = start_gateway(
        models=[claude(caching_upstream.base_url)],
        tokens={"default": {"prompt_caching": {"ttl": "1h", "cache_messages": False}}},
    )
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "description": words(120, i),
                                          "parameters": {"type": "object", "properties": {}}}}
        for i in range(12)
    ]  # fmt: skip
    messages = [{"role": "system", "content": words(400)}, {"role": "user", "content": "hello"}]
    for request_id in ("first", "second"):
        sdk.chat.completions.create(
            model="claude", messages=messages, tools=tools, max_tokens=20, extra_headers={"x-request-id": request_id}
        )
    body = caching_upstream.requests[-1]["body"]
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert body["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert marks(body) == [len(tools) - 1, len(tools)]
    first, second = caching_upstream.cache_events
    assert first["write_1h"] > 1400 and first["write_5m"] == 0 and second["read"] == first["write_1h"]
    server.flush_ledger()
    assert server.gateway.ledger is not None
    rows = {r.request_id: r for r in server.run_coro(server.gateway.ledger.fetch())}
    for request_id, event in (("first", first), ("second", second)):
        cost, _ = priced(rows[request_id], event)
        assert rows[request_id].cost_usd == pytest.approx(cost, rel=1e-9)


async def test_short_prompts_and_client_breakpoints_are_left_alone() -> None:
    stage = make_stage(
        {"default": {"prompt_caching": {}}},
        models=[claude("http://127.0.0.1:9"), claude("http://127.0.0.1:9", "claude-haiku-4-5") | {"name": "haiku"}],
    )
    short = {"model": "claude", "messages": [{"role": "system", "content": words(300)}, {"role": "user", "content": "hi"}]}
    call, sent = await run(stage, short)
    assert "cache_control" not in str(sent) and call.trace.cache_breakpoints_added == 0
    # 1500 tokens clear Sonnet's 1024 minimum but not Haiku 4.5's 4096
    long = {"model": "haiku", "messages": [{"role": "system", "content": words(1500)}, {"role": "user", "content": "hi"}]}
    _, sent = await run(stage, long)
    assert "cache_control" not in str(sent)
    own = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": words(1500), "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": "hi " + words(1500)},
        ],
    }
    call, sent = await run(stage, own)
    assert call.trace.cache_breakpoints_added == 0 and "cache_control" not in sent["messages"][1]


def test_minimums_follow_anthropic_documentation() -> None:
    assert anthropic_min_tokens("claude-sonnet-4-5") == 1024
    assert anthropic_min_tokens("claude-opus-4-1-20250805") == 1024
    assert anthropic_min_tokens("claude-3-5-haiku-latest") == 2048
    assert anthropic_min_tokens("claude-3-haiku-20240307") == 2048
    assert anthropic_min_tokens("claude-haiku-4-5") == 4096
    assert anthropic_min_tokens("claude-opus-4-5") == 4096


def test_openai_upstreams_get_no_cache_control_but_a_stable_cache_key(
    start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI
) -> None:
    model = {
        "name": "gpt",
        "deployments": [
            {"provider": "openai", "model": "gpt-4o-mini", "base_url": fake_openai.base_url, "api_key_env": "FAKE_OPENAI_KEY"}
        ],
    }
    server = start_gateway(models=[model], tokens={"default": {"prompt_caching": {"openai_cache_key": True}}})
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    system = {"role": "system", "content": words(1500)}
    for question in ("one", "two"):
        sdk.chat.completions.create(model="gpt", messages=[system, {"role": "user", "content": question}])
    first, second = (r["body"] for r in fake_openai.requests[-2:])
    assert "cache_control" not in str(first)
    assert first["prompt_cache_key"] == second["prompt_cache_key"] and first["prompt_cache_key"].startswith("tkn-")


def test_pruning_keeps_the_cached_prefix_stable(
    start_gateway: Callable[..., GatewayServer], caching_upstream: FakeAnthropic
) -> None:
    """With summaries and breakpoints together, the system prompt is marked before the summary, so it is
    read from the cache on every turn, also on the turns where the summary changes."""
    server = start_gateway(
        models=[claude(caching_upstream.base_url)],
        tokens={
            "summarizer_model": "sim-mini",
            "default": {
                "pruning": {"strategy": "summarize", "keep_last_turns": 2, "summarize_step": 2},
                "prompt_caching": {},
            },
        },
    )
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    history: list[dict[str, Any]] = [{"role": "system", "content": words(1500)}]
    for turn in range(8):
        history.append({"role": "user", "content": f"question {turn} " + words(200, turn)})
        answer = sdk.chat.completions.create(model="claude", messages=history, max_tokens=50)
        history.append({"role": "assistant", "content": answer.choices[0].message.content})
    bodies = [r["body"] for r in caching_upstream.requests]
    summarized = [b for b in bodies if len(b["system"]) == 2]
    assert len(summarized) >= 3
    for body in summarized:
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}  # the client's system prompt
        assert "cache_control" not in body["system"][1] and body["system"][1]["text"].startswith("Summary")
    for event in caching_upstream.cache_events[1:]:
        assert event["read"] >= 1500  # never less than the system prompt


def test_streamed_calls_are_priced_and_credited_the_same_way(
    start_gateway: Callable[..., GatewayServer], caching_upstream: FakeAnthropic
) -> None:
    server = start_gateway(models=[claude(caching_upstream.base_url)], tokens={"default": {"prompt_caching": {}}})
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    messages = [{"role": "system", "content": words(1500)}, {"role": "user", "content": "hello there"}]
    for request_id in ("s1", "s2"):
        stream = sdk.chat.completions.create(
            model="claude", messages=messages, max_tokens=20, stream=True,
            stream_options={"include_usage": True}, extra_headers={"x-request-id": request_id},
        )  # fmt: skip
        chunks = list(stream)
        assert chunks[-1].usage is not None
    server.flush_ledger()
    assert server.gateway.ledger is not None
    rows = {r.request_id: r for r in server.run_coro(server.gateway.ledger.fetch())}
    for request_id, event in zip(("s1", "s2"), caching_upstream.cache_events):
        row = rows[request_id]
        cost, baseline = priced(row, event)
        assert row.stream and row.cost_usd == pytest.approx(cost, rel=1e-9)
        assert row.baseline_usd == pytest.approx(baseline, rel=1e-9)
        assert row.savings["prompt_cache"]["tokens"] == event["read"]
    assert rows["s2"].cached_tokens > 1500
