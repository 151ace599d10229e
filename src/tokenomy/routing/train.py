"""Training and evaluating learned routers (``tokenomy router train`` / ``tokenomy router eval``).

Training needs scikit-learn for the logistic and MLP heads (``tokenomy[routing]``);
kNN needs numpy only. Evaluation sweeps the cost weight λ to trace the router's
cost–quality curve and compares it with single models, random routing, the
"zero router" (best random mixture of single models) and the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenomy.routing.datasets import RoutingDataset
from tokenomy.routing.learned import LearnedRouter

METHODS = ("knn", "logistic", "mlp")
#: λ values swept to trace a curve (0 = quality only … large = cost only).
LAMBDAS = np.concatenate([[0.0], np.logspace(-3, 1.5, 60)])


def train(method: str, X: np.ndarray, data: RoutingDataset, *, seed: int = 0, **params: Any) -> LearnedRouter:
    """Fit a router on embeddings ``X`` (n, d) and the dataset's per-model quality and cost."""
    Y = data.quality.astype(np.float32)
    mean_cost = data.cost.mean(axis=0)
    prior = Y.mean(axis=0)
    if method == "knn":
        p = {"k": 20, "shrink": 2.0, "power": 4.0, **params}
        return LearnedRouter("knn", data.models, mean_cost, {"X": X.astype(np.float32), "Y": Y, "prior": prior}, p)
    if method == "logistic":
        from sklearn.linear_model import LogisticRegression

        C = float(params.get("C", 1.0))
        d, m = X.shape[1], Y.shape[1]
        W = np.zeros((d, m), dtype=np.float32)
        b = np.zeros(m, dtype=np.float32)
        for j in range(m):
            y = (Y[:, j] >= 0.5).astype(int)
            if y.min() == y.max():  # always right or always wrong: a constant
                b[j] = 8.0 if y[0] else -8.0
                continue
            clf = LogisticRegression(C=C, max_iter=2000, random_state=seed)
            clf.fit(X, y, sample_weight=None)
            W[:, j] = clf.coef_[0]
            b[j] = clf.intercept_[0]
        return LearnedRouter("logistic", data.models, mean_cost, {"W": W, "b": b}, {"C": C})
    if method == "mlp":
        from sklearn.neural_network import MLPClassifier

        hidden = int(params.get("hidden", 64))
        alpha = float(params.get("alpha", 1e-2))
        targets = (Y >= 0.5).astype(int)
        const = targets.min(axis=0) == targets.max(axis=0)
        if const.any():  # MLPClassifier needs both classes per output: flip one row of constant columns
            targets = targets.copy()
            targets[0, const] = 1 - targets[0, const]
        clf = MLPClassifier(
            hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=400, early_stopping=False, random_state=seed
        )
        clf.fit(X, targets)
        arrays = {
            "W1": clf.coefs_[0].astype(np.float32),
            "b1": clf.intercepts_[0].astype(np.float32),
            "W2": clf.coefs_[1].astype(np.float32),
            "b2": clf.intercepts_[1].astype(np.float32),
        }
        return LearnedRouter("mlp", data.models, mean_cost, arrays, {"hidden": hidden, "alpha": alpha})
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


# -- curves and metrics ---------------------------------------------------------------------
@dataclass
class Point:
    cost: float
    accuracy: float

    def as_dict(self) -> dict[str, float]:
        return {"cost": self.cost, "accuracy": self.accuracy}


def router_points(router: LearnedRouter, X: np.ndarray, data: RoutingDataset) -> list[Point]:
    """The router's (mean cost, mean quality) on ``data`` for every λ in the sweep."""
    P = router.predict(X)
    order = [router.models.index(m) for m in data.models]
    P = P[:, order]
    scale = float(router.mean_cost.max()) or 1.0
    costs = router.mean_cost[order] / scale
    rows = np.arange(len(data))
    points = []
    for lam in LAMBDAS:
        pick = np.argmax(P - lam * costs[None, :], axis=1)
        points.append(Point(float(data.cost[rows, pick].mean()), float(data.quality[rows, pick].mean())))
    return points


def envelope(points: list[Point]) -> list[Point]:
    """The non-decreasing upper hull: for each cost, the best accuracy reachable at that cost or less."""
    pts = sorted(points, key=lambda p: (p.cost, -p.accuracy))
    out: list[Point] = []
    for p in pts:
        if out and p.accuracy <= out[-1].accuracy:
            continue
        out.append(p)
    # convex hull (upper): mixing two routers gives any point on the segment between them
    hull: list[Point] = []
    for p in out:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.cost - a.cost) * (p.accuracy - a.accuracy) - (b.accuracy - a.accuracy) * (p.cost - a.cost) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def accuracy_at(curve: list[Point], cost: float) -> float:
    """Interpolated accuracy of a hull at ``cost`` (flat beyond its ends; 0 below its start)."""
    if not curve:
        return 0.0
    if cost < curve[0].cost:
        return 0.0
    for a, b in zip(curve, curve[1:]):
        if a.cost <= cost <= b.cost:
            if b.cost == a.cost:
                return max(a.accuracy, b.accuracy)
            t = (cost - a.cost) / (b.cost - a.cost)
            return a.accuracy + t * (b.accuracy - a.accuracy)
    return curve[-1].accuracy


def aiq(curve: list[Point], lo: float, hi: float, steps: int = 400) -> float:
    """Average improvement in quality: the area under the hull over [lo, hi], divided by (hi − lo)."""
    grid = np.linspace(lo, hi, steps)
    return float(np.mean([accuracy_at(curve, c) for c in grid]))


