"""Deciding whether a semantic match may be served: fixed threshold, or verified (learned online).

Verified mode (vCache-style) learns from labels instead of trusting one number:

- **Labels** come from sampled verification (a fraction of would-be hits also
  goes upstream and the fresh answer is compared with the cached one), from
  exploration (a candidate that was not served gets compared with the fresh
  answer the miss fetched anyway — free), and from ``POST /v1/feedback``.
- **A re-ranker**: weighted logistic regression over the cosine similarity and
  lexical features (overlap, words only in one text, length ratio), refitted
  as labels arrive. Guards (negation, numbers, entities, opposites) are hard
  rules before it.
- **A threshold under δ**: the re-ranker's score must clear the lowest cut at
  which the *upper confidence bound* of the error among served hits is ≤ δ
  (Wilson bound on importance-weighted labels: verified hits count 1/fraction).
  Until enough labels exist, a conservative prior applies (cosine ≥ ``cold_threshold``).
- **Per-entry thresholds**: an entry found wrong at similarity s is never again
  served below s + margin; an entry found wrong twice is only served exactly.

So the error rate among served hits converges to at most δ whatever the domain,
and the hit rate grows as the re-ranker learns what a paraphrase looks like there.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tokenomy.cache.guards import Comparison

HIT, VERIFY, EXPLORE, REJECT = "hit", "verify", "explore", "reject"

#: features: bias, cosine (centred), cosine², overlap, words in one text only, length ratio
N_FEATURES = 6


def features(similarity: float, comparison: Comparison) -> np.ndarray:
    s = (similarity - 0.9) * 10.0
    return np.array(
        [
            1.0,
            s,
            s * s,
            comparison.jaccard,
            min(comparison.diff_words, 12) / 12.0,
            comparison.length_ratio,
        ],
        dtype=np.float64,
    )


@dataclass(slots=True)
class Decision:
    action: str  # hit | verify | explore | reject
    similarity: float
    score: float | None = None
    reason: str = ""
    features: np.ndarray | None = None
    #: how likely this candidate was to get a label if it had been a hit (for importance weights)
    label_weight: float = 1.0


class Policy:
    """Fixed-threshold policy (the baseline): serve when similarity ≥ threshold and guards pass."""

    def __init__(self, threshold: float, min_similarity: float, guards: bool = True) -> None:
        self.threshold = threshold
        self.min_similarity = min_similarity
        self.guards = guards

    def decide(self, entry: str, similarity: float, comparison: Comparison) -> Decision:
        if self.guards and not comparison.passed:
            return Decision(REJECT, similarity, reason=",".join(comparison.reasons))
        if similarity >= self.threshold:
            return Decision(HIT, similarity)
        return Decision(REJECT, similarity, reason="below threshold")

    def observe(self, decision: Decision, correct: bool, entry: str | None = None, *, feedback: bool = False) -> None:
        """Fixed thresholds learn nothing."""


@dataclass(slots=True)
class _EntryStats:
    wrong_at: float = -1.0  # highest similarity at which this entry was found wrong
    wrong: int = 0
    right: int = 0


@dataclass
class VerifiedPolicy(Policy):
    """Learned per-entry thresholds and a re-ranker under a target error δ (see module doc)."""

    target_error: float = 0.01
    verify_fraction: float = 0.05
    min_similarity: float = 0.80
    guards: bool = True
    cold_threshold: float = 0.97
    min_labels: int = 200
    refit_every: int = 100
    max_observations: int = 50_000
    margin: float = 0.01
    z: float = 1.645  # one-sided 95 % upper bound
    seed: int | None = None
    weights: np.ndarray | None = None
    cut: float | None = None  # re-ranker score a hit must reach
    _x: deque = field(default_factory=deque)
    _y: deque = field(default_factory=deque)
    _w: deque = field(default_factory=deque)
    _since_fit: int = 0
    _entries: dict[str, _EntryStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threshold = self.cold_threshold
        self._rng = random.Random(self.seed)
        self._x = deque(maxlen=self.max_observations)
        self._y = deque(maxlen=self.max_observations)
        self._w = deque(maxlen=self.max_observations)

    # -- deciding ----------------------------------------------------------------------------
    def score(self, x: np.ndarray) -> float | None:
        if self.weights is None:
            return None
        return float(1.0 / (1.0 + math.exp(-float(x @ self.weights))))

    def decide(self, entry: str, similarity: float, comparison: Comparison) -> Decision:
        if similarity < self.min_similarity:
            return Decision(REJECT, similarity, reason="below floor")
        if self.guards and not comparison.passed:
            return Decision(REJECT, similarity, reason=",".join(comparison.reasons))
        stats = self._entries.get(entry)
        if stats is not None and (stats.wrong >= 2 or similarity <= stats.wrong_at + self.margin):
            return Decision(EXPLORE, similarity, reason="entry threshold")
        x = features(similarity, comparison)
        score = self.score(x)
        if score is None or self.cut is None:
            serve = similarity >= self.cold_threshold
        else:
            serve = score >= self.cut
        if not serve:
            return Decision(EXPLORE, similarity, score, "below learned threshold", x)
        if self.verify_fraction > 0 and self._rng.random() < self.verify_fraction:
            return Decision(VERIFY, similarity, score, "sampled", x, label_weight=1.0 / self.verify_fraction)
        return Decision(HIT, similarity, score, "", x, label_weight=1.0 / self.verify_fraction if self.verify_fraction else 0.0)

    # -- learning ----------------------------------------------------------------------------
    def observe(self, decision: Decision, correct: bool, entry: str | None = None, *, feedback: bool = False) -> None:
        """A label for a candidate: from verification, exploration or client feedback."""
        if entry is not None:
            stats = self._entries.setdefault(entry, _EntryStats())
            if correct:
                stats.right += 1
            else:
                stats.wrong += 1
                stats.wrong_at = max(stats.wrong_at, decision.similarity)
        if decision.features is None:
            return
        # feedback on a served hit is not a random sample: weight it like one verified label
        weight = 1.0 if feedback else decision.label_weight
        if weight <= 0:
            return
        self._x.append(decision.features)
        self._y.append(1.0 if correct else 0.0)
        self._w.append(weight)
        self._since_fit += 1
        if len(self._y) >= self.min_labels and self._since_fit >= self.refit_every:
            self.refit()

    @property
    def labels(self) -> int:
        return len(self._y)

    def refit(self) -> None:
        """Refit the re-ranker on all kept labels, then the lowest cut meeting δ with confidence."""
        self._since_fit = 0
        if len(self._y) < self.min_labels:
            return
        x = np.array(self._x)
        y = np.array(self._y)
        w = np.array(self._w)
        if y.min() == y.max():
            return  # one class only: nothing to separate yet
        self.weights = _logistic(x, y, w, self.weights)
        scores = 1.0 / (1.0 + np.exp(-(x @ self.weights)))
        self.cut = _cut_under(scores, y, w, self.target_error, self.z)

    def state(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "cut": self.cut,
            "weights": None if self.weights is None else [round(float(v), 4) for v in self.weights],
            "entries_with_labels": len(self._entries),
        }


def _logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, start: np.ndarray | None, l2: float = 1e-2) -> np.ndarray:
    """Weighted L2-regularised logistic regression by Newton's method (a handful of features)."""
    beta = np.zeros(x.shape[1]) if start is None else start.copy()
    reg = np.full(x.shape[1], l2 * w.sum() / len(w))
    reg[0] = 0.0
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (w * (p - y)) + reg * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-6:
            break
    return beta


def wilson_upper(errors: float, n: float, z: float) -> float:
    if n <= 0:
        return 1.0
    p = errors / n
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / denom


def _cut_under(scores: np.ndarray, y: np.ndarray, w: np.ndarray, delta: float, z: float) -> float | None:
    """Lowest score cut whose served set has an error upper bound ≤ δ (``None``: no such cut)."""
    order = np.argsort(-scores, kind="stable")
    s, wrong, weight = scores[order], (1 - y[order]) * w[order], w[order]
    cum_w = np.cumsum(weight)
    cum_w2 = np.cumsum(weight * weight)
    n = cum_w**2 / cum_w2  # effective sample size of importance-weighted labels
    p = np.cumsum(wrong) / cum_w
    upper = (p + z * z / (2 * n) + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    last_of_tie = np.append(s[1:] != s[:-1], True)
    ok = np.nonzero((upper <= delta) & last_of_tie)[0]
    if len(ok) == 0:
        return None
    return float(s[ok[-1]])
