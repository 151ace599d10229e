"""Unit tests: keys, stream assembly and replay, guards, the verified policy, the evaluation CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tokenomy.cache.answers import StreamAssembler, is_complete, replay_chunks
from tokenomy.cache.guards import compare
from tokenomy.cache.keys import CacheControl, context_key, exact_key, is_sampled, split_intent
from tokenomy.cache.verified import EXPLORE, HIT, REJECT, VERIFY, Policy, VerifiedPolicy
from tokenomy.pipeline.call import Call

QQP = Path("/work/shared/data/cache/qqp_dev.jsonl.gz")


def call(messages: list[dict], **params: object) -> Call:
    body = {"model": "m", "messages": messages, **params}
    return Call(kind="chat", body=body, model_asked="m")


def test_exact_key_ignores_stream_and_user_but_not_parameters() -> None:
    base = [{"role": "user", "content": "hi"}]
    key = exact_key(call(base), "ns")
    assert exact_key(call(base, stream=True, stream_options={"include_usage": True}, user="u1"), "ns") == key
    assert exact_key(call([{"role": "user", "content": [{"type": "text", "text": "hi "}]}]), "ns") == key
    for param, value in [("temperature", 0.5), ("max_tokens", 5), ("seed", 1), ("n", 2), ("stop", ["x"]),
                         ("tools", [{"type": "function"}]), ("response_format", {"type": "json_object"})]:
        assert exact_key(call(base, **{param: value}), "ns") != key, param
    assert exact_key(call(base), "other") != key


def test_context_key_separates_conversations_and_intent_is_last_user_turn() -> None:
    a = call([{"role": "user", "content": "gym"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "cancel it"}])
    b = call([{"role": "user", "content": "flight"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "cancel it"}])
    (ia, ca), (ib, cb) = split_intent(a), split_intent(b)
    assert ia == ib == "cancel it"
    assert context_key(ca, "ns") != context_key(cb, "ns")
    tool = call([{"role": "user", "content": "x"}, {"role": "tool", "content": "result", "tool_call_id": "1"}])
    assert split_intent(tool)[0] is None


def test_cache_control_parsing() -> None:
    assert CacheControl.from_headers({"cache-control": "no-cache"}).lookup is False
    assert CacheControl.from_headers({"cache-control": "no-store"}).store is False
    assert CacheControl.from_headers({"cache-control": "max-age=60"}).max_age_s == 60
    off = CacheControl.from_headers({"x-tokenomy-cache": "off"})
    assert off.bypass and not off.lookup and not off.store
    exact = CacheControl.from_headers({"x-tokenomy-cache": "exact"})
    assert exact.opted_in and exact.exact and not exact.semantic
    assert is_sampled(call([], temperature=0.7), False) and not is_sampled(call([], temperature=0), True)
    assert is_sampled(call([]), True) and not is_sampled(call([]), False)


def test_stream_assembly_round_trips_through_replay() -> None:
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "x" * 300, "refusal": None}, "logprobs": None,
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
             "logprobs": None, "finish_reason": "tool_calls"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    chunks = replay_chunks(body)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    rebuilt = assembler.completion()
    assert rebuilt["choices"] == body["choices"]
    assert rebuilt["usage"] == body["usage"]
    assert is_complete(rebuilt)
    assert not is_complete({**rebuilt, "choices": [{**rebuilt["choices"][0], "finish_reason": "length"}]})


@pytest.mark.parametrize(
    "a,b,reason",
    [
        ("Cancel my subscription", "Don't cancel my subscription", "negation"),
        ("Flights from Paris to London", "Flights from London to Paris", "entity order"),
        ("What is 15% of 200?", "What is 15% of 300?", "numbers"),
        ("Meet on Monday", "Meet on Tuesday", "numbers"),
        ("Is Tesla a good buy?", "Is Ford a good buy?", "entities"),
        ("How do I buy bitcoin?", "How do I sell bitcoin?", "opposites"),
    ],
)
def test_guards(a: str, b: str, reason: str) -> None:
    assert reason in compare(a, b).reasons
    assert compare(a, a).passed


def test_fixed_policy() -> None:
    policy = Policy(0.9, 0.8)
    same = compare("How do I reset my password?", "How can I reset my password?")
    assert policy.decide("e", 0.95, same).action == HIT
    assert policy.decide("e", 0.85, same).action == REJECT
    assert policy.decide("e", 0.99, compare("cancel it", "do not cancel it")).action == REJECT


def test_verified_policy_learns_a_cut_that_keeps_false_hits_under_target() -> None:
    """Synthetic domain: correct matches score higher on average; the learner must find where δ = 1 % lies."""
    rng = random.Random(1)
    policy = VerifiedPolicy(target_error=0.01, verify_fraction=0.3, explore_fraction=1.0, seed=1, refit_every=100)
    passed = compare("same words here", "same words here")
    served_wrong = served_right = wrong = right = 0
    for i in range(30_000):
        correct = rng.random() < 0.4
        sim = min(1.0, rng.gauss(0.93, 0.03) if correct else rng.gauss(0.86, 0.04))
        decision = policy.decide(f"e{i}", sim, passed)
        wrong += not correct
        right += correct
        if decision.action == HIT:
            served_wrong += not correct
            served_right += correct
        elif decision.action in (VERIFY, EXPLORE):
            policy.observe(decision, correct, f"e{i}")
    assert policy.cut is not None and policy.cut < 1
    assert served_wrong / wrong <= 0.012  # the false-hit rate stays at δ (a little noise allowed)
    # and serves more than the cold threshold (0.97: ~9 % of correct ones) — though the confidence bound
    # keeps it well short of the oracle 1 % cut (~22 %), the price of learning from sampled labels
    assert served_right / right > 0.11


def test_negative_verdicts_raise_an_entrys_threshold() -> None:
    policy = VerifiedPolicy(verify_fraction=0.0, cold_threshold=0.9)
    same = compare("a b c", "a b c")
    assert policy.decide("e", 0.95, same).action == HIT
    policy.observe(policy.decide("e", 0.95, same), False, "e", feedback=True)
    assert policy.decide("e", 0.95, same).action != HIT
    assert policy.decide("e", 0.97, same).action == HIT
    policy.observe(policy.decide("e", 0.97, same), False, "e", feedback=True)
    assert policy.decide("e", 0.999, same).action != HIT


@pytest.mark.skipif(not QQP.exists(), reason="QQP evaluation pairs not present")
def test_eval_cache_cli_on_a_small_qqp_sample(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from tokenomy.cli import app

    result = CliRunner().invoke(
        app,
        ["eval", "cache", "--pairs", str(QQP), "--limit", "150", "--format", "json", "--vectors", str(tmp_path / "v")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["pairs"] == 150
    rates = [row["hit_rate"] for row in report["fixed"]]
    assert rates == sorted(rates, reverse=True)  # a higher threshold never finds more
    assert 0 <= report["verified"]["false_hit_rate"] <= 1
    assert (tmp_path / "v" / "vectors.npy").exists()
