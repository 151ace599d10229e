"""Prompt compression: safe normalizations and retrieved-chunk trimming, with their savings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.tokens.helpers import assert_valid_anthropic, make_stage, run
from tokenomy.tokens.compress import bm25_scores, normalize_text

OPTS = {"whitespace": True, "dedupe": True, "min_block_chars": 40}


def test_whitespace_is_normalized_outside_code_and_indentation() -> None:
    text = "Hello    world.   \n\n\n\n    indented    line\nTabs\t\there\n```python\nx  =  1\n\n\n\ny = 2\n```\nafter   code"
    out = normalize_text(text, **OPTS)
    assert out == "Hello world.\n\n    indented line\nTabs here\n```python\nx  =  1\n\n\n\ny = 2\n```\nafter code"
    assert normalize_text(out, **OPTS) == out  # idempotent: the same prompt always compresses the same way


def test_repeated_paragraphs_are_kept_once() -> None:
    footer = "This document is confidential and intended only for its recipient, do not share."
    text = f"Part one is here.\n\n{footer}\n\nPart two is here.\n\n{footer}\n\nEnd."
    assert normalize_text(text, **OPTS) == f"Part one is here.\n\n{footer}\n\nPart two is here.\n\nEnd."
    short = "Yes.\n\nYes.\n\nYes."
    assert normalize_text(short, **OPTS) == short  # short paragraphs repeat on purpose


def test_bm25_prefers_the_chunk_about_the_question() -> None:
    scores = bm25_scores(
        "what is the refund window for returns",
        ["Shipping takes three days.", "Refunds: returns are accepted within a 30 day refund window.", "Hello"],
    )
    assert scores.index(max(scores)) == 1


def chunk(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text, "retrieved": True}


def rag_body() -> dict[str, Any]:
    noise = [chunk(f"Article {i} about shipping carriers, parcel tracking and delivery days. " * 8) for i in range(6)]
    relevant = chunk("Refund policy: returns are accepted within 30 days; the refund window starts at delivery. " * 3)
    return {
        "model": "sim-mini",
        "messages": [
            {"role": "system", "content": "Answer from the documents."},
            {"role": "user", "content": [*noise[:3], relevant, *noise[3:], {"type": "text", "text": "How long is the refund window?"}]},
        ],
    }  # fmt: skip


async def test_retrieved_chunks_are_trimmed_to_the_most_relevant_in_order() -> None:
    stage = make_stage({"default": {"compression": {"retrieved_top_k": 2}}})
    call, sent = await run(stage, rag_body())
    parts = sent["messages"][1]["content"]
    assert len(parts) == 3 and parts[-1]["text"] == "How long is the refund window?"
    assert any(p["text"].startswith("Refund policy") for p in parts)
    assert all("retrieved" not in p for p in parts)  # the marker never reaches the upstream
    assert call.trace.savings["trim_retrieved"].tokens > 500  # (normalization trimmed a few trailing blanks too)
    total = sum(saving.tokens for saving in call.trace.savings.values())
    assert total == call.trace.prompt_tokens_asked - call.trace.prompt_tokens_sent
    assert call.annotations["retrieved_dropped"] == 5
    assert_valid_anthropic(sent)


async def test_retrieved_budget_keeps_what_fits() -> None:
    stage = make_stage({"default": {"compression": {"retrieved_budget_tokens": 120}}})
    _, sent = await run(stage, rag_body())
    kept = [p for p in sent["messages"][1]["content"] if p["text"] != "How long is the refund window?"]
    assert len(kept) == 1 and kept[0]["text"].startswith("Refund policy")


async def test_markers_are_stripped_even_without_a_policy() -> None:
    stage = make_stage({})
    call, sent = await run(stage, rag_body())
    assert "'retrieved'" not in str(sent) and len(sent["messages"][1]["content"]) == 8
    assert not call.trace.savings


async def test_embedding_relevance_is_a_cost_item() -> None:
    stage = make_stage({"default": {"compression": {"retrieved_top_k": 3, "retrieved_relevance": "sim-embed"}}})
    call, sent = await run(stage, rag_body())
    assert len(sent["messages"][1]["content"]) == 4
    steps = [item.step for item in call.trace.items]
    assert steps == ["relevance", "generation"]


async def test_whitespace_savings_are_recorded_and_priced() -> None:
    stage = make_stage({"default": {"compression": {}}})
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": "Summarize:    " + "word     " * 200}]}
    call, sent = await run(stage, body)
    assert sent["messages"][0]["content"] == "Summarize: " + ("word " * 199) + "word"
    saving = call.trace.savings["compress"]
    assert saving.tokens > 100
    assert call.trace.baseline_usd - call.trace.total_usd == pytest.approx(saving.usd)


def test_anthropic_clients_mark_retrieved_chunks_too(start_gateway: Any) -> None:
    import anthropic

    from tests.fakes.anthropic_upstream import FakeAnthropic

    upstream = FakeAnthropic().start()
    try:
        server = start_gateway(
            models=[{"name": "claude", "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5",
                     "base_url": upstream.base_url, "api_key_env": "FAKE_ANTHROPIC_KEY"}]}],
            tokens={"default": {"compression": {"retrieved_top_k": 1}}},
        )  # fmt: skip
        client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
        content: list[Any] = [
            {"type": "text", "text": "Shipping takes three days with the courier.", "retrieved": True},
            {"type": "text", "text": "Refunds are accepted within 30 days of delivery.", "retrieved": True},
            {"type": "text", "text": "How many days do I have for a refund?"},
        ]
        client.messages.create(model="claude", max_tokens=20, messages=[{"role": "user", "content": content}])
        sent = upstream.last_request["body"]["messages"][0]["content"]
        assert [b["text"] for b in sent] == [
            "Refunds are accepted within 30 days of delivery.",
            "How many days do I have for a refund?",
        ]
        assert "retrieved" not in str(sent)
    finally:
        upstream.stop()


async def test_a_message_of_chunks_only_keeps_its_best_chunk() -> None:
    stage = make_stage({"default": {"compression": {"retrieved_top_k": 1}}})
    body = {
        "model": "sim-mini",
        "messages": [
            {"role": "user", "content": [chunk("Refunds take 30 days."), chunk("Parcels travel by courier.")]},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": [chunk("Shipping is free above 50 EUR."), chunk("Tracking numbers are emailed.")]},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Is shipping free?"},
        ],
    }
    _, sent = await run(stage, body)
    assert [len(m["content"]) for m in sent["messages"] if isinstance(m["content"], list)] == [1, 1]
    assert sent["messages"][2]["content"][0]["text"] == "Shipping is free above 50 EUR."
    assert_valid_anthropic(sent)
