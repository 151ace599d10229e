"""The learned router: predicts each candidate model's success probability from the prompt embedding.

A router file (``tokenomy router train --out ROUTER``) is a compressed ``.npz``
holding a JSON header (method, model names, mean cost per query of each model)
and the method's arrays; loading needs numpy only. Methods:

- ``knn``: the k nearest training prompts (cosine), success rates weighted by
  similarity and shrunk toward each model's overall success rate;
- ``logistic``: one logistic head per model on the embedding;
- ``mlp``: one small shared hidden layer, one sigmoid output per model;
- ``mf``: matrix factorisation (RouteLLM-style): ``σ(v_model · A·x + b_model)``;
- ``ensemble``: the mean of the kNN and logistic predictions.

``choose`` picks the cheapest candidate whose predicted success reaches a
quality target, or maximises ``p − λ·cost/max_cost``. Decisions take tens of
microseconds (the embedding, shared with the semantic cache, is the cost).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "tokenomy-router/1"


@dataclass
class LearnedRouter:
    method: str
    models: list[str]
    mean_cost: np.ndarray  # (m,) USD per query, from training data
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    #: mean success rate of each model in training: when no model is predicted to reach
    #: the quality target, the router falls back to the strongest model on record
    mean_quality: np.ndarray | None = None

    # -- prediction ---------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Success probability per model: ``(m,)`` for one embedding, ``(n, m)`` for a batch."""
        single = x.ndim == 1
        X = x[None, :] if single else x
        X = X.astype(np.float32, copy=False)
        if self.method == "knn":
            out = self._knn(X)
        elif self.method == "logistic":
            out = _sigmoid(X @ self.arrays["W"] + self.arrays["b"])
        elif self.method == "mf":
            out = _sigmoid((X @ self.arrays["A"]) @ self.arrays["V"].T + self.arrays["b"])
        elif self.method == "ensemble":
            out = 0.5 * (self._knn(X) + _sigmoid(X @ self.arrays["W"] + self.arrays["b"]))
        elif self.method == "mlp":
            hidden = np.maximum(X @ self.arrays["W1"] + self.arrays["b1"], 0.0)
            out = _sigmoid(hidden @ self.arrays["W2"] + self.arrays["b2"])
        else:
            raise ValueError(f"unknown router method {self.method!r}")
        return out[0] if single else out

    def _knn(self, X: np.ndarray) -> np.ndarray:
        train = self.arrays["X"]
        Y = self.arrays["Y"]
        prior = self.arrays["prior"]
        k = min(int(self.params.get("k", 20)), len(train))
        shrink = float(self.params.get("shrink", 2.0))
        sims = X @ train.T  # (n, N), unit vectors: cosine
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        weights = np.maximum(top, 0.0) ** float(self.params.get("power", 4.0))
        num = np.einsum("nk,nkm->nm", weights, Y[idx]) + shrink * prior
        return num / (weights.sum(axis=1, keepdims=True) + shrink)

    # -- choice -------------------------------------------------------------------------
    def choose(
        self,
        p: np.ndarray,
        candidates: list[int] | None = None,
        *,
        quality_target: float | None = None,
        cost_weight: float = 0.5,
    ) -> int:
        """Index of the model to use, among ``candidates`` (default: all)."""
        cand = list(range(len(self.models))) if candidates is None else candidates
        costs = self.mean_cost[cand]
        if quality_target is not None:
            ok = [c for c in cand if p[c] >= quality_target]
            if ok:
                return min(ok, key=lambda c: self.mean_cost[c])
            strength = self.mean_quality if self.mean_quality is not None else p
            return max(cand, key=lambda c: strength[c])
        scale = float(costs.max()) or 1.0
        scores = p[cand] - cost_weight * costs / scale
        return cand[int(np.argmax(scores))]

    def choose_batch(self, P: np.ndarray, cost_weight: float) -> np.ndarray:
        scale = float(self.mean_cost.max()) or 1.0
        return np.argmax(P - cost_weight * self.mean_cost[None, :] / scale, axis=1)

    # -- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        header = {
            "format": FORMAT,
            "method": self.method,
            "models": self.models,
            "mean_cost": [float(c) for c in self.mean_cost],
            "mean_quality": None if self.mean_quality is None else [float(q) for q in self.mean_quality],
            "params": self.params,
        }
        arrays = {f"a_{k}": v for k, v in self.arrays.items()}
        with open(path, "wb") as fh:
            np.savez_compressed(fh, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> LearnedRouter:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != FORMAT:
                raise ValueError(f"{path}: not a tokenomy router file")
            arrays = {k[2:]: data[k].astype(np.float32) for k in data.files if k.startswith("a_")}
        quality = header.get("mean_quality")
        return cls(
            header["method"],
            header["models"],
            np.array(header["mean_cost"]),
            arrays,
            header.get("params", {}),
            None if quality is None else np.array(quality),
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
