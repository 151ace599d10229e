"""Composition root: settings → stores, providers, pipeline → ASGI app.

Nothing is global: everything a request needs hangs off ``app.state.gateway``,
so tests can build as many independent gateways as they like.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from tokenomy.api import admin as admin_api
from tokenomy.api import anthropic as anthropic_api
from tokenomy.api import batches as batches_api
from tokenomy.api import cache as cache_api
from tokenomy.api import health
from tokenomy.api import metrics as metrics_api
from tokenomy.api.dashboard import routes as dashboard_routes
from tokenomy.api import jobs as jobs_api
from tokenomy.api import openai as openai_api
from tokenomy.api.router import GatewayASGI
from tokenomy.budgets.factory import Enforcement, build_enforcement
from tokenomy.budgets.stage import BudgetStage
from tokenomy.cache.layer import CacheLayer, build_cache
from tokenomy.embedding import SharedEmbedder, minilm_available
from tokenomy.config import ConfigError, Settings
from tokenomy.jobs.service import JobService
from tokenomy.models import ModelRegistry
from tokenomy.observe.metrics import GatewayMetrics
from tokenomy.observe.tracing import StageTracer, make_tracer
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.identify import IdentifyStage
from tokenomy.pipeline.record import RecordStage, Recorder
from tokenomy.pipeline.resolve import ResolveStage
from tokenomy.pipeline.runner import Pipeline, Stage
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.providers import available_providers
from tokenomy.providers.base import Provider
from tokenomy.providers.local import is_available as local_available
from tokenomy.routing.fallback import LatencyBoard, ResilientExecuteStage
from tokenomy.routing.health import DeploymentHealth, MemoryHealth, RedisHealth
from tokenomy.routing.stage import RouteStage
from tokenomy.store.ledger import Ledger, LedgerRow
from tokenomy.store.ledger_factory import make_ledger
from tokenomy.store.writer import LedgerWriter
from tokenomy.tokens.counting import warm_up
from tokenomy.tokens.stage import build_token_stage

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything one gateway process holds."""

    settings: Settings
    catalog: PriceCatalog
    registry: ModelRegistry
    providers: dict[str, Provider]
    pipeline: Pipeline
    ledger: Ledger | None
    writer: LedgerWriter | None
    ready: bool = False
    recorders: list[Recorder] = field(default_factory=list)
    enforcement: Enforcement | None = None
    metrics: GatewayMetrics | None = None
    tracer: StageTracer | None = None
    health: DeploymentHealth | None = None
    #: async jobs, batches and their queue (``None``: not started with jobs)
    jobs: JobService | None = None
    #: job workers running inside this process (``jobs.gateway_workers``)
    workers: list[Any] = field(default_factory=list)
    _worker_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cache: CacheLayer | None = None

    async def start(self, *, run_workers: bool = True) -> None:
        await asyncio.to_thread(warm_up)
        if self.cache is not None:
            await self.cache.start()
        if self.ledger is not None and self.writer is not None:
            await self.ledger.start()
            self.writer.start()
        if self.enforcement is not None:
            await self.enforcement.start()  # after the ledger: counters are reconciled with it
        for provider in self.providers.values():
            await provider.start()
        if self.jobs is not None:
            await self.jobs.start()
            if run_workers:
                self.start_workers(self.settings.jobs.gateway_workers)
        tune_garbage_collector()
        self.ready = True

    def start_workers(self, count: int) -> None:
        """Run ``count`` job workers in this process's event loop."""
        from tokenomy.jobs.worker import JobWorker

        for _ in range(count):
            worker = JobWorker(self)
            self.workers.append(worker)
            self._worker_tasks.append(asyncio.get_running_loop().create_task(worker.run(), name="job-worker"))

    async def stop(self) -> None:
        """Graceful stop: in-flight requests have finished (uvicorn waits); flush what is pending."""
        self.ready = False
        for worker in self.workers:
            await worker.stop(self.settings.server.graceful_timeout_s)
        for task in self._worker_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.workers.clear()
        self._worker_tasks.clear()
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:
                log.exception("closing provider %s failed", provider.name)
        if self.enforcement is not None:
            await self.enforcement.stop()
        if self.health is not None:
            await self.health.aclose()
        if self.cache is not None:
            try:
                await self.cache.aclose()
            except Exception:
                log.exception("closing the cache failed")
        if self.writer is not None:
            await self.writer.aclose()
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.jobs is not None:
            await self.jobs.aclose()
        if self.tracer is not None:
            self.tracer.shutdown()


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections on the request path.

    A request allocates thousands of short-lived objects; with CPython's default
    first-generation threshold (700) the collector runs every few requests and
    also walks the long-lived caches. Everything built at start-up is frozen out
    of its sight, and the threshold is raised so young objects die before a
    collection looks at them (measured in bench/overhead.py).
    """
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(50_000, second, third)


def build_gateway(settings: Settings, *, clock: Callable[[], float] = time.time) -> Gateway:
    catalog = PriceCatalog.load_default()
    try:
        if settings.prices:
            catalog = catalog.with_overrides(settings.prices)
        registry = ModelRegistry.from_settings(settings, catalog, local_available=local_available())
    except ValueError as exc:  # a bad price override: say which, before serving anything
        raise ConfigError(f"invalid configuration: {exc}") from exc
    needed = {target.deployment.provider for entry in registry for target in entry.targets}
    providers = available_providers(needed, settings)
    ledger: Ledger | None = None
    writer: LedgerWriter | None = None
    recorders: list[Recorder] = []
    if settings.ledger.enabled:
        ledger = make_ledger(settings.ledger)
        writer = LedgerWriter(
            ledger,
            batch_size=settings.ledger.batch_size,
            flush_interval_s=settings.ledger.flush_interval_s,
            max_pending=settings.ledger.max_pending,
        )
        sink = writer.record

        def record_row(call: Call) -> None:
            # A queued job's successful call is written by the job store, in the
            # transaction that completes the job (tokenomy.jobs.worker).
            if call.outcome == "ok" and call.annotations.get("ledger_row_by_job"):
                return
            sink(LedgerRow.from_call(call))

        recorders.append(record_row)
    embedder = _shared_embedder(settings)
    cache = build_cache(settings.cache, embedder=embedder)
    metrics: GatewayMetrics | None = None
    if settings.observe.metrics:
        metrics = GatewayMetrics()
        recorders.append(metrics.record)
        if writer is not None:
            ledger_writer = writer
            metrics.watch_queue("ledger", lambda: ledger_writer.pending)
    # Tracing is off by default; when off the pipeline's stages are not wrapped at all.
    tracer = make_tracer(settings.observe.tracing)
    routing = settings.routing
    health: DeploymentHealth
    if routing.health.redis_url:
        health = RedisHealth(
            routing.health.redis_url,
            routing.health.key_prefix,
            routing.health.failures,
            routing.health.cooldown_s,
        )
    else:
        health = MemoryHealth(routing.health.failures, routing.health.cooldown_s)
    latency = LatencyBoard()
    route = RouteStage(
        registry,
        routing,
        embedder=_router_embedder(settings, embedder),
        latency=latency if routing.health.latency_aware else None,
    )
    enforcement = build_enforcement(settings, registry, clock, ledger=ledger)
    stages: list[Stage] = [
        RecordStage(recorders),
        IdentifyStage(),
        ResolveStage(registry, route.names),
        # caches answer for the request as asked, before routing picks a model
        *cache.stages,
        route,
        # token policies after routing: caps and pruning fit the model actually chosen
        build_token_stage(settings.tokens, registry, providers),
    ]
    if settings.budgets.enabled:
        # last before execute: it reserves for the targets routing chose, at the caps the token
        # stage set; every endpoint that costs money passes here (no side door)
        stages.append(BudgetStage(enforcement.enforcer))
    stages.append(ResilientExecuteStage(providers, registry, routing, health, latency=latency))
    pipeline = Pipeline(stages, tracer=tracer)
    return Gateway(
        settings,
        catalog,
        registry,
        providers,
        pipeline,
        ledger,
        writer,
        recorders=recorders,
        health=health,
        enforcement=enforcement,
        jobs=JobService(settings),
        cache=cache,
        metrics=metrics,
        tracer=tracer,
    )


def _shared_embedder(settings: Settings) -> SharedEmbedder | None:
    """One MiniLM for the semantic cache and the learned routers, when either is configured."""
    cache = settings.cache
    semantic = cache.enabled and (cache.semantic.enabled or any(p.semantic for p in cache.policies))
    learned = any(r.strategy == "learned" for r in settings.routing.routers)
    if not (semantic or learned) or not minilm_available():
        return None
    return SharedEmbedder(cache.semantic.embed_threads)


def _router_embedder(settings: Settings, shared: SharedEmbedder | None):  # -> routing MiniLMEmbedder | None
    """The learned routers' view of the shared embedder."""
    if not any(r.strategy == "learned" for r in settings.routing.routers):
        return None
    if shared is None:
        log.warning("learned routers need `pip install 'tokenomy[routing]'`; routing to their default tier")
        return None
    from tokenomy.routing.embedder import MiniLMEmbedder

    return MiniLMEmbedder(shared)


