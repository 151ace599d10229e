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
- **A re-ranker** (``reranker.py``): gradient-boosted trees over the cosine,
  lexical features (overlap, words in one text only, length ratio, question
  word) and a projection of the two vectors' interactions, refitted as labels
  arrive (off the event loop in the gateway). Guards (negation, numbers,
  entities, opposites) are hard rules before it.
- **A threshold under δ, calibrated on labels the model never saw** (cross-fitting):
  every label is drawn into one of ``folds`` folds; one re-ranker is fitted per
  fold on the other folds' labels, so every label has a score from a model that
  did not see it. The cut is the lowest score at which the *upper confidence
  bound* of the weighted false-hit rate over those out-of-fold scores is ≤ δ,
  and each lookup is scored by one of the re-rankers drawn at random — so the
  pooled estimate is exactly the false-hit rate of what is served. (Trees fit
  their training labels closely: a cut read off them would promise a false-hit
  rate the traffic then exceeds.) Until enough wrong candidates have been seen,
  a conservative prior applies (cosine ≥ ``cold_threshold``).
- **Per-entry thresholds**: an entry found wrong at similarity s is never again
  served at or below s + margin; an entry found wrong twice is only served exactly.

So the false-hit rate converges to at most δ whatever the domain, and the hit
rate grows as the re-ranker learns what a paraphrase looks like there.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tokenomy.cache.guards import Comparison
from tokenomy.cache.reranker import N_LEXICAL, InteractionProjection, Reranker, interactions, lexical_features

HIT, VERIFY, EXPLORE, REJECT = "hit", "verify", "explore", "reject"

#: How a refit is run: inline by default (evaluation, tests); the gateway hands it to a thread.
RefitRunner = Callable[[Callable[[], None]], None]


@dataclass(slots=True)
class Decision:
    action: str  # hit | verify | explore | reject
    similarity: float
    score: float | None = None
    reason: str = ""
    #: the re-ranker's input (lexical features, plus the projected interactions once there is a
    #: projection); ``None`` for a candidate that could never be served (below the floor, a guard)
    features: np.ndarray | None = None
    #: how likely this candidate was to get a label if it had been a hit (for importance weights)
    label_weight: float = 1.0
    #: the raw vector interactions, kept only while no projection exists yet
    raw: np.ndarray | None = None


class Policy:
    """Fixed-threshold policy (the baseline): serve when similarity ≥ threshold and guards pass."""

    #: whether ``decide`` wants the query's and the candidate's vectors (an extra index read)
    uses_vectors = False

    def __init__(self, threshold: float, min_similarity: float, guards: bool = True) -> None:
        self.threshold = threshold
        self.min_similarity = min_similarity
        self.guards = guards

    def decide(
        self,
        entry: str,
        similarity: float,
        comparison: Comparison,
        query: np.ndarray | None = None,
        cached: np.ndarray | None = None,
    ) -> Decision:
        """``query``/``cached``: the two unit vectors, when the index can return the candidate's."""
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


@dataclass(slots=True)
class _Label:
    lexical: np.ndarray
    projected: np.ndarray | None
    raw: np.ndarray | None
    correct: bool
    weight: float
    fold: int  # the re-ranker that never trains on this label


@dataclass(frozen=True)
class Learned:
    """One refit's outcome, swapped in whole so a decision never mixes two refits."""

    projection: InteractionProjection | None
    rerankers: tuple[Reranker, ...]  # one per fold
    cut: float  # re-ranker score a hit must reach (inf: no cut meets δ yet — serve nothing semantically)
    labels: int


