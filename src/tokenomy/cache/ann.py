"""Approximate nearest-neighbour search for the large partitions of the in-process vector index.

Below ``ann_min_entries`` vectors a partition is searched exactly (one
matrix-vector product: ~2 ms at 10k vectors here). Above it, an IVF index
from faiss (``faiss-cpu``) answers instead: k-means splits the partition into
cells ("lists"); each vector is kept, 8-bit scalar-quantised, in the list of
its nearest centroid, and a query scans only the ``nprobe`` lists nearest to it.
The few best candidates are then re-scored against the float32 rows the
partition keeps anyway, so the similarities returned are exact cosines: only
*which* neighbours are found is approximate (recall@1 against exact search is
printed by ``bench/cache_lookup.py``).

Why IVF and not HNSW (hnswlib, usearch, faiss HNSW): cache eviction, TTL and
invalidation remove entries all the time. IVF removes one exactly and in O(1)
(a hash table from id to list slot) and inserts one in ~0.2 ms; HNSW marks
deleted nodes and degrades until rebuilt, and costs 40–60 CPU-seconds per 100k
inserts (DESIGN.md §7) against a few seconds of IVF training.

Training happens in a worker thread on a snapshot of the partition; changes
made meanwhile are journalled and replayed when the new index is installed, on
the owner's thread, at its next use — searches stay exact until then. Nothing
here is thread-safe: only the partition's owner calls it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: k-means is trained on at most this many vectors per list (faiss's own default is 256: slower, no better here)
TRAIN_POINTS_PER_LIST = 64
#: k-means iterations: faiss's default 25 gave the same recall@1 at 100k here (0.993) for 1.4–2× the build time
TRAIN_ITERATIONS = 10
#: faiss refuses to train with fewer points than this per list
MIN_POINTS_PER_LIST = 39
#: automatic probing never scans fewer lists than this
MIN_PROBES = 64
#: candidates re-scored exactly, so quantisation error never reorders the best few
RERANK = 8


class ANNUnavailable(RuntimeError):
    """faiss is not installed (``pip install 'tokenomy[semantic]'``)."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ANNUnavailable("approximate search needs faiss-cpu: pip install 'tokenomy[semantic]'") from exc
    return faiss


def faiss_available() -> bool:
    try:
        _faiss()
    except ANNUnavailable:
        return False
    return True


@dataclass(frozen=True)
class IVFShape:
    """How many lists to split ``n`` vectors into, and how many of them a query scans."""

    lists: int
    probes: int

    @classmethod
    def for_size(cls, n: int, probes: int | None = None) -> IVFShape:
        # ~2·√n lists (100k → 512, 1M → 2048): a query then compares with √n-ish centroids
        lists = min(4096, 2 ** round(math.log2(max(2 * math.sqrt(n), 1))))
        while lists > 1 and lists > n / MIN_POINTS_PER_LIST:
            lists //= 2
        if probes is None:
            # 2·√lists, at least 64: recall@1 ≥ 0.99 on the bench's questions at 10k, 100k and 1M
            # (32 probes gave 0.98 at 10k and 100k; a fixed share of the lists would scan 4× more at 1M)
            probes = max(MIN_PROBES, math.ceil(2 * math.sqrt(lists)))
        return cls(lists, max(1, min(lists, probes)))


class IVFIndex:
    """Labelled unit vectors in a faiss IVF-SQ8 index (inner product = cosine)."""

    def __init__(self, index: Any, shape: IVFShape, trained_size: int) -> None:
        self._index = index
        self.shape = shape
        #: partition size when trained: the lists are balanced for about this many vectors
        self.trained_size = trained_size

    @classmethod
    def train(cls, vectors: np.ndarray, labels: np.ndarray, shape: IVFShape, seed: int = 0) -> IVFIndex:
        """Train on ``vectors`` (rows, float32, unit) and add them under ``labels`` (int64)."""
        faiss = _faiss()
        n, dim = vectors.shape
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, shape.lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.spherical = True  # unit centroids: assignment by inner product is then by angle
        index.cp.seed = seed
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        index.cp.niter = TRAIN_ITERATIONS
        limit = shape.lists * TRAIN_POINTS_PER_LIST
        if n > limit:
            sample = vectors[np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))]
        else:
            sample = np.ascontiguousarray(vectors)
        index.verbose = False
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) removal by id
        index.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(labels, dtype=np.int64))
        index.nprobe = shape.probes
        return cls(index, shape, n)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.remove(labels)  # the id map would otherwise point at the new copy and orphan the old one
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), labels)

    def remove(self, labels: np.ndarray) -> None:
        faiss = _faiss()
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        # the hash-table removal path accepts an IDSelectorArray only (faiss turns a bare array into a batch)
        self._index.remove_ids(faiss.IDSelectorArray(len(labels), faiss.swig_ptr(labels)))

    def search(self, vector: np.ndarray, n: int) -> np.ndarray:
        """Labels of about the ``n`` nearest vectors (approximate order)."""
        _, found = self._index.search(np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1), n)
        row = found[0]
        return row[row >= 0]


