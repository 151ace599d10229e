"""Routing decision latency, excluding the (shared) prompt embedding.

Times the route stage's own work per call — prompt facts, rules or the learned
prediction and choice, building the deployment chain, the route header — with
an executor stub behind it, for:

- ``rules``: a rule router with 8 rules (identity, length, code, keywords, regex…);
- ``learned-knn`` / ``-logistic`` / ``-mf`` / ``-ensemble``: a router over 11 models
  trained on 1,000 prompts (random unit vectors stand in for embeddings: the
  cost does not depend on their values), with the embedding already on the Call;
- ``cascade``: the cascade plan for a 3-model cascade;
- ``passthrough``: a concrete model (chain lookup only), as the floor.

Also reports the MiniLM embedding itself (single query), for scale.
Target (issue #5): decision p50 ≤ 1 ms.

    python bench/routing_latency.py [--n 3000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tokenomy.config import load_settings
from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Completion
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.routing.datasets import RoutingDataset
from tokenomy.routing.stage import RouteStage
from tokenomy.routing.train import train

MODELS = [f"m{i}" for i in range(11)]
PRICES = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5"]


def settings(router_file: Path):
    models = [
        {"name": m, "deployments": [{"provider": "simulated", "model": m, "price_model": PRICES[i % 3]}, {"provider": "simulated", "model": m + "-b", "price_model": PRICES[(i + 1) % 3]}]}
        for i, m in enumerate(MODELS)
    ]
    rules = [
        {"name": "vip", "when": {"teams": ["research"], "priorities": ["high"]}, "tier": "strong"},
        {"name": "json", "when": {"response_format": ["json_schema"]}, "tier": "strong"},
        {"name": "tools", "when": {"tools": True}, "tier": "strong"},
        {"name": "code", "when": {"code": True}, "tier": "mid"},
        {"name": "legal", "when": {"keywords": ["contract", "liability", "lawsuit"]}, "tier": "strong"},
        {"name": "ticket", "when": {"regex": r"\bTICKET-\d+\b"}, "tier": "mid"},
        {"name": "long", "when": {"min_prompt_tokens": 2000}, "tier": "strong"},
        {"name": "eval", "when": {"tags": ["eval"]}, "tier": "strong"},
    ]
    routers = [{"name": "auto", "strategy": "rules", "default_tier": "cheap", "rules": rules}]
    for method in ("knn", "logistic", "mf", "ensemble"):
        routers.append(
            {"name": f"learned-{method}", "strategy": "learned", "learned": {"path": str(router_file.with_suffix(f".{method}.npz")), "cost_weight": 0.5}}
        )
    routers.append({"name": "cascade", "strategy": "cascade", "cascade": {"models": ["m0", "m1", "m2"]}})
    routing = {
        "tiers": {"cheap": ["m0", "m3"], "mid": ["m1"], "strong": ["m2"]},
        "routers": routers,
        "fallbacks": {"m0": ["m1"], "m3": ["m4"]},
    }
    return load_settings(None, models=models, routing=routing, builtin_models=False, ledger={"enabled": False})


async def done(call: Call) -> Completion:
    return Completion({})


PROMPT = "Summarize the main differences between TCP and UDP for a new engineer, in three sentences."


async def measure(stage: RouteStage, model: str, n: int, vector: np.ndarray | None) -> list[float]:
    out = []
    for _ in range(n):
        call = Call(kind="chat", body={"model": model, "messages": [{"role": "user", "content": PROMPT}]}, model_asked=model)
        if model in stage.registry:
            call.targets = stage.registry.resolve(model).targets
        if vector is not None:
            call.annotations["embedding"] = vector
        t0 = time.perf_counter()
        await stage(call, done)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[int(len(ms) * 0.99) - 1], "mean_ms": statistics.fmean(ms)}


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.train_size, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    data = RoutingDataset(
        "synthetic",
        [""] * args.train_size,
        MODELS,
        (rng.random((args.train_size, len(MODELS))) < np.linspace(0.3, 0.9, len(MODELS))).astype(float),
        np.tile(np.linspace(1e-4, 1e-2, len(MODELS)), (args.train_size, 1)),
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "router"
        for method in ("knn", "logistic", "mf", "ensemble"):
            train(method, X, data).save(base.with_suffix(f".{method}.npz"))
        s = settings(base)
        stage = RouteStage(ModelRegistry.from_settings(s, PriceCatalog.load_default()), s.routing, embedder=object())
        vector = X[0]
        for name, model, vec in [
            ("passthrough", "m5", None),
            ("rules", "auto", None),
            ("learned-knn", "learned-knn", vector),
            ("learned-logistic", "learned-logistic", vector),
            ("learned-mf", "learned-mf", vector),
            ("learned-ensemble", "learned-ensemble", vector),
            ("cascade", "cascade", None),
        ]:
            await measure(stage, model, 200, vec)  # warm up
            results[name] = summary(await measure(stage, model, args.n, vec))
    try:
        from tokenomy.routing.embedder import MiniLMEmbedder

        embedder = MiniLMEmbedder()
        embedder.embed(PROMPT)
        ms = []
        for _ in range(100):
            t0 = time.perf_counter()
            embedder.embed(PROMPT)
            ms.append((time.perf_counter() - t0) * 1000.0)
        results["embedding (shared, not part of the decision)"] = summary(ms)
    except Exception as exc:  # the routing extra is optional
        print(f"(embedding not measured: {exc})", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'decision':48s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}")
        for name, r in results.items():
            print(f"{name:48s} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['mean_ms']:8.3f}")
    worst = max(r["p50_ms"] for k, r in results.items() if not k.startswith("embedding"))
    print(f"\nworst decision p50: {worst:.3f} ms (target <= 1 ms): {'PASS' if worst <= 1.0 else 'FAIL'}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
