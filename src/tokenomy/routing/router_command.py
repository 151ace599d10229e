"""``tokenomy router train`` and ``tokenomy router eval``: fit a learned router and measure it.

Prompts are embedded with the local MiniLM model (batched, cached under
``--embeddings-cache`` so a second run is instant), then:

- ``train`` fits a router on every row of the data and writes the router file
  the gateway loads (``routing.routers[].learned.path``);
- ``eval`` either scores a router file on the data (``--router``), or, without
  one, cross-validates each ``--method`` (``--folds``, default 5: each prompt is
  scored by a router trained on the other folds; ``--seed`` fixes the folds). It reports the cost–quality curve, AIQ, cost at 97 % of the best
  single model, and for two-model data APGR and CPT(50 %)/CPT(80 %), against
  the best and cheapest single models, random routing and the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

router_app = typer.Typer(help="Train and evaluate learned routers.", no_args_is_help=True)

DEFAULT_CACHE = Path(".tokenomy/embeddings")


def _embed(texts: list[str], cache: Optional[Path], label: str):
    from rich.progress import Progress

    from tokenomy.routing.embedcache import embed_cached
    from tokenomy.routing.embedder import EmbedderUnavailable, MiniLMEmbedder

    embedder = MiniLMEmbedder()
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"embedding {label}", total=len(texts))
            return embed_cached(embedder, texts, cache, progress=lambda n: progress.advance(task, n))
    except EmbedderUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _load(paths: list[Path]):
    from tokenomy.routing import datasets

    out = []
    for path in paths:
        try:
            out.append(datasets.load(path))
        except (OSError, ValueError, KeyError) as exc:
            typer.echo(f"error: cannot read {path}: {exc}", err=True)
            raise typer.Exit(2) from None
    return out


@router_app.command("train")
def train_command(
    data: list[Path] = typer.Option(..., "--data", help="RouterBench CSV, RouteLLM CSV/judgements, or feedback JSONL (repeatable; same models)."),
    out: Path = typer.Option(..., "--out", help="Router file to write."),
    method: str = typer.Option("logistic", "--method", help="knn, logistic, mlp, mf or ensemble."),
    cache: Optional[Path] = typer.Option(DEFAULT_CACHE, "--embeddings-cache", help="Directory caching prompt embeddings."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fit a learned router on all the data and write it to OUT."""
    import numpy as np

    from tokenomy.routing.datasets import RoutingDataset
    from tokenomy.routing.train import METHODS, train

    if method not in METHODS:
        typer.echo(f"error: --method must be one of {', '.join(METHODS)}", err=True)
        raise typer.Exit(2)
    sets = _load(data)
    models = sets[0].models
    if any(s.models != models for s in sets):
        typer.echo("error: the datasets do not have the same models", err=True)
        raise typer.Exit(2)
    X = np.concatenate([_embed(s.prompts, cache, s.name) for s in sets])
    merged = RoutingDataset(
        "+".join(s.name for s in sets),
        [p for s in sets for p in s.prompts],
        models,
        np.concatenate([s.quality for s in sets]),
        np.concatenate([s.cost for s in sets]),
    )
    router = train(method, X, merged, seed=seed)
    router.save(out)
    typer.echo(f"wrote {out}: {method} router over {len(models)} models, {len(merged)} prompts")


@router_app.command("eval")
def eval_command(
    data: list[Path] = typer.Option(..., "--data", help="Dataset file(s) to evaluate on (repeatable)."),
    router: Optional[Path] = typer.Option(None, "--router", help="Router file to score (default: train/test split)."),
    method: str = typer.Option("logistic", "--method", help="knn, logistic, mlp, mf, ensemble; several comma-separated, or all."),
    folds: int = typer.Option(5, "--folds", min=1, help="Cross-validation folds (1: one 70/30 split)."),
    seed: int = typer.Option(0, "--seed"),
    cache: Optional[Path] = typer.Option(DEFAULT_CACHE, "--embeddings-cache"),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Cost–quality curve, AIQ, APGR/CPT against single models, random routing and the oracle."""
    from tokenomy.routing.learned import LearnedRouter
    from tokenomy.routing.train import METHODS, cross_validate, evaluate

    methods = list(METHODS) if method == "all" else [m.strip() for m in method.split(",")]
    if any(m not in METHODS for m in methods):
        typer.echo(f"error: --method must be one of {', '.join(METHODS)} or all", err=True)
        raise typer.Exit(2)
    reports: list[dict[str, Any]] = []
    fitted = LearnedRouter.load(router) if router is not None else None
    for ds in _load(data):
        X = _embed(ds.prompts, cache, ds.name)
        if fitted is not None:
            reports.append(evaluate(fitted, X, ds, seed=seed))
        else:
            for m in methods:
                reports.append(cross_validate(m, X, ds, folds=folds, seed=seed))
    if fmt == "json":
        typer.echo(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        typer.echo(render_table(reports))


def render_table(reports: list[dict[str, Any]]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title="learned router (held-out predictions)")
    for col in ("dataset", "method", "n", "AIQ", "AIQ rand", "AIQ zero", "best single", "cost@97%", "dominates", "APGR", "CPT50", "CPT80"):
        table.add_column(col)
    for r in reports:
        best = r["best_single"]
        ratio = r.get("cost_ratio_at_97pct_best")
        table.add_row(
            r["dataset"],
            r["method"],
            str(r["n"]),
            f"{r['aiq']:.3f}",
            f"{r['aiq_random']:.3f}",
            f"{r['aiq_zero_router']:.3f}",
            f"{best['model']} {best['accuracy']:.3f} @ ${best['cost']:.6f}",
            "-" if ratio is None else f"{ratio:.0%} of best",
            "yes" if r["dominates_random"] else f"no ({r['min_margin_vs_random']:+.3f})",
            f"{r['apgr']:.3f}" if "apgr" in r else "",
            "" if r.get("cpt50") is None else f"{r['cpt50']:.0%}",
            "" if r.get("cpt80") is None else f"{r['cpt80']:.0%}",
        )
    out = StringIO()
    Console(file=out, width=200).print(table)
    return out.getvalue()
