"""The in-process index above its approximate-search threshold (faiss IVF): same contract as exact search."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest

pytest.importorskip("faiss")

from tokenomy.cache.ann import ANNSettings, IVFShape  # noqa: E402
from tokenomy.cache.index import MemoryVectorIndex  # noqa: E402

DIM = 16


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few centres, like text embeddings (random ones have no neighbours to find)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def near(v: np.ndarray, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    q = v + noise * rng.standard_normal(DIM).astype(np.float32)
    return q / np.linalg.norm(q)


def ann_index(min_entries: int = 500, probes: int | None = None, max_per_namespace: int = 100_000) -> MemoryVectorIndex:
    return MemoryVectorIndex(DIM, max_per_namespace, ANNSettings(min_entries=min_entries, probes=probes))


async def fill(index: MemoryVectorIndex, vectors: np.ndarray, ns: str = "ns", ctx: str = "c", prefix: str = "k") -> None:
    for i, v in enumerate(vectors):
        await index.add(ns, ctx, f"{prefix}{i}", v)
    index.wait_for_builds()


async def test_small_partitions_stay_exact_large_ones_go_approximate() -> None:
    index = ann_index(min_entries=500)
    await fill(index, clustered(499))
    assert not index.approximate("ns", "c")
    await index.add("ns", "c", "one-more", clustered(1, seed=9)[0])
    index.wait_for_builds()
    assert index.approximate("ns", "c")


async def test_approximate_results_equal_exact_on_a_small_set() -> None:
    vectors = clustered(2_000)
    index = ann_index(probes=10_000)  # every list scanned: only quantisation differs, and re-scoring undoes it
    await fill(index, vectors)
    assert index.approximate("ns", "c")
    rng = np.random.default_rng(1)
    for i in range(0, 2_000, 20):
        query = near(vectors[i], rng, noise=0.3)
        found = await index.search("ns", "c", query, 3)
        exact = index.search_exact("ns", "c", query, 3)
        assert [k for k, _ in found] == [k for k, _ in exact]
        assert [s for _, s in found] == pytest.approx([s for _, s in exact], abs=1e-6)  # exact cosines


async def test_default_probes_find_near_duplicates() -> None:
    vectors = clustered(5_000, seed=2)
    index = ann_index()
    await fill(index, vectors)
    rng = np.random.default_rng(3)
    picks = rng.choice(5_000, 200, replace=False)
    found = [(await index.search("ns", "c", near(vectors[i], rng, 0.02), 1))[0][0] for i in picks]
    recall = sum(f == f"k{i}" for f, i in zip(found, picks)) / len(picks)
    assert recall >= 0.98


async def test_insert_replace_remove_and_evict_above_the_threshold() -> None:
    vectors = clustered(1_300, seed=4)
    index = ann_index(max_per_namespace=1_100)
    await fill(index, vectors[:1_000])
    assert index.approximate("ns", "c")
    # inserted after the build: found at once
    for i in range(1_000, 1_100):
        await index.add("ns", "c", f"k{i}", vectors[i])
        assert (await index.search("ns", "c", vectors[i], 1))[0][0] == f"k{i}"
    # replaced: found by its new vector, no longer by its old one
    await index.add("ns", "c", "k5", vectors[1_299])
    assert (await index.search("ns", "c", vectors[1_299], 1))[0][0] == "k5"
    assert all(k != "k5" or s > 0.999 for k, s in await index.search("ns", "c", vectors[5], 3))
    # removed (invalidated, expired): never returned
    for i in range(0, 300, 3):
        await index.remove("ns", "c", f"k{i}")
    for i in range(0, 300, 3):
        assert f"k{i}" not in [k for k, _ in await index.search("ns", "c", vectors[i], 5)]
    assert await index.get("ns", "c", "k0") is None
    # over the namespace bound the oldest go first, from the approximate index too
    for i in range(1_100, 1_250):
        await index.add("ns", "c", f"k{i}", vectors[i])
    assert await index.count() == 1_100
    evicted = ["k1", "k2"]  # the oldest survivors of the removals above
    for key in evicted:
        i = int(key[1:])
        assert key not in [k for k, _ in await index.search("ns", "c", vectors[i], 5)]
    part = index._partitions[("ns", "c")]
    assert part.ann.ivf is not None and len(part.ann.ivf) == len(part.keys)


async def test_namespaces_and_contexts_stay_apart() -> None:
    vectors = clustered(800, seed=5)
    index = ann_index()
    await fill(index, vectors, ns="a", prefix="a")
    await fill(index, vectors, ns="b", prefix="b")
    await fill(index, vectors[:100], ns="a", ctx="other", prefix="o")
    assert index.approximate("a", "c") and index.approximate("b", "c") and not index.approximate("a", "other")
    for i in range(0, 800, 40):
        assert (await index.search("a", "c", vectors[i], 1))[0][0] == f"a{i}"
        assert (await index.search("b", "c", vectors[i], 1))[0][0] == f"b{i}"
    assert await index.clear("a") == 900
    assert await index.search("a", "c", vectors[0], 1) == []
    assert (await index.search("b", "c", vectors[0], 1))[0][0] == "b0"


class HeldExecutor(Executor):
    """Runs submitted builds only when told to: changes can then land while a build is "running"."""

    def __init__(self) -> None:
        self.held: list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self.held.append((future, fn, args))
        return future

    def release(self) -> None:
        while self.held:
            future, fn, args = self.held.pop(0)
            try:
                future.set_result(fn(*args))
            except Exception as exc:  # handed to the index, which reports it
                future.set_exception(exc)


async def test_changes_during_a_build_are_replayed_into_it() -> None:
    vectors = clustered(1_000, seed=6)
    index = ann_index()
    held = HeldExecutor()
    index._builder = lambda: held  # type: ignore[method-assign]
    for i in range(600):
        await index.add("ns", "c", f"k{i}", vectors[i])
    assert len(held.held) == 1 and not index.approximate("ns", "c")
    assert (await index.search("ns", "c", vectors[3], 1))[0][0] == "k3"  # exact meanwhile
    for i in range(600, 700):
        await index.add("ns", "c", f"k{i}", vectors[i])
    for i in range(0, 100, 2):  # removals move the last rows into the holes
        await index.remove("ns", "c", f"k{i}")
    await index.add("ns", "c", "k1", vectors[900])  # replaced
    held.release()
    await index.search("ns", "c", vectors[0], 1)  # installs the build
    assert index.approximate("ns", "c")
    part = index._partitions[("ns", "c")]
    assert part.ann.ivf is not None and len(part.ann.ivf) == len(part.keys) == 650
    for i in range(700):
        key = f"k{i}"
        found = [k for k, _ in await index.search("ns", "c", vectors[i], 3)]
        if i < 100 and i % 2 == 0:
            assert key not in found
        elif i != 1:
            assert found[0] == key
    assert (await index.search("ns", "c", vectors[900], 1))[0][0] == "k1"


async def test_shrinking_partition_returns_to_exact_search() -> None:
    vectors = clustered(600, seed=7)
    index = ann_index(min_entries=500)
    await fill(index, vectors)
    assert index.approximate("ns", "c")
    for i in range(400):
        await index.remove("ns", "c", f"k{i}")
    assert not index.approximate("ns", "c")
    assert (await index.search("ns", "c", vectors[500], 1))[0][0] == "k500"


async def test_a_failed_build_leaves_exact_search_serving(caplog: pytest.LogCaptureFixture) -> None:
    index = ann_index(min_entries=500)

    class Broken(HeldExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_exception(RuntimeError("no memory"))
            return future

    index._builder = lambda: Broken()  # type: ignore[method-assign]
    vectors = clustered(600, seed=8)
    await fill(index, vectors)
    assert not index.approximate("ns", "c")
    assert "building the approximate index" in caplog.text
    assert (await index.search("ns", "c", vectors[42], 1))[0][0] == "k42"


def test_ivf_shape_grows_with_the_partition() -> None:
    small, mid, large = (IVFShape.for_size(n) for n in (20_000, 100_000, 1_000_000))
    assert small.lists < mid.lists < large.lists <= 4096
    assert (mid.lists, mid.probes, large.lists, large.probes) == (512, 64, 2048, 91)
    assert small.probes == 64
    tiny = IVFShape.for_size(100)
    assert 1 <= tiny.probes <= tiny.lists
    assert IVFShape.for_size(100_000, probes=7).probes == 7


async def test_a_build_outgrown_during_a_bulk_load_is_redone_from_the_current_rows() -> None:
    vectors = clustered(3_000, seed=9)
    index = ann_index()
    held = HeldExecutor()
    index._builder = lambda: held  # type: ignore[method-assign]
    index.add_many("ns", "c", [f"k{i}" for i in range(600)], vectors[:600])
    index.add_many("ns", "c", [f"k{i}" for i in range(600, 3_000)], vectors[600:])
    held.release()
    await index.search("ns", "c", vectors[0], 1)  # too much changed to replay: a new build from all rows
    assert not index.approximate("ns", "c") and len(held.held) == 1
    held.release()
    assert (await index.search("ns", "c", vectors[2_999], 1))[0][0] == "k2999"
    part = index._partitions[("ns", "c")]
    assert part.ann.ivf is not None and len(part.ann.ivf) == 3_000 and part.ann.ivf.trained_size == 3_000