def create_app(settings: Settings, gateway: Gateway | None = None) -> GatewayASGI:
    gateway = gateway or build_gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai_api.embeddings, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/messages", anthropic_api.messages, methods=["POST"]),
        Route("/v1/async/chat/completions", jobs_api.submit_chat, methods=["POST"]),
        Route("/v1/async/embeddings", jobs_api.submit_embeddings, methods=["POST"]),
        Route("/v1/async/jobs/{job_id}", jobs_api.get_job, methods=["GET"]),
        Route("/v1/async/jobs/{job_id}/cancel", jobs_api.cancel_job, methods=["POST"]),
        Route("/v1/files", batches_api.upload_file, methods=["POST"]),
        Route("/v1/files", batches_api.list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", batches_api.get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", batches_api.delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", batches_api.file_content, methods=["GET"]),
        Route("/v1/batches", batches_api.create_batch, methods=["POST"]),
        Route("/v1/batches", batches_api.list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batches_api.get_batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches_api.cancel_batch, methods=["POST"]),
        Route("/v1/feedback", cache_api.feedback, methods=["POST"]),
        Route("/v1/cache/invalidate", cache_api.invalidate, methods=["POST"]),
        Route("/v1/cache/stats", cache_api.stats, methods=["GET"]),
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *admin_api.ROUTES,
    ]
    # The completion routes bypass Starlette (api/router.py); the rest go through it.
    hot = {route.path: route.endpoint for route in routes if route.methods and "POST" in route.methods}
    observe_routes: list[BaseRoute] = []
    if settings.observe.metrics:
        observe_routes.append(Route("/metrics", metrics_api.metrics, methods=["GET"]))
    if settings.observe.dashboard:
        observe_routes.extend(dashboard_routes())
    app = Starlette(
        routes=[*routes, *observe_routes],
        lifespan=lifespan,
        exception_handlers=health.EXCEPTION_HANDLERS,
    )
    app.state.gateway = gateway
    return GatewayASGI(app, hot)


def app_from_environment() -> GatewayASGI:
    """Factory for ``uvicorn --factory`` (one call per worker process): config from ``TOKENOMY_CONFIG``."""
    from tokenomy.config import load_settings

    path = os.environ.get("TOKENOMY_CONFIG") or None
    settings = load_settings(path)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings)
