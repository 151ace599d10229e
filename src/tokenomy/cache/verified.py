"""Deciding whether a semantic match may be served: fixed threshold, or verified (learned online).

Verified mode (vCache-style) learns from labels instead of trusting one number.
δ (``target_error``) bounds the **false-hit rate**: of the lookups whose best
cached match is *not* an equivalent request, at most δ may be served.

- **Labels** come from sampled verification (a fraction ``verify_fraction`` of
  would-be hits also goes upstream and the fresh answer is compared with the
  cached one), from exploration (a fraction ``explore_fraction`` of misses that
  had a candidate compare the fresh answer they fetched anyway with the
  candidate's — no extra upstream call), and from ``POST /v1/feedback``.
  Each label is weighted by 1/(chance it was taken), so weighted counts are
  unbiased estimates over all lookups.
- **A re-ranker**: weighted logistic regression over the cosine similarity and
  lexical features (overlap, words in one text only, length ratio, question
  word), refitted as labels arrive. Guards (negation, numbers, entities,
  opposites) are hard rules before it.
- **A threshold under δ**: the re-ranker's score must clear the lowest cut at
  which the *upper confidence bound* (Wilson) of the weighted false-hit rate is
  ≤ δ. Until enough wrong candidates have been seen, a conservative prior
  applies (cosine ≥ ``cold_threshold``).
- **Per-entry thresholds**: an entry found wrong at similarity s is never again
  served at or below s + margin; an entry found wrong twice is only served exactly.

So the false-hit rate converges to at most δ whatever the domain, and the hit
rate grows as the re-ranker learns what a paraphrase looks like there.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from tokenomy.cache.guards import Comparison

HIT, VERIFY, EXPLORE, REJECT = "hit", "verify", "explore", "reject"

#: features: bias, cosine (centred), cosine², overlap, words in one text only, length ratio, question word differs
N_FEATURES = 7


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
            float(comparison.question_word_differs),
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
    """Learned per-entry thresholds and a re-ranker under a target false-hit rate δ (see module doc)."""

    target_error: float = 0.01
    verify_fraction: float = 0.05
    explore_fraction: float = 1.0
    min_similarity: float = 0.80
    guards: bool = True
    cold_threshold: float = 0.97
    #: wrong candidates seen before the learned cut replaces the cold threshold
    min_wrong: int = 200
    refit_every: int = 200
    max_observations: int = 100_000
    margin: float = 0.01
    z: float = 1.645  # one-sided 95 % upper bound
    seed: int | None = None
    weights: np.ndarray | None = None
    cut: float | None = None  # re-ranker score a hit must reach
    _since_fit: int = 0
    _entries: dict[str, _EntryStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threshold = self.cold_threshold
        self._rng = random.Random(self.seed)
        self._x: deque[np.ndarray] = deque(maxlen=self.max_observations)
        self._y: deque[float] = deque(maxlen=self.max_observations)
        self._w: deque[float] = deque(maxlen=self.max_observations)
        # weighted wrong candidates that could never be served (below the floor, failed a guard)
        self._wrong_unservable = 0.0
        self._wrong_unservable_w2 = 0.0
        self._wrong_seen = 0

    # -- deciding ----------------------------------------------------------------------------
    def score(self, x: np.ndarray) -> float | None:
        if self.weights is None:
            return None
        return float(1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, float(x @ self.weights))))))

    def _explore_or_reject(self, similarity: float, reason: str, x: np.ndarray | None = None,
                           score: float | None = None) -> Decision:
        """A miss: label it with probability ``explore_fraction`` (no extra upstream call)."""
        if self.explore_fraction > 0 and (self.explore_fraction >= 1 or self._rng.random() < self.explore_fraction):
            return Decision(EXPLORE, similarity, score, reason, x, label_weight=1.0 / self.explore_fraction)
        return Decision(REJECT, similarity, score, reason, x)

    def decide(self, entry: str, similarity: float, comparison: Comparison) -> Decision:
        if similarity < self.min_similarity:
            return self._explore_or_reject(similarity, "below floor")
        if self.guards and not comparison.passed:
            return self._explore_or_reject(similarity, ",".join(comparison.reasons))
        x = features(similarity, comparison)
        stats = self._entries.get(entry)
        if stats is not None and (stats.wrong >= 2 or similarity <= stats.wrong_at + self.margin):
            return self._explore_or_reject(similarity, "entry threshold", x)
        score = self.score(x)
        if score is None or self.cut is None:
            serve = similarity >= self.cold_threshold
        else:
            serve = score >= self.cut
        if not serve:
            return self._explore_or_reject(similarity, "below learned threshold", x, score)
        if self.verify_fraction > 0 and self._rng.random() < self.verify_fraction:
            return Decision(VERIFY, similarity, score, "sampled", x, label_weight=1.0 / self.verify_fraction)
        weight = 1.0 / self.verify_fraction if self.verify_fraction else 0.0
        return Decision(HIT, similarity, score, "", x, label_weight=weight)

    # -- learning ----------------------------------------------------------------------------
    def observe(self, decision: Decision, correct: bool, entry: str | None = None, *, feedback: bool = False) -> None:
        """A label for a candidate: from verification, exploration or client feedback."""
        if entry is not None and decision.features is not None:
            stats = self._entries.setdefault(entry, _EntryStats())
            if correct:
                stats.right += 1
            else:
                stats.wrong += 1
                stats.wrong_at = max(stats.wrong_at, decision.similarity)
        # feedback on a served hit is not a random sample: it counts once, like a single label
        weight = 1.0 if feedback else decision.label_weight
        if weight <= 0:
            return
        if not correct:
            self._wrong_seen += 1
        if decision.features is None:
            if not correct:
                self._wrong_unservable += weight
                self._wrong_unservable_w2 += weight * weight
            return
        self._x.append(decision.features)
        self._y.append(1.0 if correct else 0.0)
        self._w.append(weight)
        self._since_fit += 1
        if self._wrong_seen >= self.min_wrong and self._since_fit >= self.refit_every:
            self.refit()

    @property
    def labels(self) -> int:
        return len(self._y)

    def refit(self) -> None:
        """Refit the re-ranker on all kept labels, then the lowest cut meeting δ with confidence."""
        self._since_fit = 0
        if not self._y:
            return
        x = np.array(self._x)
        y = np.array(self._y)
        w = np.array(self._w)
        if y.min() == y.max():
            return  # one class only: nothing to separate yet
        self.weights = _logistic(x, y, w, self.weights)
        scores = 1.0 / (1.0 + np.exp(-np.clip(x @ self.weights, -30, 30)))
        cut = _cut_under(scores, y, w, self._wrong_unservable, self._wrong_unservable_w2, self.target_error, self.z)
        self.cut = math.inf if cut is None else cut  # no safe cut yet: serve nothing semantically

    def state(self) -> dict[str, object]:
        return {
            "mode": "verified",
            "target_false_hit_rate": self.target_error,
            "labels": self.labels,
            "wrong_seen": self._wrong_seen,
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


def _cut_under(
    scores: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    wrong_elsewhere: float,
    wrong_elsewhere_w2: float,
    delta: float,
    z: float,
) -> float | None:
    """Lowest score cut whose weighted false-hit rate has an upper confidence bound ≤ δ (``None``: none does).

    False-hit rate at a cut = weighted wrong candidates scoring ≥ cut / all weighted
    wrong candidates (including those that could never be served). The bound uses the
    variance of this importance-weighted ratio, so a few heavily weighted verified
    hits widen it as they should: p + z·sqrt(Σ wᵢ²(xᵢ − p)²) / Σ wᵢ, plus one
    wrong label's worth of slack.
    """
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    wrong_w = (1 - y[order]) * w[order]
    total = wrong_w.sum() + wrong_elsewhere
    if total <= 0:
        return None
    sq = wrong_w**2
    all_sq = sq.sum() + wrong_elsewhere_w2
    above = np.cumsum(wrong_w)  # weighted wrong candidates served at each cut
    above_sq = np.cumsum(sq)
    p = above / total
    # Σ w²(x − p)² split into the served part (x = 1) and the rest (x = 0)
    var = (above_sq * (1 - p) ** 2 + (all_sq - above_sq) * p**2) / total**2
    upper = p + z * np.sqrt(var) + w.max() / total
    last_of_tie = np.append(s[1:] != s[:-1], True)
    bad = np.nonzero(upper > delta)[0]
    limit = bad[0] if len(bad) else len(s)  # the served set must stay under δ all the way down
    ok = np.nonzero(last_of_tie[:limit])[0]
    if len(ok) == 0:
        return None
    return float(s[ok[-1]])
