"""Context pruning keeps conversations valid for OpenAI and Anthropic, and prices the baseline as asked."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bench.conversations import conversation
from tests.tokens.helpers import assert_valid_anthropic, assert_valid_openai, make_stage, run
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.anthropic_client_request import anthropic_to_openai_request
from tokenomy.providers.usage import Usage
from tokenomy.tokens.conversation import split_turns
from tokenomy.tokens.counting import count_messages
from tokenomy.tokens.pruning import SUMMARY_PREFIX

POLICIES = {
    "last_n": {"strategy": "last_n", "keep_last_turns": 2},
    "budget": {"strategy": "budget", "budget_tokens": 1500},
    "summarize": {"strategy": "summarize", "keep_last_turns": 2, "summarize_step": 2},
}


def request_prefixes(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """What a client sends during the conversation: history up to each user message and each tool result."""
    return [
        messages[: i + 1]
        for i, m in enumerate(messages)
        if m["role"] == "user" or (m["role"] == "tool" and messages[i + 1]["role"] != "tool")
    ]


def body_of(messages: list[dict[str, Any]], tools: list[Any], model: str = "sim-mini") -> dict[str, Any]:
    return {"model": model, "messages": copy.deepcopy(messages), "tools": tools}


def assert_suffix_kept(original: list[dict[str, Any]], sent: list[dict[str, Any]]) -> None:
    """Sent = the original's system messages, maybe a summary, then an unchanged suffix of the original."""
    rest = [m for m in sent if not (m["role"] == "system")]
    systems = [m for m in sent if m["role"] == "system" and not str(m["content"]).startswith(SUMMARY_PREFIX)]
    assert systems == [m for m in original if m["role"] == "system"]  # never dropped, never changed
    assert rest == original[len(original) - len(rest) :] if rest else True  # never reordered
    assert sent[0] == original[0]  # the system prompt stays first


@pytest.mark.parametrize("name", sorted(POLICIES))
async def test_pruned_conversations_with_tool_calls_stay_valid(name: str) -> None:
    stage = make_stage({"default": {"pruning": POLICIES[name]}})
    pruned = 0
    for seed in range(4):
        convo = conversation(seed, turns=12)
        for messages in request_prefixes(convo["messages"]):
            call, sent = await run(stage, body_of(messages, convo["tools"]))
            assert_valid_openai(sent["messages"])
            assert_valid_anthropic(sent)
            assert_suffix_kept(messages, sent["messages"])
            pruned += len(sent["messages"]) < len(messages)
    assert pruned > 20


async def test_last_n_keeps_whole_turns_and_records_what_it_saved() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "last_n", "keep_last_turns": 3}}})
    convo = conversation(7, turns=10)
    body = body_of(convo["messages"][:-1], convo["tools"])  # ends with the 10th user message
    call, sent = await run(stage, body)
    turns = split_turns(sent["messages"])
    assert len(turns) == 3
    asked = count_messages(body["messages"], "sim-mini", tools=convo["tools"])
    sent_tokens = count_messages(sent["messages"], "sim-mini", tools=convo["tools"])
    assert call.trace.prompt_tokens_asked == asked and call.trace.prompt_tokens_sent == sent_tokens
    saving = call.trace.savings["prune"]
    assert saving.tokens == asked - sent_tokens > 0
    price = call.baseline_price
    assert saving.usd == pytest.approx(saving.tokens * price.input / 1e6)
    # the baseline is the unpruned prompt, priced as the model asked
    assert call.trace.baseline_usd == pytest.approx(cost_usd(price, Usage(input_tokens=asked, output_tokens=10)))
    assert call.trace.baseline_usd - call.trace.total_usd == pytest.approx(saving.usd)
    assert call.annotations["pruned_turns"] == 7
    assert sent["messages"][1]["role"] == "user"
    assert sent["messages"][1:] == body["messages"][len(body["messages"]) - len(sent["messages"]) + 1 :]


async def test_budget_keeps_the_system_prompt_and_the_most_recent_turns_within_budget() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "budget", "budget_tokens": 2500}}})
    convo = conversation(3, turns=20)
    body = body_of(convo["messages"][:-1], convo["tools"])
    _, sent = await run(stage, body)
    assert count_messages(sent["messages"], "sim-mini", tools=convo["tools"]) <= 2500
    assert sent["messages"][0] == body["messages"][0]
    # one more turn would not have fitted
    kept = len(split_turns(sent["messages"]))
    assert 2 < kept < len(split_turns(body["messages"]))


async def test_budget_keeps_the_last_turn_even_alone_over_budget() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "budget", "budget_tokens": 10}}})
    convo = conversation(3, turns=5)
    body = body_of(convo["messages"][:-1], convo["tools"])
    _, sent = await run(stage, body)
    assert sent["messages"][0]["role"] == "system" and sent["messages"][1:] == body["messages"][-1:]


async def test_system_messages_inside_pruned_turns_are_kept_in_order() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "last_n", "keep_last_turns": 1}}})
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "1"},
        {"role": "developer", "content": "From now on answer in French."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "three"},
    ]
    _, sent = await run(stage, {"model": "sim-mini", "messages": messages})
    assert [m["content"] for m in sent["messages"]] == ["Be brief.", "From now on answer in French.", "three"]
    assert_valid_anthropic(sent)


