"""``tokenomy eval cache``: how often the semantic cache finds a true duplicate, and how often it lies.

Input: JSONL (optionally gzipped) of ``{"a": ..., "b": ..., "duplicate": bool}``.
The cache is filled with ``a`` and each ``b`` is looked up; a lookup is *served*
when the policy says so. Two fills:

- ``pair`` (default): each ``b`` is looked up in a cache holding its own ``a``
  (one namespace per pair). Every decision is on a labelled pair, so hit and
  false-hit rates measure the policy and nothing else.
- ``all``: one cache holding every ``a``; each ``b`` gets its top-1 among all of
  them, as the gateway would. Served is correct only when the match is the
  pair's own ``a`` and the pair is a duplicate; a match with some other
  question is unlabelled and counted as wrong (conservative: on QQP many such
  matches are in fact paraphrases, so this fill overstates false hits).

Reported per policy:

- ``hit_rate``: duplicates served their own ``a`` / duplicates;
- ``false_hit_rate``: non-duplicates served anything / non-duplicates;
- ``error``: wrong answers / answers served (what users see).

Policies: a sweep of fixed thresholds (with and without the lexical guards) and
the verified mode, run online in a random order: it starts with nothing
learned, labels come from its own sampled verification and exploration (here
the dataset's label stands in for comparing answers), and hits are counted
from the first query on.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenomy.cache.guards import compare
from tokenomy.cache.verified import EXPLORE, HIT, VERIFY, VerifiedPolicy

DEFAULT_THRESHOLDS = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))


@dataclass(slots=True)
class Pair:
    a: str
    b: str
    duplicate: bool


def load_pairs(path: str | Path, limit: int | None = None, seed: int = 0) -> list[Pair]:
    opener = gzip.open if str(path).endswith(".gz") else open
    pairs = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for line in f:
            if line.strip():
                raw = json.loads(line)
                pairs.append(Pair(str(raw["a"]), str(raw["b"]), bool(raw["duplicate"])))
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return pairs


@dataclass
class Outcome:
    name: str
    duplicates: int
    non_duplicates: int
    hits: int = 0  # duplicates served their own a
    false_hits: int = 0  # non-duplicates served anything
    wrong: int = 0  # served and not correct
    served: int = 0
    upstream_checks: int = 0  # extra upstream calls spent on verification
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.duplicates if self.duplicates else 0.0

    @property
    def false_hit_rate(self) -> float:
        return self.false_hits / self.non_duplicates if self.non_duplicates else 0.0

    @property
    def error(self) -> float:
        return self.wrong / self.served if self.served else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "hit_rate": round(self.hit_rate, 4),
            "false_hit_rate": round(self.false_hit_rate, 4),
            "error_among_served": round(self.error, 4),
            "served": self.served,
            "upstream_checks": self.upstream_checks,
            **self.extra,
        }


@dataclass
class Candidates:
    """Each ``b``'s best match among all ``a``: similarity, whether it is its own ``a``, guard verdict."""

    similarity: np.ndarray
    own: np.ndarray  # top-1 is the pair's own a
    duplicate: np.ndarray
    guards_pass: np.ndarray
    comparisons: list[Any]
    matched: list[str]
    #: each lookup's vector and its candidate's (the verified re-ranker compares them)
    queries: np.ndarray | None = None
    entries: np.ndarray | None = None


