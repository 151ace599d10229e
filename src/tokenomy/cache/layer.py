"""Builds the cache tiers from settings: stores, stages and their lifecycle, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenomy.cache.coalesce import CoalesceStage, RemoteFlights
from tokenomy.cache.exact import ExactCacheStage
from tokenomy.cache.plan import CachePlanner
from tokenomy.cache.store import AnswerStore, MemoryAnswerStore, RedisAnswerStore
from tokenomy.config import CacheSettings
from tokenomy.pipeline.runner import Stage


@dataclass
class CacheLayer:
    """Everything the cache holds for one gateway process."""

    settings: CacheSettings
    store: AnswerStore
    planner: CachePlanner
    stages: list[Stage]
    coalesce: CoalesceStage | None = None
    semantic: Any = None  # SemanticCacheStage when enabled
    closers: list[Any] = field(default_factory=list)

    async def start(self) -> None:
        await self.store.start()
        if self.semantic is not None:
            await self.semantic.start()

    async def aclose(self) -> None:
        if self.semantic is not None:
            await self.semantic.aclose()
        for closer in self.closers:
            await closer()
        await self.store.aclose()


def make_store(settings: CacheSettings) -> AnswerStore:
    if settings.backend == "redis":
        return RedisAnswerStore(settings.redis_url, prefix=settings.key_prefix, max_entries=settings.max_entries)
    return MemoryAnswerStore(settings.max_entries)


def build_cache(settings: CacheSettings, *, embedder: Any = None) -> CacheLayer:
    """The cache stages in pipeline order: exact → semantic → coalesce."""
    store = make_store(settings)
    planner = CachePlanner(settings)
    layer = CacheLayer(settings, store, planner, stages=[])
    if not settings.enabled:
        return layer
    layer.stages.append(ExactCacheStage(store, planner, settings))
    if settings.semantic.enabled or any(policy.semantic for policy in settings.policies):
        from tokenomy.cache.semantic import build_semantic_stage

        layer.semantic = build_semantic_stage(settings, store, planner, embedder=embedder)
        layer.stages.append(layer.semantic)
    if settings.coalesce.enabled:
        remote = None
        if settings.coalesce.backend == "redis":
            remote = RemoteFlights(settings.redis_url, settings.key_prefix + ":flight", settings.coalesce.lock_ttl_s)
            layer.closers.append(remote.aclose)
        layer.coalesce = CoalesceStage(planner, settings.coalesce, remote)
        layer.stages.append(layer.coalesce)
    return layer
