"""Which policy applies to whom, and what a disabled or absent policy costs a call (nothing)."""

from __future__ import annotations

import pytest

from tests.tokens.helpers import make_call, make_stage, run
from tokenomy.config import ConfigError, load_settings

POLICIES = {
    "default": {"default_max_tokens": 100, "max_tokens_cap": 1000},
    "teams": {"growth": {"max_tokens_cap": 500, "pruning": {"strategy": "last_n", "keep_last_turns": 2}}},
    "features": {"essay": {"max_tokens_cap": 4000}},
    "keys": {"key-batch": {"default_max_tokens": 50}},
}


def test_layers_default_team_feature_key_most_specific_wins() -> None:
    stage = make_stage(POLICIES)
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": "hi"}]}
    plain = stage.policy_for(make_call(stage, body))
    assert plain is not None and plain.max_tokens_cap == 1000 and plain.pruning is None
    team = stage.policy_for(make_call(stage, body, team="growth"))
    assert team is not None and team.max_tokens_cap == 500 and team.default_max_tokens == 100
    assert team.pruning is not None and team.pruning.keep_last_turns == 2
    both = stage.policy_for(make_call(stage, body, team="growth", feature="essay"))
    assert both is not None and both.max_tokens_cap == 4000 and both.pruning is not None  # feature over team
    keyed = stage.policy_for(make_call(stage, body, team="growth", feature="essay", key_id="key-batch"))
    assert keyed is not None and keyed.default_max_tokens == 50 and keyed.max_tokens_cap == 4000
    unknown = stage.policy_for(make_call(stage, body, team="nobody", feature="nothing"))
    assert unknown == plain


async def test_no_policy_and_disabled_policies_leave_the_request_as_asked() -> None:
    body = {"model": "sim-mini", "messages": [{"role": "user", "content": "hi   there"}], "max_tokens": 5000}
    for tokens in ({}, {**POLICIES, "enabled": False}):
        stage = make_stage(tokens)
        call, sent = await run(stage, dict(body))
        assert sent == body and call.output_cap is None and not call.trace.savings
        assert call.finish_reason == "stop"


async def test_prompt_header_is_recorded_for_every_call() -> None:
    stage = make_stage({})
    call = make_call(stage, {"model": "sim-mini", "messages": [{"role": "user", "content": "hi"}]})
    call.headers["x-tokenomy-prompt"] = "  support-answer@v12 "

    async def answer(c):  # type: ignore[no-untyped-def]
        from tokenomy.pipeline.reply import Completion

        return Completion({"choices": [{"finish_reason": "length"}]})

    await stage(call, answer)
    assert call.prompt == "support-answer@v12" and call.finish_reason == "length"


def test_bad_settings_are_explained() -> None:
    with pytest.raises(ConfigError, match="default_max_tokens is larger than max_tokens_cap"):
        load_settings(None, tokens={"default": {"default_max_tokens": 10, "max_tokens_cap": 5}})
    with pytest.raises(ConfigError, match="strategy"):
        load_settings(None, tokens={"default": {"pruning": {"strategy": "forget"}}})
    with pytest.raises(ConfigError, match="summarizer_model"):
        make_stage({"summarizer_model": "nope", "default": {"pruning": {"strategy": "summarize"}}})
    with pytest.raises(ConfigError, match="retrieved_relevance"):
        make_stage({"default": {"compression": {"retrieved_relevance": "sim-mini"}}})
