"""The pruning benchmark's acceptance bar, on a small sample: summaries cut 30-turn conversations by half."""

from __future__ import annotations

from bench.conversations import conversation
from bench.pruning import POLICIES, replay


async def test_summarize_cuts_input_tokens_of_30_turn_conversations_by_half() -> None:
    conversations = [conversation(seed, 30) for seed in (0, 1)]
    base = await replay(None, conversations)
    summarized = await replay(POLICIES["summarize"], conversations)
    for b, s in zip(base, summarized):
        assert b.requests == s.requests == 30
        assert s.input_tokens <= 0.5 * b.input_tokens  # over the whole replay, one request per turn
        assert s.last_input_tokens <= 0.35 * b.last_input_tokens
        assert s.summary_tokens > 0 and s.cost_usd < b.cost_usd  # summaries are paid for, and still worth it