class VectorStore:
    """Text → vector, kept on disk between runs (``DIR/texts.json`` + ``DIR/vectors.npy``), resumable."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.vectors: dict[str, np.ndarray] = {}
        if directory is not None and (directory / "texts.json").exists():
            texts = json.loads((directory / "texts.json").read_text())
            matrix = np.load(directory / "vectors.npy")
            self.vectors = dict(zip(texts, matrix[: len(texts)]))

    def save(self) -> None:
        if self.directory is None or not self.vectors:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        texts = list(self.vectors)
        np.save(self.directory / "vectors.npy", np.stack([self.vectors[t] for t in texts]))
        (self.directory / "texts.json").write_text(json.dumps(texts))


def embed_texts(
    texts: list[str], cache_dir: Path | None, progress: Callable[[int, int], None] | None = None
) -> dict[str, np.ndarray]:
    """Vectors for ``texts``, embedding only those not already in ``cache_dir``."""
    from tokenomy.embedding import MiniLMEmbedder

    store = VectorStore(cache_dir)
    todo = sorted((t for t in dict.fromkeys(texts) if t not in store.vectors), key=len)
    if todo:
        embedder = MiniLMEmbedder(threads=2)
        batch = 64
        last_save = time.monotonic()
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            for text, vector in zip(chunk, embedder.embed(chunk)):
                store.vectors[text] = vector
            if progress:
                progress(min(start + batch, len(todo)), len(todo))
            if time.monotonic() - last_save > 60:
                store.save()
                last_save = time.monotonic()
        store.save()
    return {t: store.vectors[t] for t in texts}


def pair_candidates(pairs: list[Pair], vectors: dict[str, np.ndarray]) -> Candidates:
    """Each ``b`` against its own ``a`` only."""
    sims = np.array([float(vectors[p.a] @ vectors[p.b]) for p in pairs], dtype=np.float32)
    comparisons = [compare(p.b, p.a) for p in pairs]
    return Candidates(
        similarity=sims,
        own=np.ones(len(pairs), dtype=bool),
        duplicate=np.array([p.duplicate for p in pairs]),
        guards_pass=np.array([c.passed for c in comparisons]),
        comparisons=comparisons,
        matched=[f"{i}:{p.a}" for i, p in enumerate(pairs)],
        queries=np.stack([vectors[p.b] for p in pairs]),
        entries=np.stack([vectors[p.a] for p in pairs]),
    )


def candidates(pairs: list[Pair], vectors: dict[str, np.ndarray]) -> Candidates:
    """Each ``b``'s top-1 among every ``a``."""
    a_texts = list(dict.fromkeys(p.a for p in pairs))
    a_matrix = np.stack([vectors[t] for t in a_texts])
    b_matrix = np.stack([vectors[p.b] for p in pairs])
    best = np.zeros(len(pairs), dtype=np.int64)
    sims = np.zeros(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), 2048):
        scores = b_matrix[start : start + 2048] @ a_matrix.T
        best[start : start + 2048] = scores.argmax(axis=1)
        sims[start : start + 2048] = scores.max(axis=1)
    matched = [a_texts[i] for i in best]
    own = np.array([m == p.a for m, p in zip(matched, pairs)])
    comparisons = [compare(p.b, m) for p, m in zip(pairs, matched)]
    return Candidates(
        similarity=sims,
        own=own,
        duplicate=np.array([p.duplicate for p in pairs]),
        guards_pass=np.array([c.passed for c in comparisons]),
        comparisons=comparisons,
        matched=matched,
        queries=b_matrix,
        entries=a_matrix[best],
    )


def _outcome(name: str, served: np.ndarray, c: Candidates, **extra: Any) -> Outcome:
    correct = served & c.own & c.duplicate
    return Outcome(
        name,
        duplicates=int(c.duplicate.sum()),
        non_duplicates=int((~c.duplicate).sum()),
        hits=int(correct.sum()),
        false_hits=int((served & ~c.duplicate).sum()),
        wrong=int((served & ~correct).sum()),
        served=int(served.sum()),
        extra=extra,
    )


def fixed_sweep(c: Candidates, thresholds: Iterable[float], guards: bool) -> list[Outcome]:
    out = []
    for t in thresholds:
        served = c.similarity >= t
        if guards:
            served &= c.guards_pass
        out.append(_outcome(f"fixed {t:.2f}{' +guards' if guards else ''}", served, c, threshold=t, guards=guards))
    return out


def verified_run(c: Candidates, policy: VerifiedPolicy, seed: int = 0) -> tuple[Outcome, Outcome, np.ndarray]:
    """Online: decide each query in a random order, learning from the labels the policy asks for.

    Returns the whole run, its second half (after the first half's learning) and
    which lookups fell in the second half.
    """
    n = len(c.similarity)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    served = np.zeros(n, dtype=bool)
    checks = 0
    second_half = np.zeros(n, dtype=bool)
    for position, i in enumerate(order):
        second_half[i] = position >= n // 2
        query = None if c.queries is None else c.queries[i]
        entry = None if c.entries is None else c.entries[i]
        decision = policy.decide(c.matched[i], float(c.similarity[i]), c.comparisons[i], query, entry)
        correct = bool(c.own[i] and c.duplicate[i])
        if decision.action == HIT:
            served[i] = True
        elif decision.action in (VERIFY, EXPLORE):
            if decision.action == VERIFY:
                checks += 1
            policy.observe(decision, correct, c.matched[i])
    name = f"verified δ={policy.target_error:g}"
    whole = _outcome(name, served, c, labels=policy.labels, cut=policy.cut)
    whole.upstream_checks = checks
    later = _outcome(name + " (2nd half)", served[second_half], _subset(c, second_half))
    return whole, later, second_half


def tuned_fixed(c: Candidates, max_false_hit_rate: float, guards: bool, name: str) -> Outcome:
    """The fixed threshold tuned in hindsight: the lowest cosine cut whose false-hit rate is within the bound.

    Exact (no grid): the strongest fixed threshold there is at that error rate,
    chosen with every label known — a bar the online verified mode has to clear
    without knowing any label in advance.
    """
    similarity = np.where(c.guards_pass, c.similarity, -np.inf) if guards else c.similarity
    order = np.argsort(-similarity, kind="stable")
    ordered = similarity[order]
    false_hits = np.cumsum(~c.duplicate[order])
    allowed = max_false_hit_rate * int((~c.duplicate).sum())
    last_of_tie = np.append(ordered[1:] != ordered[:-1], True)
    ok = np.nonzero(last_of_tie & (false_hits <= allowed) & np.isfinite(ordered))[0]
    threshold = float(ordered[ok[-1]]) if len(ok) else math.inf
    served = similarity >= threshold
    return _outcome(name, served, c, threshold=round(threshold, 4), guards=guards)


