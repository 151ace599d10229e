"""The verified mode's re-ranker: how likely a semantic candidate is to be the same request.

Cosine similarity alone ranks QQP's paraphrases and its hard negatives poorly
(DESIGN.md §7). Measured on ``qqp_dev`` (half the pairs to learn, half to test,
cut at a 1 % false-hit rate): cosine finds 15.0 % of duplicates, cosine + the
lexical guards 17.1 %, a logistic regression over lexical features 17.3 % —
and gradient-boosted trees over the lexical features *plus* a projection of the
two vectors' interactions (``u ∘ v`` and ``|u − v|``) 19.4 % (13.8 % against
10.0 % for cosine at 0.5 %). Linear models gain nothing from the interactions;
trees do, because what matters is which dimensions disagree, not a weighted sum.

- ``InteractionProjection``: the interactions have 768 dimensions; a PCA basis
  (fitted once, without labels, on the first candidates seen) keeps 16 of each,
  so labels are stored small and trees fit in about a second on 20k labels.
- ``Reranker``: ``HistGradientBoostingClassifier`` (scikit-learn) with sample
  weights (labels are importance-weighted, see ``verified.py``); deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenomy.cache.guards import Comparison

#: lexical features: bias, cosine (centred), cosine², overlap, words in one text only, length ratio, question word
N_LEXICAL = 7
#: principal components kept of each interaction (u ∘ v and |u − v|)
PROJECTED = 16


def lexical_features(similarity: float, comparison: Comparison) -> np.ndarray:
    s = (similarity - 0.9) * 10.0
    return np.array(
        [
            1.0,
            s,
            s * s,
            comparison.jaccard,
            min(comparison.diff_words, 12) / 12.0,
            comparison.length_ratio,
            float(comparison.question_word_differs),
        ],
        dtype=np.float32,
    )


def interactions(query: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """``[u ∘ v, |u − v|]`` of two unit vectors (float32, 2 × dim)."""
    return np.concatenate([query * cached, np.abs(query - cached)]).astype(np.float32)


@dataclass(frozen=True)
class InteractionProjection:
    """A PCA basis for each half of ``interactions``; fitted on unlabelled candidates."""

    mean: np.ndarray  # (2·dim,)
    basis: np.ndarray  # (2·dim, 2·PROJECTED), block-diagonal: product block, difference block

    @classmethod
    def fit(cls, samples: np.ndarray, keep: int = PROJECTED) -> InteractionProjection:
        dim = samples.shape[1] // 2
        mean = samples.mean(axis=0)
        basis = np.zeros((samples.shape[1], 2 * keep), dtype=np.float32)
        for half in range(2):
            block = samples[:, half * dim : (half + 1) * dim] - mean[half * dim : (half + 1) * dim]
            _, _, vt = np.linalg.svd(block, full_matrices=False)
            k = min(keep, vt.shape[0])
            basis[half * dim : (half + 1) * dim, half * keep : half * keep + k] = vt[:k].T
        return cls(mean.astype(np.float32), basis)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) @ self.basis).astype(np.float32)


class Reranker:
    """P(same request | features): gradient-boosted trees fitted on weighted labels.

    scikit-learn fits the trees and scores batches (refits rescore every label);
    scoring *one* candidate through its ``predict_proba`` costs ~1.6 ms of input
    validation, too much for the event loop, so the trees are also flattened
    into arrays and walked all at once with numpy (tens of µs).
    """

    def __init__(self, model: object, n_features: int) -> None:
        self._model = model
        self._trees = _Trees.from_sklearn(model)
        self.n_features = n_features

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, w: np.ndarray, iterations: int = 100) -> Reranker:
        """Fit on one thread: a refit runs beside the event loop, and must not take every core from it."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from threadpoolctl import threadpool_limits

        model = HistGradientBoostingClassifier(
            max_iter=iterations,
            learning_rate=0.05,
            max_leaf_nodes=8,
            min_samples_leaf=40,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=0,
        )
        with threadpool_limits(limits=1, user_api="openmp"):
            model.fit(x, y.astype(np.int8), sample_weight=w)
        return cls(model, x.shape[1])

    def scores(self, x: np.ndarray) -> np.ndarray:
        return self._model.predict_proba(x)[:, 1]  # type: ignore[attr-defined]

    def score(self, x: np.ndarray) -> float:
        return self._trees.probability(np.asarray(x, dtype=np.float64))


@dataclass(frozen=True)
class _Trees:
    """Every node of a fitted binary ``HistGradientBoostingClassifier``, all trees in flat arrays.

    ``left``/``right`` are indices into the flat arrays; a leaf points at itself,
    so walking every tree ``depth`` steps from its root lands on its leaf.
    """

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    baseline: float
    depth: int

    @classmethod
    def from_sklearn(cls, model: object) -> _Trees:
        nodes = [predictors[0].nodes for predictors in model._predictors]  # type: ignore[attr-defined]
        sizes = np.array([len(n) for n in nodes], np.int64)
        roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        flat = np.concatenate(nodes)
        offset = np.repeat(roots, sizes)
        own = np.arange(len(flat), dtype=np.int64)
        leaf = flat["is_leaf"].astype(bool)
        left = np.where(leaf, own, flat["left"].astype(np.int64) + offset)
        right = np.where(leaf, own, flat["right"].astype(np.int64) + offset)
        baseline = float(np.ravel(model._baseline_prediction)[0])  # type: ignore[attr-defined]
        return cls(
            roots,
            flat["feature_idx"].astype(np.int64),
            flat["num_threshold"].astype(np.float64),
            left,
            right,
            flat["value"].astype(np.float64),
            baseline,
            int(flat["depth"].max()) if len(flat) else 0,
        )

    def probability(self, x: np.ndarray) -> float:
        node = self.roots
        for _ in range(self.depth):
            step = np.where(x[self.feature[node]] <= self.threshold[node], self.left[node], self.right[node])
            if np.array_equal(step, node):
                break  # every tree is at a leaf
            node = step
        raw = self.baseline + float(self.value[node].sum())
        return 1.0 / (1.0 + np.exp(-max(-30.0, min(30.0, raw))))
