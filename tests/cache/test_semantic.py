"""Semantic cache through a real gateway: paraphrases are served, the known traps never are.

The fake upstream answers ``"echo: <question>"``, so an answer served for the
wrong question is visible in the text itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.conftest_gateway import fake_openai_models
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer

pytest.importorskip("onnxruntime")


def client(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


@pytest.fixture
def semantic(start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI) -> GatewayServer:
    """Semantic cache on, every other setting at its default (verified mode)."""
    models = fake_openai_models(fake_openai.base_url, ["up-gpt"])
    return start_gateway(models=models, cache={"semantic": {"enabled": True}})


@pytest.fixture
def served(start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI) -> GatewayServer:
    """As ``semantic`` but without sampled verification (which sends a random 5 % of hits upstream)."""
    models = fake_openai_models(fake_openai.base_url, ["up-gpt"])
    return start_gateway(models=models, cache={"semantic": {"enabled": True, "verify_fraction": 0}})


def ask(server: GatewayServer, messages: list[dict[str, str]] | str, team: str | None = None, **kwargs: object):  # noqa: ANN201
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    headers = {"x-tokenomy-team": team} if team else {}
    return client(server).chat.completions.with_raw_response.create(
        model="up-gpt", messages=messages, extra_headers=headers, **kwargs  # type: ignore[arg-type]
    )


def text_of(raw) -> str:  # noqa: ANN001
    return raw.parse().choices[0].message.content


def test_a_paraphrase_is_served_with_its_similarity(served: GatewayServer) -> None:
    team = uuid.uuid4().hex
    first = ask(served, "How do I reset my password?", team)
    assert first.headers["x-tokenomy-cache"] == "miss"
    second = ask(served, "How can I reset my password?", team)
    assert second.headers["x-tokenomy-cache"] == "hit-semantic"
    assert float(second.headers["x-tokenomy-cache-similarity"]) > 0.97
    assert text_of(second) == "echo: How do I reset my password?"
    assert float(second.headers["x-tokenomy-cost-usd"]) == 0
    assert float(second.headers["x-tokenomy-baseline-cost-usd"]) > 0


def test_semantic_hit_replays_as_a_stream(served: GatewayServer) -> None:
    team = uuid.uuid4().hex
    ask(served, "How do I reset my password?", team)
    chunks = list(
        client(served).chat.completions.create(
            model="up-gpt",
            messages=[{"role": "user", "content": "How can I reset my password?"}],
            stream=True,
            extra_headers={"x-tokenomy-team": team},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: How do I reset my password?"


TRAPS = [
    ("How do I cancel my subscription?", "How do I not cancel my subscription?"),  # negation
    ("Cancel my subscription", "Do not cancel my subscription"),  # negation
    ("Book a flight from Paris to London", "Book a flight from London to Paris"),  # swapped entities
    ("Is Alice taller than Bob?", "Is Bob taller than Alice?"),  # swapped entities
    ("What is 15% of 200?", "What is 15% of 300?"),  # numbers
    ("Transfer 100 dollars to savings", "Transfer 1000 dollars to savings"),  # numbers
    ("Schedule the meeting for March 3", "Schedule the meeting for March 4"),  # dates
    ("Move my appointment to Monday", "Move my appointment to Tuesday"),  # dates
    ("How do I buy bitcoin?", "How do I sell bitcoin?"),  # opposites
]


@pytest.mark.parametrize("first,second", TRAPS)
def test_traps_are_never_served_the_other_answer(semantic: GatewayServer, first: str, second: str) -> None:
    team = uuid.uuid4().hex
    ask(semantic, first, team)
    raw = ask(semantic, second, team)
    assert raw.headers["x-tokenomy-cache"] == "miss"
    assert text_of(raw) == f"echo: {second}"


def test_the_same_follow_up_in_two_conversations(semantic: GatewayServer) -> None:
    team = uuid.uuid4().hex
    gym = [
        {"role": "user", "content": "I want to stop my gym membership."},
        {"role": "assistant", "content": "I can help with the gym membership."},
        {"role": "user", "content": "cancel it"},
    ]
    flight = [
        {"role": "user", "content": "I booked a flight to Rome."},
        {"role": "assistant", "content": "Your flight to Rome is booked."},
        {"role": "user", "content": "cancel it"},
    ]
    paraphrase = [*flight[:2], {"role": "user", "content": "please cancel it"}]
    ask(semantic, gym, team)
    other = ask(semantic, flight, team)
    assert other.headers["x-tokenomy-cache"] == "miss"
    again = ask(semantic, paraphrase, team)
    assert "gym" not in (text_of(again) or "")


def test_two_tenants_asking_the_same_question(semantic: GatewayServer, fake_openai: FakeOpenAI) -> None:
    question = f"What is the status of order {uuid.uuid4().hex[:6]}?"
    alpha = ask(semantic, question, team="alpha").headers["x-tokenomy-cache-key"]
    same = ask(semantic, question, team="beta")
    assert same.headers["x-tokenomy-cache"] == "miss"
    assert same.headers["x-tokenomy-cache-key"] != alpha
    paraphrase = ask(semantic, question.replace("What is", "What's"), team="gamma")
    assert paraphrase.headers["x-tokenomy-cache"] == "miss"
    assert paraphrase.headers["x-tokenomy-cache-key"] != alpha


def test_negative_feedback_stops_serving_that_match(served: GatewayServer) -> None:
    team = uuid.uuid4().hex
    ask(served, "How do I reset my password?", team)
    hit = ask(served, "How can I reset my password?", team)
    assert hit.headers["x-tokenomy-cache"] == "hit-semantic"
    verdict = httpx.post(
        served.base_url + "/feedback",
        json={"request_id": hit.headers["x-tokenomy-request-id"], "correct": False},
    ).json()
    assert verdict["applied"] is True
    again = ask(served, "How can I reset my password?", team)
    assert again.headers["x-tokenomy-cache"] == "miss"  # that entry is not served at that similarity any more
    unknown = httpx.post(served.base_url + "/feedback", json={"request_id": "nope", "correct": True}).json()
    assert unknown["applied"] is False
    bad = httpx.post(served.base_url + "/feedback", json={"request_id": "x", "correct": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "correct"


def test_invalidation_by_namespace_and_key(served: GatewayServer) -> None:
    team = uuid.uuid4().hex
    first = ask(served, "How do I reset my password?", team)
    namespace = f"org=|key=|team={team}"
    removed = httpx.post(served.base_url + "/cache/invalidate", json={"namespace": namespace}).json()
    assert removed["removed"] == 1
    again = ask(served, "How can I reset my password?", team)
    assert again.headers["x-tokenomy-cache"] == "miss"
    key = again.headers["x-tokenomy-cache-key"]
    assert key != first.headers["x-tokenomy-cache-key"]
    assert httpx.post(served.base_url + "/cache/invalidate", json={"key": key}).json()["removed"] == 1
    assert ask(served, "How do I reset my password?", team).headers["x-tokenomy-cache"] == "miss"
    stats = httpx.get(served.base_url + "/cache/stats").json()
    assert stats["entries"] >= 1 and "semantic_policy" in stats


def test_fixed_threshold_mode(start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI) -> None:
    models = fake_openai_models(fake_openai.base_url, ["up-gpt"])
    server = start_gateway(models=models, cache={"semantic": {"enabled": True, "mode": "fixed", "threshold": 0.9}})
    team = uuid.uuid4().hex
    ask(server, "What is the capital of France?", team)
    hit = ask(server, "Tell me the capital of France.", team)
    assert hit.headers["x-tokenomy-cache"] == "hit-semantic"
    # guards still apply in fixed mode
    ask(server, "Cancel my subscription", team)
    assert ask(server, "Do not cancel my subscription", team).headers["x-tokenomy-cache"] == "miss"


@pytest.mark.slow
def test_semantic_cache_shared_through_pgvector_and_redis(
    start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI, pgvector_url: str, redis_prefix: str
) -> None:
    models = fake_openai_models(fake_openai.base_url, ["up-gpt"])
    cache = {
        "backend": "redis",
        "key_prefix": redis_prefix,
        "semantic": {
            "enabled": True,
            "verify_fraction": 0,
            "index": "pgvector",
            "pg_url": pgvector_url,
            "pg_table": "sem_" + uuid.uuid4().hex[:10],
        },
    }
    first, second = start_gateway(models=models, cache=cache), start_gateway(models=models, cache=cache)
    team = uuid.uuid4().hex
    ask(first, "How do I reset my password?", team)
    hit = ask(second, "How can I reset my password?", team)
    assert hit.headers["x-tokenomy-cache"] == "hit-semantic"
    assert text_of(hit) == "echo: How do I reset my password?"
    trap = ask(second, "How do I not reset my password?", team)
    assert trap.headers["x-tokenomy-cache"] == "miss"
    other_tenant = ask(second, "How can I reset my password?", "someone-else")
    assert other_tenant.headers["x-tokenomy-cache"] == "miss"


async def test_router_and_cache_share_one_embedding_per_call() -> None:
    """The semantic cache and the learned router embed a short prompt once, with one model."""
    from tokenomy.embedding import SharedEmbedder, embed_for_call, minilm_available
    from tokenomy.pipeline.call import Call
    from tokenomy.routing.embedder import MiniLMEmbedder as RouterEmbedder
    from tokenomy.routing.embedder import call_embedding

    if not minilm_available():
        pytest.skip("needs tokenomy[semantic]")
    shared = SharedEmbedder()
    calls = []
    inner_embed = shared.embed

    def counting(texts, keep_end=False):  # type: ignore[no-untyped-def]
        calls.append(list(texts))
        return inner_embed(texts, keep_end)

    shared.embed = counting  # type: ignore[method-assign]
    call = Call(kind="chat", body={"messages": [{"role": "user", "content": "How do I reset my password?"}]}, model_asked="m")
    cache_vector = await embed_for_call(call, shared, "How do I reset my password?", keep_end=True)
    router_vector = await call_embedding(call, RouterEmbedder(shared))
    assert (cache_vector == router_vector).all()
    assert len(calls) == 1