def _subset(c: Candidates, mask: np.ndarray) -> Candidates:
    return Candidates(c.similarity[mask], c.own[mask], c.duplicate[mask], c.guards_pass[mask], [], [])


def verified_report(c: Candidates, policy: VerifiedPolicy, seed: int) -> dict[str, Any]:
    """One online run of the verified mode and, for the whole run and its second half, the
    fixed thresholds tuned in hindsight to the false-hit rate it reached."""
    whole, later, second_half = verified_run(c, policy, seed)
    halves = _subset(c, second_half)
    report: dict[str, Any] = {"target_error": policy.target_error, "learned": policy.state()}
    for label, outcome, data in (("whole", whole, c), ("second_half", later, halves)):
        fixed = tuned_fixed(data, outcome.false_hit_rate, False, "fixed cosine, same false-hit rate")
        guarded = tuned_fixed(data, outcome.false_hit_rate, True, "fixed + guards, same false-hit rate")
        report[label] = {
            "verified": outcome.as_dict(),
            "fixed_same_false_hit_rate": fixed.as_dict(),
            "fixed_guarded_same_false_hit_rate": guarded.as_dict(),
            "hit_rate_vs_fixed": round(outcome.hit_rate / fixed.hit_rate, 3) if fixed.hit_rate else None,
        }
    return report


def run(
    pairs_file: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
    target_errors: Sequence[float] = (0.01,),
    verify_fraction: float = 0.05,
    explore_fraction: float = 0.5,
    fill: str = "pair",
    vectors_cache: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    pairs = load_pairs(pairs_file, limit, seed)
    texts = list(dict.fromkeys([p.a for p in pairs] + [p.b for p in pairs]))
    vectors = embed_texts(texts, vectors_cache, progress)
    if fill not in ("pair", "all"):
        raise ValueError("fill must be 'pair' or 'all'")
    c = pair_candidates(pairs, vectors) if fill == "pair" else candidates(pairs, vectors)
    verified = [
        verified_report(
            c,
            VerifiedPolicy(
                target_error=delta, verify_fraction=verify_fraction, explore_fraction=explore_fraction, seed=seed
            ),
            seed,
        )
        for delta in target_errors
    ]
    return {
        "pairs": len(pairs),
        "fill": fill,
        "duplicates": int(c.duplicate.sum()),
        "non_duplicates": int((~c.duplicate).sum()),
        "fixed": [o.as_dict() for o in fixed_sweep(c, thresholds, guards=False)],
        "fixed_guarded": [o.as_dict() for o in fixed_sweep(c, thresholds, guards=True)],
        "verified": verified,
        "seconds": round(time.perf_counter() - started, 1),
    }


def render(result: dict[str, Any]) -> str:
    """A plain-text report: the threshold sweep (the curve) and the verified mode against it."""
    lines = [
        f"pairs {result['pairs']} (fill: {result['fill']}): {result['duplicates']} duplicates,"
        f" {result['non_duplicates']} non-duplicates  ({result['seconds']} s)",
        "",
        f"{'policy':<36}{'hit rate':>10}{'false hits':>12}{'wrong/served':>14}{'served':>8}",
    ]

    def row(o: dict[str, Any]) -> str:
        return (
            f"{o['policy']:<36}{o['hit_rate']:>10.1%}{o['false_hit_rate']:>12.2%}"
            f"{o['error_among_served']:>14.1%}{o['served']:>8}"
        )

    for name in ("fixed", "fixed_guarded"):
        lines.extend(row(o) for o in result[name])
        lines.append("")
    for run_ in result["verified"]:
        lines.append(f"verified mode, δ = {run_['target_error']:g}  (learned: {run_['learned']})")
        for part in ("whole", "second_half"):
            report = run_[part]
            ratio = report["hit_rate_vs_fixed"]
            lines.append(
                row(report["verified"]) + f"   upstream checks {report['verified']['upstream_checks']}"
                if part == "whole"
                else row(report["verified"])
            )
            lines.append("  " + row(report["fixed_same_false_hit_rate"]).strip())
            lines.append("  " + row(report["fixed_guarded_same_false_hit_rate"]).strip())
            lines.append(f"  hit rate vs fixed cosine at the same false-hit rate: {ratio}×" if ratio else "")
        lines.append("")
    return "\n".join(lines)
