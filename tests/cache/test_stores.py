"""The store contracts, run against the embedded and the shared implementation alike."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.cache.conftest import REDIS_URL
from tokenomy.cache.answers import CachedAnswer
from tokenomy.cache.index import MemoryVectorIndex, VectorIndex
from tokenomy.cache.store import AnswerStore, MemoryAnswerStore, RedisAnswerStore
from tokenomy.providers.usage import Usage


def answer(namespace: str = "ns", tags: tuple[str, ...] = (), created_at: float | None = None) -> CachedAnswer:
    return CachedAnswer(
        body={"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hi"}}]},
        usage=Usage(10, 5),
        model_served="m",
        provider="p",
        namespace=namespace,
        tags=tags,
        created_at=created_at or time.time(),
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[AnswerStore]:
    if request.param == "memory":
        yield MemoryAnswerStore(max_entries=3)
        return
    prefix = request.getfixturevalue("redis_prefix")
    shared = RedisAnswerStore(REDIS_URL, prefix=prefix, max_entries=3)
    yield shared
    await shared.aclose()


async def test_put_get_roundtrip_and_ttl(store: AnswerStore) -> None:
    await store.put("k1", answer(), ttl_s=60)
    got = await store.get("k1")
    assert got is not None and got.body["choices"][0]["message"]["content"] == "hi" and got.usage == Usage(10, 5)
    await store.put("k2", answer(), ttl_s=0.05)
    await asyncio.sleep(0.15)
    assert await store.get("k2") is None
    assert await store.get("missing") is None


async def test_bounded_lru(store: AnswerStore) -> None:
    for i in range(5):
        await store.put(f"k{i}", answer(created_at=time.time() + i), ttl_s=60)
    assert await store.count() <= 3
    assert await store.get("k4") is not None
    assert await store.get("k0") is None


async def test_invalidation(store: AnswerStore) -> None:
    now = time.time()
    await store.put("a", answer("ns1", ("faq",), now - 100), ttl_s=600)
    await store.put("b", answer("ns1", (), now), ttl_s=600)
    await store.put("c", answer("ns2", ("faq",), now), ttl_s=600)
    assert await store.invalidate(tag="faq", namespace="ns2") == 1
    assert await store.get("c") is None
    assert await store.invalidate(older_than_s=50) == 1
    assert await store.get("a") is None and await store.get("b") is not None
    assert await store.delete("b") is True
    assert await store.delete("b") is False


@pytest.fixture(params=["memory", pytest.param("pgvector", marks=pytest.mark.slow)])
async def index(request: pytest.FixtureRequest) -> AsyncIterator[VectorIndex]:
    if request.param == "memory":
        yield MemoryVectorIndex(dim=8, max_per_namespace=100)
        return
    from tokenomy.cache.pgvector_index import PgVectorIndex

    url = request.getfixturevalue("pgvector_url")
    shared = PgVectorIndex(url, dim=8, table="t_" + uuid.uuid4().hex[:10])
    await shared.start()
    yield shared
    await shared.aclose()


def unit(values: list[float]) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


async def test_search_stays_within_namespace_and_context(index: VectorIndex) -> None:
    v = unit([1, 0, 0, 0, 0, 0, 0, 0])
    near = unit([1, 0.1, 0, 0, 0, 0, 0, 0])
    await index.add("tenant-a", "ctx1", "a1", v)
    await index.add("tenant-b", "ctx1", "b1", v)
    await index.add("tenant-a", "ctx2", "a2", v)
    await index.add("tenant-a", "ctx1", "a3", unit([0, 1, 0, 0, 0, 0, 0, 0]))
    found = await index.search("tenant-a", "ctx1", near, 2)
    assert [k for k, _ in found] == ["a1", "a3"]
    assert found[0][1] == pytest.approx(float(v @ near), abs=1e-4)
    assert await index.search("tenant-c", "ctx1", near, 1) == []
    await index.remove("tenant-a", "ctx1", "a1")
    assert [k for k, _ in await index.search("tenant-a", "ctx1", near, 1)] == ["a3"]
    assert await index.count() == 3
    assert await index.clear("tenant-a") == 2
    assert await index.count() == 1


async def test_memory_index_bound_drops_oldest() -> None:
    index = MemoryVectorIndex(dim=2, max_per_namespace=2)
    for i in range(3):
        await index.add("ns", "c", f"k{i}", unit([1, i]))
    assert await index.count() == 2
    assert "k0" not in [k for k, _ in await index.search("ns", "c", unit([1, 0]), 5)]


async def test_get_returns_the_stored_vector(index: VectorIndex) -> None:
    v = unit([0.3, -1.7, 0.01, 2.2, -0.9, 0.123456, 1e-3, 0.7])
    w = unit([1, 2, 3, 4, 5, 6, 7, 8])
    await index.add("tenant-a", "ctx1", "a1", v)
    got = await index.get("tenant-a", "ctx1", "a1")
    assert got is not None and got.dtype == np.float32
    assert np.array_equal(got, v)  # bit for bit: verification compares against it
    assert await index.get("tenant-a", "ctx2", "a1") is None
    assert await index.get("tenant-b", "ctx1", "a1") is None
    assert await index.get("tenant-a", "ctx1", "missing") is None
    await index.add("tenant-a", "ctx1", "a1", w)
    assert np.array_equal(await index.get("tenant-a", "ctx1", "a1"), w)
    await index.remove("tenant-a", "ctx1", "a1")
    assert await index.get("tenant-a", "ctx1", "a1") is None