@dataclass(frozen=True)
class ANNSettings:
    """When a partition gets an approximate index, and how hard a query looks."""

    #: partitions with at least this many vectors are searched approximately (``None``: never)
    min_entries: int | None = 10_000
    #: lists a query scans (higher: better recall, slower); ``None``: 2·√lists, at least 64
    probes: int | None = None


class PartitionANN:
    """The approximate index of one partition, and its (re)builds.

    The partition reports every row whose content changed (``touched``); the
    index is (re)trained when the partition reaches ``min_entries``, grows to 4×
    or shrinks to ¼ of the size it was trained at, and dropped below half of
    ``min_entries``.
    """

    __slots__ = ("settings", "executor", "ivf", "_building", "_build_size", "_journal", "_failed_at")

    def __init__(self, settings: ANNSettings, executor: Callable[[], Executor]) -> None:
        self.settings = settings
        self.executor = executor
        self.ivf: IVFIndex | None = None
        self._building: Future[IVFIndex] | None = None
        self._build_size = 0
        self._journal: set[int] = set()  # labels touched since the build's snapshot
        self._failed_at = 0

    @property
    def building(self) -> bool:
        return self._building is not None

    def touched(self, labels: np.ndarray, vectors: np.ndarray | None) -> None:
        """Rows with these labels were added or replaced (``vectors``) or removed (``None``)."""
        if self._building is not None:
            self._journal.update(int(label) for label in labels)
        if self.ivf is not None:
            if vectors is None:
                self.ivf.remove(labels)
            else:
                self.ivf.add(labels, vectors)

    def maintain(self, size: int, snapshot: Callable[[], tuple[np.ndarray, np.ndarray]],
                 current: Callable[[int], np.ndarray | None]) -> None:
        """Install a finished build; start one when the partition needs it.

        ``snapshot()`` gives (vectors, labels) of every row now (the vectors may be a
        live view: rows changed later are journalled); ``current(label)`` a label's
        vector now, or ``None`` once removed.
        """
        if self._building is not None:
            if not self._building.done():
                return
            self._install(current)
        minimum = self.settings.min_entries
        if minimum is None:
            return
        if self.ivf is not None and size < minimum // 2:
            self.ivf = None  # small again: exact search is faster
            return
        if self._failed_at and size < 2 * self._failed_at:
            return  # the last build failed: try again once the partition has doubled
        if self.ivf is None:
            if size >= minimum:
                self._start(size, snapshot)
        elif size >= 4 * self.ivf.trained_size or size <= self.ivf.trained_size // 4:
            self._start(size, snapshot)  # lists out of balance for this size: retrain (the old index serves meanwhile)

    def wait(self, current: Callable[[int], np.ndarray | None]) -> None:
        """Block until a running build is installed (benchmarks, tests)."""
        if self._building is not None:
            self._building.exception()  # waits; its error is reported by _install
            self._install(current)

    def _start(self, size: int, snapshot: Callable[[], tuple[np.ndarray, np.ndarray]]) -> None:
        vectors, labels = snapshot()
        shape = IVFShape.for_size(size, self.settings.probes)
        self._journal = set()
        self._build_size = size
        self._building = self.executor().submit(IVFIndex.train, vectors, labels, shape)

    def _install(self, current: Callable[[int], np.ndarray | None]) -> None:
        assert self._building is not None
        future, self._building = self._building, None
        journal, self._journal = self._journal, set()
        try:
            ivf = future.result()
        except Exception:
            log.exception("building the approximate index of %d vectors failed", self._build_size)
            self._failed_at = self._build_size
            return
        self._failed_at = 0
        if len(journal) > ivf.trained_size:
            return  # more changed meanwhile than was built (a bulk load): the caller builds again from now
        # replay what changed since the snapshot, from the partition's state now
        touched = np.fromiter(journal, dtype=np.int64, count=len(journal))
        ivf.remove(touched)
        live = [(label, vector) for label in journal if (vector := current(label)) is not None]
        if live:
            ivf.add(np.array([label for label, _ in live], dtype=np.int64), np.stack([v for _, v in live]))
        self.ivf = ivf

    def search(self, vector: np.ndarray, k: int) -> np.ndarray | None:
        """Candidate labels (more than ``k``, for exact re-scoring), or ``None`` when there is no index yet."""
        if self.ivf is None:
            return None
        return self.ivf.search(vector, max(k, RERANK))
