"""Training and evaluating learned routers (``tokenomy router train`` / ``tokenomy router eval``).

Training needs scikit-learn for the logistic and MLP heads (``tokenomy[routing]``);
kNN needs numpy only. Evaluation sweeps the cost weight λ to trace the router's
cost–quality curve and compares it with single models, random routing, the
"zero router" (best random mixture of single models) and the oracle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenomy.routing.datasets import RoutingDataset
from tokenomy.routing.learned import LearnedRouter

METHODS = ("knn", "logistic", "mlp", "mf", "ensemble")
#: λ values swept to trace a curve (0 = quality only … large = cost only).
LAMBDAS = np.concatenate([[0.0], np.logspace(-3, 1.5, 60)])
#: quality targets swept (the cheapest model predicted to reach the target is chosen)
TARGETS = np.linspace(0.0, 1.0, 101)


def train(method: str, X: np.ndarray, data: RoutingDataset, *, seed: int = 0, **params: Any) -> LearnedRouter:
    """Fit a router on embeddings ``X`` (n, d) and the dataset's per-model quality and cost."""
    router = _fit(method, X, data, seed=seed, **params)
    router.mean_quality = data.quality.mean(axis=0)
    return router


def _fit(method: str, X: np.ndarray, data: RoutingDataset, *, seed: int = 0, **params: Any) -> LearnedRouter:
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
    if method == "mf":
        A, V, b = _matrix_factorization(X, Y, seed=seed, **params)
        return LearnedRouter("mf", data.models, mean_cost, {"A": A, "V": V, "b": b}, {k: params[k] for k in params})
    if method == "ensemble":
        knn = train("knn", X, data, seed=seed, **{k: v for k, v in params.items() if k in ("k", "shrink", "power")})
        logistic = train("logistic", X, data, seed=seed, **{k: v for k, v in params.items() if k == "C"})
        return LearnedRouter("ensemble", data.models, mean_cost, {**knn.arrays, **logistic.arrays}, {**knn.params, **logistic.params})
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
        with warnings.catch_warnings():  # not converging in 400 epochs is fine: more overfits
            warnings.simplefilter("ignore", category=UserWarning)
            clf.fit(X, targets)
        arrays = {
            "W1": clf.coefs_[0].astype(np.float32),
            "b1": clf.intercepts_[0].astype(np.float32),
            "W2": clf.coefs_[1].astype(np.float32),
            "b2": clf.intercepts_[1].astype(np.float32),
        }
        return LearnedRouter("mlp", data.models, mean_cost, arrays, {"hidden": hidden, "alpha": alpha})
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def _matrix_factorization(
    X: np.ndarray, Y: np.ndarray, *, seed: int = 0, rank: int = 8, l2: float = 1e-2, epochs: int = 300, lr: float = 0.01, **_: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RouteLLM-style matrix factorisation: ``p(model m solves x) = σ(v_m · (A x) + b_m)``.

    Prompts are projected to a small latent space shared by all models; each model is a
    vector in it. Fitted with full-batch Adam on the cross-entropy (Y may be fractional).
    """
    rng = np.random.default_rng(seed)
    n, d = X.shape
    m = Y.shape[1]
    rank = int(rank)
    A = (rng.normal(size=(d, rank)) / np.sqrt(d)).astype(np.float64)
    V = (rng.normal(size=(m, rank)) * 0.1).astype(np.float64)
    prior = np.clip(Y.mean(axis=0), 1e-3, 1 - 1e-3)
    b = np.log(prior / (1 - prior))
    params = [A, V, b]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    Xd = X.astype(np.float64)
    for step in range(1, int(epochs) + 1):
        Z = Xd @ A  # (n, r)
        logits = Z @ V.T + b
        P = 1.0 / (1.0 + np.exp(-logits))
        G = (P - Y) / n  # dLoss/dlogits
        grads = [Xd.T @ (G @ V) + l2 * A, G.T @ Z + l2 * V, G.sum(axis=0)]
        for i, (param, grad) in enumerate(zip(params, grads)):
            m1, m2 = moments[i]
            m1 *= beta1
            m1 += (1 - beta1) * grad
            m2 *= beta2
            m2 += (1 - beta2) * grad * grad
            param -= lr * (m1 / (1 - beta1**step)) / (np.sqrt(m2 / (1 - beta2**step)) + eps)
    return A.astype(np.float32), V.astype(np.float32), b.astype(np.float32)


# -- curves and metrics ---------------------------------------------------------------------
@dataclass
class Point:
    cost: float
    accuracy: float

    def as_dict(self) -> dict[str, float]:
        return {"cost": self.cost, "accuracy": self.accuracy}


def router_points(
    P: np.ndarray, decision_cost: np.ndarray, data: RoutingDataset, strength: np.ndarray | None = None
) -> list[Point]:
    """(mean cost, mean quality) on ``data`` of every operating point the router offers.

    ``P`` are the predicted success probabilities (n, m) and ``decision_cost`` the
    costs the router believes in (its training means, (m,) or (n, m)). Two sweeps,
    as the gateway can run either: λ in ``p − λ·cost/max_cost`` (``cost_weight``), and
    the quality target (``quality_target``: the cheapest model predicted to reach it).
    """
    C = np.broadcast_to(decision_cost, P.shape)
    scaled = C / (C.max(axis=1, keepdims=True) + 1e-30)
    rows = np.arange(len(data))
    points = []
    for lam in LAMBDAS:
        pick = np.argmax(P - lam * scaled, axis=1)
        points.append(Point(float(data.cost[rows, pick].mean()), float(data.quality[rows, pick].mean())))
    if strength is None:
        best = np.argmax(P, axis=1)
    else:  # nothing reaches the target: the strongest model on record
        best = np.argmax(np.broadcast_to(strength, P.shape), axis=1)
    for target in TARGETS:
        masked = np.where(P >= target, C, np.inf)
        pick = np.where(np.isfinite(masked.min(axis=1)), masked.argmin(axis=1), best)
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


def aligned(router: LearnedRouter, X: np.ndarray, data: RoutingDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The router's predictions, believed costs and model strengths, in the dataset's model order."""
    order = [router.models.index(m) for m in data.models]
    strength = router.mean_quality[order] if router.mean_quality is not None else router.predict(X).mean(axis=0)[order]
    return router.predict(X)[:, order], router.mean_cost[order], strength


def evaluate(router: LearnedRouter, X: np.ndarray, data: RoutingDataset, seed: int = 0) -> dict[str, Any]:
    """Everything ``router eval`` reports for one dataset, for a router fitted elsewhere."""
    P, cost, strength = aligned(router, X, data)
    return evaluate_predictions(P, cost, data, router.method, seed=seed, strength=strength)


def evaluate_predictions(
    P: np.ndarray,
    decision_cost: np.ndarray,
    data: RoutingDataset,
    method: str,
    seed: int = 0,
    strength: np.ndarray | None = None,
) -> dict[str, Any]:
    """The report for predictions ``P`` (n, m) on ``data`` (held-out predictions for a fair score)."""
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

    raw = router_points(P, decision_cost, data, strength)
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
        "method": method,
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
        report.update(two_model_metrics(P, data))
    return report


def _cost_reaching(curve: list[Point], target: float) -> float:
    """Least cost on the hull where the accuracy reaches ``target`` (interpolated)."""
    for a, b in zip(curve, curve[1:]):
        if a.accuracy < target <= b.accuracy:
            t = (target - a.accuracy) / (b.accuracy - a.accuracy)
            return a.cost + t * (b.cost - a.cost)
    return curve[0].cost if curve[0].accuracy >= target else curve[-1].cost


def two_model_metrics(P: np.ndarray, data: RoutingDataset) -> dict[str, Any]:
    """RouteLLM's metrics: APGR and the share of calls to the strong model needed for 50 %/80 % of the gap."""
    costs = data.cost.mean(axis=0)
    strong = int(np.argmax(costs))
    weak = 1 - strong
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


def cross_validate(
    method: str, X: np.ndarray, data: RoutingDataset, *, folds: int = 5, seed: int = 0, **params: Any
) -> dict[str, Any]:
    """K-fold cross-validation: every prompt is scored by a router that never saw it.

    The folds' held-out predictions are pooled into one curve (more stable than
    one small test split). ``folds=1`` means a single 70/30 split instead.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    if folds <= 1:
        cut = int(round(len(data) * 0.7))
        parts = [order[cut:]]
    else:
        parts = np.array_split(order, folds)
    P = np.zeros((len(data), len(data.models)))
    C = np.zeros_like(P)
    S = np.zeros_like(P)
    tested = np.zeros(len(data), dtype=bool)
    for part in parts:
        test = np.sort(part)
        train_idx = np.setdiff1d(np.arange(len(data)), test)
        router = train(method, X[train_idx], data.subset(train_idx), seed=seed, **params)
        P[test], C[test], S[test] = aligned(router, X[test], data.subset(test))
        tested[test] = True
    idx = np.nonzero(tested)[0]
    report = evaluate_predictions(P[idx], C[idx], data.subset(idx), method, seed=seed, strength=S[idx])
    report["folds"] = folds
    return report
