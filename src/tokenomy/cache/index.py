"""Where semantic-cache vectors live: the ``VectorIndex`` contract and the in-process implementation.

Vectors are partitioned by ``(namespace, context)``: a search only ever looks
at entries of the same tenant whose conversation context (model, system prompt,
previous turns, parameters) is identical. Within a partition the in-process
index searches exactly (one matrix-vector product: ~5 ms at 100k vectors on
this machine, DESIGN.md §7). The shared implementation is pgvector
(``tokenomy.cache.pgvector_index``).
"""

from __future__ import annotations

import abc
import asyncio
from collections import OrderedDict

import numpy as np


class VectorIndex(abc.ABC):
    """Unit vectors keyed by cache key, searchable by cosine within a namespace and context."""

    @abc.abstractmethod
    async def add(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        """Insert or replace ``key``'s vector."""

    @abc.abstractmethod
    async def search(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        """The ``k`` nearest keys with their cosine similarity, best first."""

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
    """Rows of one (namespace, context): a growable float32 matrix and its keys.

    ``version`` changes whenever rows move (a removal swaps the last row into the
    hole), so a search run in another thread knows whether its row numbers still
    name the same keys. Appends never move rows.
    """

    __slots__ = ("matrix", "keys", "rows", "version")

    def __init__(self, dim: int) -> None:
        self.matrix = np.zeros((16, dim), dtype=np.float32)
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.version = 0

    def add(self, key: str, vector: np.ndarray) -> None:
        row = self.rows.get(key)
        if row is None:
            row = len(self.keys)
            if row == len(self.matrix):
                grown = np.zeros((len(self.matrix) * 2, self.matrix.shape[1]), dtype=np.float32)
                grown[:row] = self.matrix[:row]
                self.matrix = grown
            self.keys.append(key)
            self.rows[key] = row
        self.matrix[row] = vector

    def remove(self, key: str) -> bool:
        row = self.rows.pop(key, None)
        if row is None:
            return False
        self.version += 1
        last = len(self.keys) - 1
        if row != last:  # move the last row into the hole
            moved = self.keys[last]
            self.matrix[row] = self.matrix[last]
            self.keys[row] = moved
            self.rows[moved] = row
        self.keys.pop()
        return True

    def search(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        n = len(self.keys)
        if n == 0:
            return []
        top, scores = _top_k(self.matrix, n, vector, k)
        return [(self.keys[i], float(s)) for i, s in zip(top, scores)]

    async def search_off_loop(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        version, matrix, n = self.version, self.matrix, len(self.keys)
        top, scores = await asyncio.to_thread(_top_k, matrix, n, vector, k)
        if self.version != version:  # rows moved meanwhile: row numbers may name other keys now
            return self.search(vector, k)
        return [(self.keys[i], float(s)) for i, s in zip(top, scores)]


class MemoryVectorIndex(VectorIndex):
    """Exact search in process memory, bounded per namespace (oldest vectors dropped first)."""

    def __init__(self, dim: int, max_per_namespace: int = 200_000) -> None:
        self.dim = dim
        self.max_per_namespace = max_per_namespace
        self._partitions: dict[tuple[str, str], _Partition] = {}
        self._order: dict[str, OrderedDict[str, str]] = {}  # namespace → key → context, oldest first

    async def add(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        self.add_now(namespace, context, key, vector)

    def add_now(self, namespace: str, context: str, key: str, vector: np.ndarray) -> None:
        part = self._partitions.get((namespace, context))
        if part is None:
            part = self._partitions[(namespace, context)] = _Partition(self.dim)
        part.add(key, vector)
        order = self._order.setdefault(namespace, OrderedDict())
        order[key] = context
        order.move_to_end(key)
        while len(order) > self.max_per_namespace:
            old_key, old_context = order.popitem(last=False)
            self._remove(namespace, old_context, old_key)

    def add_many(self, namespace: str, context: str, keys: list[str], vectors: np.ndarray) -> None:
        """Bulk load one partition (benchmarks, evaluation, warm start)."""
        part = self._partitions.setdefault((namespace, context), _Partition(self.dim))
        start = len(part.keys)
        need = start + len(keys)
        if need > len(part.matrix):
            grown = np.zeros((need, self.dim), dtype=np.float32)
            grown[:start] = part.matrix[:start]
            part.matrix = grown
        part.matrix[start:need] = vectors
        order = self._order.setdefault(namespace, OrderedDict())
        for offset, key in enumerate(keys):
            part.keys.append(key)
            part.rows[key] = start + offset
            order[key] = context

    async def search(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        part = self._partitions.get((namespace, context))
        if part is None:
            return []
        if len(part.keys) >= OFFLOAD_ROWS:
            return await part.search_off_loop(vector, k)
        return part.search(vector, k)

    def search_now(self, namespace: str, context: str, vector: np.ndarray, k: int = 1) -> list[tuple[str, float]]:
        part = self._partitions.get((namespace, context))
        return [] if part is None else part.search(vector, k)

    def _remove(self, namespace: str, context: str, key: str) -> bool:
        part = self._partitions.get((namespace, context))
        if part is None or not part.remove(key):
            return False
        if not part.keys:
            del self._partitions[(namespace, context)]
        return True

    async def remove(self, namespace: str, context: str, key: str) -> None:
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