def evaluate(router: LearnedRouter, X: np.ndarray, data: RoutingDataset, seed: int = 0) -> dict[str, Any]:
    """Everything ``router eval`` reports for one dataset (router fitted elsewhere)."""
    singles = [
        {"model": m, "cost": float(data.cost[:, j].mean()), "accuracy": float(data.quality[:, j].mean())}
        for j, m in enumerate(data.models)
    ]
    best = max(singles, key=lambda s: (s["accuracy"], -s["cost"]))
    cheapest = min(singles, key=lambda s: (s["cost"], -s["accuracy"]))
    # oracle: per prompt, the cheapest model with the best quality
    q = data.quality
    best_q = q.max(axis=1, keepdims=True)
    masked = np.where(q >= best_q, data.cost, np.inf)
    pick = masked.argmin(axis=1)
    rows = np.arange(len(data))
    oracle = {"cost": float(data.cost[rows, pick].mean()), "accuracy": float(q[rows, pick].mean())}
    # random routing: uniform choice among the models (expected), and mixtures cheapest ↔ best
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(data.models), len(data))
    random_uniform = {"cost": float(data.cost[rows, choice].mean()), "accuracy": float(q[rows, choice].mean())}
    random_line = [Point(cheapest["cost"], cheapest["accuracy"]), Point(best["cost"], best["accuracy"])]
    zero_router = envelope([Point(s["cost"], s["accuracy"]) for s in singles])

    raw = router_points(router, X, data)
    curve = envelope(raw + [Point(cheapest["cost"], cheapest["accuracy"])])
    lo, hi = cheapest["cost"], max(s["cost"] for s in singles)
    # dominance over random routing on the interior of [cheapest, best single]
    grid = np.linspace(cheapest["cost"], best["cost"], 52)[1:-1]
    margins = [accuracy_at(curve, c) - accuracy_at(random_line, c) for c in grid]
    margins_zero = [accuracy_at(curve, c) - accuracy_at(zero_router, c) for c in grid]
    target = 0.97 * best["accuracy"]
    reach = next((p for p in curve if p.accuracy >= target), None)
    report: dict[str, Any] = {
        "dataset": data.name,
        "n": len(data),
        "method": router.method,
        "curve": [p.as_dict() for p in curve],
        "points": [p.as_dict() for p in raw],
        "best_single": best,
        "cheapest_single": cheapest,
        "singles": singles,
        "oracle": oracle,
        "random": random_uniform,
        "aiq": aiq(curve, lo, hi),
        "aiq_random": aiq(random_line, lo, hi),
        "aiq_zero_router": aiq(zero_router, lo, hi),
        "aiq_oracle": aiq(envelope([Point(oracle["cost"], oracle["accuracy"]), Point(lo, cheapest["accuracy"])]), lo, hi),
        "dominates_random": bool(min(margins) > 0),
        "min_margin_vs_random": float(min(margins)),
        "min_margin_vs_zero_router": float(min(margins_zero)),
        "cost_at_97pct_best": None if reach is None else _cost_reaching(curve, target),
    }
    if reach is not None:
        report["cost_ratio_at_97pct_best"] = report["cost_at_97pct_best"] / best["cost"]
    if len(data.models) == 2:
        report.update(two_model_metrics(router, X, data))
    return report


def _cost_reaching(curve: list[Point], target: float) -> float:
    """Least cost on the hull where the accuracy reaches ``target`` (interpolated)."""
    for a, b in zip(curve, curve[1:]):
        if a.accuracy < target <= b.accuracy:
            t = (target - a.accuracy) / (b.accuracy - a.accuracy)
            return a.cost + t * (b.cost - a.cost)
    return curve[0].cost if curve[0].accuracy >= target else curve[-1].cost


def two_model_metrics(router: LearnedRouter, X: np.ndarray, data: RoutingDataset) -> dict[str, Any]:
    """RouteLLM's metrics: APGR and the share of calls to the strong model needed for 50 %/80 % of the gap."""
    costs = data.cost.mean(axis=0)
    strong = int(np.argmax(costs))
    weak = 1 - strong
    P = router.predict(X)[:, [router.models.index(m) for m in data.models]]
    # the more the strong model is predicted to beat the weak one, the sooner a prompt goes to it
    score = P[:, strong] - P[:, weak]
    order = np.argsort(-score, kind="stable")
    q = data.quality
    q_weak, q_strong = q[:, weak].mean(), q[:, strong].mean()
    gap = q_strong - q_weak
    n = len(data)
    # quality when the top-k prompts go to the strong model, for k = 0..n
    gains = np.concatenate([[0.0], np.cumsum(q[order, strong] - q[order, weak])]) / n
    quality = q_weak + gains
    pgr = (quality - q_weak) / gap if gap > 0 else np.zeros_like(quality)
    share = np.arange(n + 1) / n

    def cpt(level: float) -> float | None:
        hit = np.nonzero(pgr >= level)[0]
        return float(share[hit[0]]) if len(hit) else None

    # random baseline: PGR grows linearly with the share of strong calls (APGR 0.5)
    return {
        "strong": data.models[strong],
        "weak": data.models[weak],
        "apgr": float(np.trapezoid(pgr, share)) if hasattr(np, "trapezoid") else float(np.trapz(pgr, share)),
        "apgr_random": 0.5,
        "cpt50": cpt(0.5),
        "cpt80": cpt(0.8),
    }


def cross_validate(method: str, X: np.ndarray, data: RoutingDataset, *, test_fraction: float = 0.3, seed: int = 0, **params: Any) -> dict[str, Any]:
    """Train on one part, evaluate on the rest (a seeded split)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    cut = int(round(len(data) * (1 - test_fraction)))
    tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    router = train(method, X[tr], data.subset(tr), seed=seed, **params)
    report = evaluate(router, X[te], data.subset(te), seed=seed)
    report["train_n"] = len(tr)
    return report
