"""Where semantic-cache vectors live: the ``VectorIndex`` contract and the in-process implementation.

Vectors are partitioned by ``(namespace, context)``: a search only ever looks
at entries of the same tenant whose conversation context (model, system prompt,
previous turns, parameters) is identical. Within a partition the in-process
index searches exactly (one matrix-vector product) up to ``ann_min_entries``
vectors, and through an approximate faiss IVF index above
(``tokenomy.cache.ann``; exact scores, approximate neighbours). The shared
implementation is pgvector (``tokenomy.cache.pgvector_index``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tokenomy.cache.ann import ANNSettings, PartitionANN, faiss_available

log = logging.getLogger(__name__)


class VectorIndex(abc.ABC):
    """Unit vectors keyed by cache key, searchable by cosine within a namespace and context."""

    @abc.abstractmethod
    async def add(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        """Insert or replace ``key``'s vector."""

    @abc.abstractmethod
    async def search(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        """The ``k`` nearest keys with their cosine similarity, best first."""

    @abc.abstractmethod
    async def get(self, namespace: str, context: str, key: str) -> np.ndarray | None:
        """``key``'s stored vector (float32, unit), or ``None`` if it is not held."""

    @abc.abstractmethod
    async def remove(self, namespace: str, context: str, key: str) -> None:
        """Forget ``key`` (no error if absent)."""

    @abc.abstractmethod
    async def clear(self, namespace: str | None = None) -> int:
        """Drop a namespace's vectors (all with ``None``); returns how many went."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Vectors held."""

    async def start(self) -> None:
        """Connect and create tables (shared indexes)."""

    async def aclose(self) -> None:
        """Release connections."""


#: partitions at least this large are searched off the event loop (a 100k search takes a few ms)
OFFLOAD_ROWS = 20_000


def _top_k(matrix: np.ndarray, n: int, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = matrix[:n] @ vector
    if n <= k:
        top = np.argsort(-scores)
    else:
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
    return top, scores[top]


class _Partition:
    """Rows of one (namespace, context): a growable float32 matrix, its keys, and
    (when large) an approximate index over it.

    ``version`` changes whenever rows move (a removal swaps the last row into the
    hole), so a search run in another thread knows whether its row numbers still
    name the same keys. Appends never move rows. Each row also carries a label,
    stable while its key lives, by which the approximate index knows it.
    """

    __slots__ = ("matrix", "keys", "rows", "version", "labels", "label_rows", "next_label", "ann")

    def __init__(self, dim: int, ann: PartitionANN) -> None:
        self.matrix = np.zeros((16, dim), dtype=np.float32)
        self.labels = np.zeros(16, dtype=np.int64)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.label_rows: dict[int, int] = {}
        self.next_label = 0
        self.version = 0
        self.ann = ann

    def _grow(self, need: int) -> None:
        if need <= len(self.matrix):
            return
        size = max(need, len(self.matrix) * 2)
        grown = np.zeros((size, self.matrix.shape[1]), dtype=np.float32)
        grown[: len(self.keys)] = self.matrix[: len(self.keys)]
        self.matrix = grown  # a build reading the old matrix keeps it alive; rows changed since are journalled
        labels = np.zeros(size, dtype=np.int64)
        labels[: len(self.keys)] = self.labels[: len(self.keys)]
        self.labels = labels

    def _append(self, key: str) -> int:
        row = len(self.keys)
        self.keys.append(key)
        self.rows[key] = row
        self.labels[row] = label = self.next_label
        self.label_rows[label] = row
        self.next_label += 1
        return row

    def add(self, key: str, vector: np.ndarray) -> None:
        row = self.rows.get(key)
        if row is None:
            self._grow(len(self.keys) + 1)
            row = self._append(key)
        self.matrix[row] = vector
        self.ann.touched(self.labels[row : row + 1], self.matrix[row : row + 1])
        self.maintain()

    def add_many(self, keys: list[str], vectors: np.ndarray) -> None:
        fresh = [i for i, key in enumerate(keys) if key not in self.rows]
        for i in sorted(set(range(len(keys))) - set(fresh)):
            self.add(keys[i], vectors[i])
        start = len(self.keys)
        self._grow(start + len(fresh))
        for i in fresh:
            self._append(keys[i])
        end = len(self.keys)
        self.matrix[start:end] = vectors[fresh]
        if end > start:
            self.ann.touched(self.labels[start:end], self.matrix[start:end])
        self.maintain()

    def remove(self, key: str) -> bool:
        row = self.rows.pop(key, None)
        if row is None:
            return False
        self.version += 1
        label = int(self.labels[row])
        del self.label_rows[label]
        self.ann.touched(self.labels[row : row + 1].copy(), None)
        last = len(self.keys) - 1
        if row != last:  # move the last row into the hole
            moved = self.keys[last]
            self.matrix[row] = self.matrix[last]
            self.keys[row] = moved
            self.rows[moved] = row
            self.labels[row] = moved_label = self.labels[last]
            self.label_rows[int(moved_label)] = row
            if self.ann.building:  # a build may have read either row mid-move: replay the moved one
                self.ann.touched(self.labels[row : row + 1], self.matrix[row : row + 1])
        self.keys.pop()
        self.maintain()
        return True

    def get(self, key: str) -> np.ndarray | None:
        row = self.rows.get(key)
        return None if row is None else self.matrix[row].copy()

    # -- approximate index upkeep -----------------------------------------------------------
    def maintain(self) -> None:
        self.ann.maintain(len(self.keys), self._snapshot, self._current)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.keys)
        return self.matrix[:n], self.labels[:n].copy()

    def _current(self, label: int) -> np.ndarray | None:
        row = self.label_rows.get(label)
        return None if row is None else self.matrix[row]

    # -- search -----------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        n = len(self.keys)
        if n == 0:
            return []
        self.maintain()
        candidates = self.ann.search(vector, k)
        if candidates is not None:
            return self._rescore(candidates, vector, k)
        top, scores = _top_k(self.matrix, n, vector, k)
        return [(self.keys[i], float(s)) for i, s in zip(top, scores)]

    def _rescore(self, labels: np.ndarray, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """Exact cosines for the approximate candidates, best first."""
        rows = [row for row in map(self.label_rows.get, labels.tolist()) if row is not None]
        if not rows:
            return []
        scores = self.matrix[rows] @ vector
        order = np.argsort(-scores)[:k]
        return [(self.keys[rows[i]], float(scores[i])) for i in order]

    @property
    def approximate(self) -> bool:
        return self.ann.ivf is not None

    async def search_off_loop(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        version, matrix, n = self.version, self.matrix, len(self.keys)
        top, scores = await asyncio.to_thread(_top_k, matrix, n, vector, k)
        if self.version != version:  # rows moved meanwhile: row numbers may name other keys now
            return self.search(vector, k)
        return [(self.keys[i], float(s)) for i, s in zip(top, scores)]


class MemoryVectorIndex(VectorIndex):
    """Vectors in process memory, bounded per namespace (oldest vectors dropped first).

    Partitions smaller than ``ann.min_entries`` are searched exactly; larger ones
    through an approximate index (``tokenomy.cache.ann``) built in a background
    thread, exact search serving until it is ready.
    """

    def __init__(self, dim: int, max_per_namespace: int = 200_000, ann: ANNSettings | None = None) -> None:
        self.dim = dim
        self.max_per_namespace = max_per_namespace
        self.ann = ann if ann is not None else ANNSettings()
        if self.ann.min_entries is not None and not faiss_available():
            log.warning("faiss-cpu is not installed: semantic-cache partitions are searched exactly at any size")
            self.ann = ANNSettings(min_entries=None)
        self._partitions: dict[tuple[str, str], _Partition] = {}
        self._order: dict[str, OrderedDict[str, str]] = {}  # namespace → key → context, oldest first
        self._executor: ThreadPoolExecutor | None = None

    def _builder(self) -> ThreadPoolExecutor:
        # one build at a time: training uses the cores the gateway answers with
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenomy-ann")
        return self._executor

    def _partition(self, namespace: str, context: str) -> _Partition:
        part = self._partitions.get((namespace, context))
        if part is None:
            part = self._partitions[(namespace, context)] = _Partition(self.dim, PartitionANN(self.ann, self._builder))
        return part

    async def add(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        self.add_now(namespace, context, key, vector)

    def add_now(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        self._partition(namespace, context).add(key, vector)
        order = self._order.setdefault(namespace, OrderedDict())
        order[key] = context
        order.move_to_end(key)
        self._evict(namespace)

    def add_many(self, namespace: str, context: str, keys: list[str], vectors: np.ndarray) -> None:
        """Bulk load one partition (benchmarks, evaluation, warm start)."""
        self._partition(namespace, context).add_many(keys, vectors)
        order = self._order.setdefault(namespace, OrderedDict())
        for key in keys:
            order[key] = context
            order.move_to_end(key)
        self._evict(namespace)

    def _evict(self, namespace: str) -> None:
        order = self._order[namespace]
        while len(order) > self.max_per_namespace:
            old_key, old_context = order.popitem(last=False)
            self._remove(namespace, old_context, old_key)

    async def search(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        part = self._partitions.get((namespace, context))
        if part is None:
            return []
        part.maintain()
        # approximate search takes well under a millisecond at 100k: inline beats a thread hop
        if not part.approximate and len(part.keys) >= OFFLOAD_ROWS:
            return await part.search_off_loop(vector, k)
        return part.search(vector, k)

    def search_now(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        part = self._partitions.get((namespace, context))
        return [] if part is None else part.search(vector, k)

    def search_exact(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        """Exact search whatever the partition's size (recall measurements)."""
        part = self._partitions.get((namespace, context))
        if part is None or not part.keys:
            return []
        top, scores = _top_k(part.matrix, len(part.keys), vector, k)
        return [(part.keys[i], float(s)) for i, s in zip(top, scores)]

    async def get(self, namespace: str, context: str, key: str) -> np.ndarray | None:
        part = self._partitions.get((namespace, context))
        return None if part is None else part.get(key)

    def approximate(self, namespace: str, context: str) -> bool:
        """Whether this partition is now searched through its approximate index."""
        part = self._partitions.get((namespace, context))
        return part is not None and part.approximate

    def wait_for_builds(self) -> None:
        """Block until every approximate index being built is installed (benchmarks, tests)."""
        for part in list(self._partitions.values()):
            part.ann.wait(part._current)
            part.maintain()
            part.ann.wait(part._current)

    def _remove(self, namespace: str, context: str, key: str) -> bool:
        part = self._partitions.get((namespace, context))
        if part is None or not part.remove(key):
            return False
        if not part.keys:
            del self._partitions[(namespace, context)]
        return True

    async def remove(self, namespace: str, context: str, key: str) -> None:
        self.remove_now(namespace, context, key)

    def remove_now(self, namespace: str, context: str, key: str) -> None:
        if self._remove(namespace, context, key):
            self._order.get(namespace, OrderedDict()).pop(key, None)

    async def clear(self, namespace: str | None = None) -> int:
        doomed = [p for p in self._partitions if namespace is None or p[0] == namespace]
        removed = sum(len(self._partitions.pop(p).keys) for p in doomed)
        if namespace is None:
            self._order.clear()
        else:
            self._order.pop(namespace, None)
        return removed

    async def count(self) -> int:
        return sum(len(p.keys) for p in self._partitions.values())

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
