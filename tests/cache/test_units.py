"""Unit tests: keys, stream assembly and replay, guards, the verified policy, the evaluation CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from tokenomy.cache.answers import StreamAssembler, is_complete, replay_chunks
from tokenomy.cache.guards import compare
from tokenomy.cache.keys import CacheControl, context_key, exact_key, is_sampled, split_intent
from tokenomy.cache.reranker import N_LEXICAL, PROJECTED, Reranker
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


def _synthetic(rng: random.Random) -> tuple[bool, float]:
    """Correct matches score higher on average: cosine ~ N(0.93, 0.03) if correct, N(0.86, 0.04) if not."""
    correct = rng.random() < 0.4
    return correct, min(1.0, rng.gauss(0.93, 0.03) if correct else rng.gauss(0.86, 0.04))


@pytest.mark.slow
def test_verified_policy_learns_a_cut_that_keeps_false_hits_under_target() -> None:
    """The learner must find where δ = 1 % lies from sampled labels alone, then serve under it."""
    rng = random.Random(1)
    policy = VerifiedPolicy(
        target_error=0.01, verify_fraction=0.3, explore_fraction=1.0, seed=1,
        refit_every=100, refit_growth=0.3, reranker_iterations=30,
    )
    passed = compare("same words here", "same words here")
    served_wrong = wrong = 0
    for i in range(12_000):
        correct, sim = _synthetic(rng)
        decision = policy.decide(f"e{i}", sim, passed)
        wrong += not correct
        if decision.action == HIT:
            served_wrong += not correct
        elif decision.action in (VERIFY, EXPLORE):
            policy.observe(decision, correct, f"e{i}")
    assert policy.cut is not None and policy.cut < 1
    assert served_wrong / wrong <= 0.012  # the false-hit rate while learning stays at δ (a little noise allowed)
    # what it learned, on fresh traffic with no more sampling: still under δ, and serving far more
    # than the cold threshold (0.97 serves 9.1 % of correct matches; the oracle 1 % cut, 22 %)
    policy.verify_fraction = policy.explore_fraction = 0.0
    outcomes = [(correct, policy.decide(f"f{i}", sim, passed).action == HIT)
                for i, (correct, sim) in enumerate(_synthetic(rng) for _ in range(20_000))]
    wrong_served = sum(hit for correct, hit in outcomes if not correct) / sum(not c for c, _ in outcomes)
    right_served = sum(hit for correct, hit in outcomes if correct) / sum(c for c, _ in outcomes)
    assert wrong_served <= 0.012
    assert right_served > 0.13


def test_verified_policy_learns_from_the_vectors_what_cosine_cannot_tell() -> None:
    """Every candidate has the same cosine and words; only *which* dimensions disagree tells them apart."""
    rng = np.random.default_rng(0)
    dim = 48
    policy = VerifiedPolicy(
        target_error=0.02, verify_fraction=0.0, explore_fraction=1.0, seed=0, cold_threshold=0.97,
        min_wrong=150, refit_every=300, refit_growth=0.5, projection_samples=400, reranker_iterations=40,
    )
    passed = compare("same words here", "same words here")

    def pair(correct: bool) -> tuple[np.ndarray, np.ndarray]:
        u = rng.normal(size=dim)
        u /= np.linalg.norm(u)
        noise = rng.normal(size=dim) * 0.05
        if not correct:
            noise[:4] += rng.choice([-1, 1], size=4) * 0.35  # a wrong match differs along a few directions
        v = u + noise
        return u.astype(np.float32), (v / np.linalg.norm(v)).astype(np.float32)

    for i in range(1_500):
        correct = bool(rng.random() < 0.5)
        u, v = pair(correct)
        decision = policy.decide(f"e{i}", 0.92, passed, u, v)
        if policy.learned is None:
            assert decision.action != HIT  # 0.92 is below the cold threshold: nothing is served before learning
        policy.observe(decision, correct, f"e{i}")
    assert policy.learned is not None and policy.learned.projection is not None
    assert policy.learned.rerankers[0].n_features == N_LEXICAL + 2 * PROJECTED
    hits = {True: 0, False: 0}
    for i in range(1_000):
        correct = bool(rng.random() < 0.5)
        u, v = pair(correct)
        hits[correct] += policy.decide(f"f{i}", 0.92, passed, u, v).action == HIT
    assert hits[True] > 300  # most of the ~500 correct ones are served ...
    assert hits[False] <= 15  # ... and hardly any wrong one
    # without the vectors the same candidates are indistinguishable: nothing learned applies
    assert policy.decide("g", 0.92, passed).action != HIT


def test_flattened_trees_score_exactly_like_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3_000, 9))
    y = x[:, 0] + x[:, 3] * x[:, 4] + rng.normal(scale=0.5, size=3_000) > 0
    reranker = Reranker.fit(x, y, rng.uniform(0.5, 2.0, size=3_000))
    probe = rng.normal(size=(300, 9))
    assert np.allclose([reranker.score(row) for row in probe], reranker.scores(probe), rtol=0, atol=1e-9)


async def test_refits_run_off_the_event_loop() -> None:
    from tokenomy.cache.semantic import refit_in_thread

    policy = VerifiedPolicy(
        verify_fraction=0.0, min_similarity=0.0, seed=0, min_wrong=20, refit_every=100, run_refit=refit_in_thread
    )
    fitted_on: list[int] = []
    fit = policy._fit

    def recording_fit(*args: object) -> object:
        fitted_on.append(threading.get_ident())
        return fit(*args)

    policy._fit = recording_fit  # type: ignore[method-assign]
    rng = random.Random(0)
    passed = compare("same words here", "same words here")
    for i in itertools.count():
        if policy.labels >= 100:
            break
        correct, sim = _synthetic(rng)
        policy.observe(policy.decide(f"e{i}", sim, passed), correct, f"e{i}")
    assert policy.learned is None and policy._fitting  # handed to a thread, not fitted inline
    for _ in range(200):
        if policy.learned is not None:
            break
        await asyncio.sleep(0.05)
    assert policy.learned is not None
    assert fitted_on and fitted_on[0] != threading.get_ident()


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
    (verified,) = report["verified"]
    assert verified["target_error"] == 0.01
    assert 0 <= verified["whole"]["verified"]["false_hit_rate"] <= 1
    # the fixed threshold it is compared with is tuned to the verified run's own false-hit rate
    fixed = verified["whole"]["fixed_same_false_hit_rate"]
    assert fixed["false_hit_rate"] <= verified["whole"]["verified"]["false_hit_rate"]
    assert (tmp_path / "v" / "vectors.npy").exists()


async def test_only_a_policy_that_learns_from_vectors_reads_the_candidates_vector() -> None:
    from tokenomy.cache.index import MemoryVectorIndex
    from tokenomy.cache.semantic import SemanticCacheStage
    from tokenomy.config import CacheSettings

    index = MemoryVectorIndex(4)
    await index.start()
    stored = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    await index.add("team-a", "ctx", "k1", stored)
    verified = SemanticCacheStage(CacheSettings(), None, None, None, index, VerifiedPolicy())  # type: ignore[arg-type]
    assert np.allclose(await verified._vector("team-a", "ctx", "k1"), stored)
    assert await verified._vector("team-b", "ctx", "k1") is None  # another tenant's entry is not readable
    fixed = SemanticCacheStage(CacheSettings(), None, None, None, index, Policy(0.9, 0.8))  # type: ignore[arg-type]
    assert await fixed._vector("team-a", "ctx", "k1") is None  # a fixed threshold needs no extra read
    await index.aclose()