async def test_a_conversation_from_an_anthropic_client_stays_valid_after_pruning() -> None:
    """Tool results and text in one Anthropic user turn become tool + user messages; the pair survives."""
    raw = {
        "model": "sim-haiku",
        "max_tokens": 100,
        "system": "You help with orders.",
        "tools": [{"name": "get_order", "input_schema": {"type": "object", "properties": {}}}],
        "messages": [],
    }
    for i in range(6):
        raw["messages"] += [
            {"role": "user", "content": f"Where is order {i}? " + "please check " * 20},
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"tu_{i}", "name": "get_order", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": f"tu_{i}", "content": "shipped " * 30},
                {"type": "text", "text": "And when will it arrive?"},
            ]},  # fmt: skip
            {"role": "assistant", "content": "Tomorrow. " * 10},
        ]
    raw["messages"].append({"role": "user", "content": "Thanks, and order 9?"})
    body = anthropic_to_openai_request(raw)
    for name, policy in {**POLICIES, "budget": {"strategy": "budget", "budget_tokens": 400}}.items():
        stage = make_stage({"default": {"pruning": policy}})
        _, sent = await run(stage, copy.deepcopy(body))
        assert len(sent["messages"]) < len(body["messages"]), name
        assert_valid_openai(sent["messages"])
        payload = assert_valid_anthropic(sent)
        assert payload["messages"][0]["role"] == "user"


async def test_summary_replaces_older_turns_once_per_prefix_and_is_charged() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "summarize", "keep_last_turns": 4, "summarize_step": 4}}})
    summarizer = stage.summarizer
    assert summarizer is not None and summarizer.model == "sim-mini"
    convo = conversation(11, turns=30)
    user_indices = [i for i, m in enumerate(convo["messages"]) if m["role"] == "user"]
    charged_turns = []
    reductions = []
    for turn, index in enumerate(user_indices, start=1):
        messages = convo["messages"][: index + 1]
        call, sent = await run(stage, body_of(messages, convo["tools"]))
        assert_valid_openai(sent["messages"])
        assert_valid_anthropic(sent)
        summaries = [m for m in sent["messages"] if str(m.get("content") or "").startswith(SUMMARY_PREFIX)]
        if turn >= 8:
            assert len(summaries) == 1 and sent["messages"][1] is not None
            assert sent["messages"][1]["content"].startswith(SUMMARY_PREFIX)  # right after the system prompt
        steps = [item for item in call.trace.items if item.step == "summarize"]
        if steps:
            charged_turns.append(turn)
            assert steps[0].model == "sim-mini" and steps[0].usd and steps[0].usd > 0
            assert call.trace.savings["summarize"].cost_usd == pytest.approx(steps[0].usd)
        if call.trace.prompt_tokens_asked:
            reductions.append(1 - call.trace.prompt_tokens_sent / call.trace.prompt_tokens_asked)
    # the cut moves every 4 turns: a summary per step, not per turn
    assert charged_turns == [8, 12, 16, 20, 24, 28]
    assert summarizer.calls == 6
    assert reductions[-1] >= 0.5  # the 30th turn sends less than half its prompt


async def test_summary_failure_sends_the_conversation_unpruned() -> None:
    stage = make_stage({"default": {"pruning": {"strategy": "summarize", "keep_last_turns": 2, "summarize_step": 2}}})
    assert stage.summarizer is not None

    async def broken(*args: Any, **kwargs: Any) -> Any:
        from tokenomy.errors import UpstreamError

        raise UpstreamError("summarizer down")

    stage.summarizer.provider.chat = broken  # type: ignore[method-assign]
    convo = conversation(2, turns=8)
    body = body_of(convo["messages"][:-1], convo["tools"])
    call, sent = await run(stage, body)
    assert sent["messages"] == body["messages"]
    assert "summary_failed" in call.annotations and not call.trace.savings


async def test_concurrent_requests_for_one_prefix_share_one_summary_call() -> None:
    import asyncio

    stage = make_stage({"default": {"pruning": {"strategy": "summarize", "keep_last_turns": 2, "summarize_step": 2}}})
    assert stage.summarizer is not None
    provider = stage.summarizer.provider
    chat = provider.chat
    started = []

    async def slow_chat(*args: Any, **kwargs: Any) -> Any:
        started.append(1)
        await asyncio.sleep(0.05)  # the others arrive while this one is in flight
        return await chat(*args, **kwargs)

    stage.summarizer.provider = type("Slow", (), {"chat": staticmethod(slow_chat)})()  # type: ignore[assignment]
    convo = conversation(21, turns=9)
    body = body_of(convo["messages"][:-1], convo["tools"])
    results = await asyncio.gather(*(run(stage, copy.deepcopy(body)) for _ in range(5)))
    assert stage.summarizer.calls == 1 and len(started) == 1
    sent = [s for _, s in results]
    assert all(s == sent[0] for s in sent)
    charged = [c for c, _ in results if any(i.step == "summarize" for i in c.trace.items)]
    assert len(charged) == 1  # the one that made it pays for it