@dataclass
class VerifiedPolicy(Policy):
    """A re-ranker and per-entry thresholds learned under a target false-hit rate δ (see module doc)."""

    uses_vectors = True

    target_error: float = 0.01
    verify_fraction: float = 0.05
    explore_fraction: float = 1.0
    min_similarity: float = 0.80
    guards: bool = True
    cold_threshold: float = 0.97
    #: wrong candidates seen before the learned cut replaces the cold threshold
    min_wrong: int = 200
    #: refit after this many new labels, or 10 % more labels, whichever is more
    refit_every: int = 250
    refit_growth: float = 0.10
    max_observations: int = 100_000
    #: cross-fitting folds: each re-ranker trains on (folds − 1)/folds of the labels
    folds: int = 4
    #: boosting rounds per re-ranker (fit time grows with them)
    reranker_iterations: int = 100
    #: unlabelled candidates whose vector interactions fit the projection
    projection_samples: int = 2_000
    margin: float = 0.01
    z: float = 1.645  # one-sided 95 % upper bound
    seed: int | None = None
    learned: Learned | None = None
    run_refit: RefitRunner | None = None
    _since_fit: int = 0
    _entries: dict[str, _EntryStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.threshold = self.cold_threshold
        self._rng = random.Random(self.seed)
        self._labels: deque[_Label] = deque(maxlen=self.max_observations)
        self._samples: list[np.ndarray] = []  # raw interactions for the projection
        self._projection: InteractionProjection | None = None
        # weighted wrong candidates that could never be served (below the floor, failed a guard)
        self._wrong_unservable = 0.0
        self._wrong_unservable_w2 = 0.0
        self._wrong_seen = 0
        self._fitting = False

    @property
    def cut(self) -> float | None:
        return None if self.learned is None else self.learned.cut

    # -- deciding ----------------------------------------------------------------------------
    def _explore_or_reject(self, similarity: float, reason: str, x: np.ndarray | None = None,
                           score: float | None = None, raw: np.ndarray | None = None) -> Decision:
        """A miss: label it with probability ``explore_fraction`` (no extra upstream call)."""
        if self.explore_fraction > 0 and (self.explore_fraction >= 1 or self._rng.random() < self.explore_fraction):
            return Decision(EXPLORE, similarity, score, reason, x, 1.0 / self.explore_fraction, raw)
        return Decision(REJECT, similarity, score, reason, x)

    def _features(self, similarity: float, comparison: Comparison, query: np.ndarray | None,
                  cached: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The re-ranker's input, and the raw interactions while there is no projection to apply."""
        x = lexical_features(similarity, comparison)
        if query is None or cached is None:
            return x, None
        raw = interactions(query, cached)
        projection = self._projection
        if projection is None:
            if len(self._samples) < self.projection_samples:
                self._samples.append(raw)
            return x, raw
        return np.concatenate([x, projection(raw)]), None

    def decide(
        self,
        entry: str,
        similarity: float,
        comparison: Comparison,
        query: np.ndarray | None = None,
        cached: np.ndarray | None = None,
    ) -> Decision:
        if similarity < self.min_similarity:
            return self._explore_or_reject(similarity, "below floor")
        if self.guards and not comparison.passed:
            return self._explore_or_reject(similarity, ",".join(comparison.reasons))
        x, raw = self._features(similarity, comparison, query, cached)
        stats = self._entries.get(entry)
        if stats is not None and (stats.wrong >= 2 or similarity <= stats.wrong_at + self.margin):
            return self._explore_or_reject(similarity, "entry threshold", x, raw=raw)
        learned = self.learned
        score: float | None = None
        if learned is not None and learned.rerankers[0].n_features == len(x):
            score = self._rng.choice(learned.rerankers).score(x)
            serve = score >= learned.cut
        else:  # nothing learned yet, or this candidate lacks the features it was learned on
            serve = similarity >= self.cold_threshold
        if not serve:
            return self._explore_or_reject(similarity, "below learned threshold", x, score, raw)
        if self.verify_fraction > 0 and self._rng.random() < self.verify_fraction:
            return Decision(VERIFY, similarity, score, "sampled", x, 1.0 / self.verify_fraction, raw)
        weight = 1.0 / self.verify_fraction if self.verify_fraction else 0.0
        return Decision(HIT, similarity, score, "", x, weight, raw)

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
        lexical, projected = decision.features[:N_LEXICAL], decision.features[N_LEXICAL:]
        self._labels.append(
            _Label(lexical, projected if len(projected) else None, decision.raw, correct, weight,
                   self._rng.randrange(self.folds))
        )
        self._since_fit += 1
        due = self._since_fit >= max(self.refit_every, self.refit_growth * len(self._labels))
        if self._wrong_seen >= self.min_wrong and due and not self._fitting:
            self.refit()

    @property
    def labels(self) -> int:
        return len(self._labels)

    def refit(self) -> None:
        """Refit the re-ranker and the cut on a snapshot of the labels (inline, or as ``run_refit`` says)."""
        self._since_fit = 0
        self._fitting = True
        labels = list(self._labels)
        samples = self._samples if self._projection is None else []
        unservable = (self._wrong_unservable, self._wrong_unservable_w2)

        def job() -> None:
            try:
                learned = self._fit(labels, samples, unservable)
                if learned is not None:
                    self.learned = learned
            finally:
                self._fitting = False

        (self.run_refit or _inline)(job)

    def _fit(
        self, labels: list[_Label], samples: list[np.ndarray], unservable: tuple[float, float]
    ) -> Learned | None:
        projection = self._projection
        if projection is None and len(samples) >= self.projection_samples:
            projection = InteractionProjection.fit(np.stack(samples))
        if projection is not None:
            for label in labels:  # labels taken before the projection existed
                if label.projected is None and label.raw is not None:
                    label.projected, label.raw = projection(label.raw), None
        usable = [lb for lb in labels if projection is None or lb.projected is not None]
        if projection is not None and len(usable) < len(labels) // 2:
            projection, usable = None, labels  # most candidates came without vectors: lexical only
        if not usable:
            return None
        x = np.stack([lb.lexical if projection is None else np.concatenate([lb.lexical, lb.projected]) for lb in usable])
        y = np.array([lb.correct for lb in usable])
        w = np.array([lb.weight for lb in usable])
        fold = np.array([lb.fold for lb in usable])
        out_of_fold = np.zeros(len(usable))
        rerankers = []
        for k in range(self.folds):
            train, held = fold != k, fold == k
            if not train.any() or y[train].min() == y[train].max():
                return None  # one class only: nothing to separate yet
            reranker = Reranker.fit(x[train], y[train], w[train], self.reranker_iterations)
            if held.any():
                out_of_fold[held] = reranker.scores(x[held])
            rerankers.append(reranker)
        cut = _cut_under(out_of_fold, y, w, unservable[0], unservable[1], self.target_error, self.z)
        if projection is not None and self._projection is None:
            self._projection = projection
            self._samples = []
        return Learned(projection, tuple(rerankers), math.inf if cut is None else cut, len(usable))

    def state(self) -> dict[str, object]:
        learned = self.learned
        return {
            "mode": "verified",
            "target_false_hit_rate": self.target_error,
            "labels": self.labels,
            "wrong_seen": self._wrong_seen,
            "cut": None if learned is None else learned.cut,
            "reranker_features": None if learned is None else learned.rerankers[0].n_features,
            "fitted_on": None if learned is None else learned.labels,
            "entries_with_labels": len(self._entries),
        }


def _inline(job: Callable[[], None]) -> None:
    job()


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
    if len(scores) == 0:
        return None
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
