"""A gateway pipeline without HTTP, for routing tests: same stages as ``app.build_gateway``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenomy.config import Settings, load_settings
from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.identify import IdentifyStage
from tokenomy.pipeline.record import RecordStage
from tokenomy.pipeline.reply import Completion, StreamReply
from tokenomy.pipeline.resolve import ResolveStage
from tokenomy.pipeline.runner import Pipeline
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.providers import available_providers
from tokenomy.routing.fallback import ResilientExecuteStage
from tokenomy.routing.health import DeploymentHealth, MemoryHealth
from tokenomy.routing.stage import RouteStage
from tokenomy.store.ledger import LedgerRow


class FakeSleep:
    """Records the waits instead of sleeping (backoff and Retry-After are asserted, not endured)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@dataclass
class Rig:
    settings: Settings
    pipeline: Pipeline
    execute: ResilientExecuteStage
    route: RouteStage
    sleep: FakeSleep
    rows: list[LedgerRow] = field(default_factory=list)

    async def chat(self, model: str, text: str = "hello", *, stream: bool = False, headers: dict[str, str] | None = None, **body: Any) -> tuple[Call, Any]:
        request = {"model": model, "messages": [{"role": "user", "content": text}], **body}
        if stream:
            request["stream"] = True
            request["stream_options"] = {"include_usage": True}
        call = Call(kind="chat", body=request, model_asked=model, stream=stream, headers=headers or {})
        reply = await self.pipeline.run(call)
        if isinstance(reply, StreamReply):
            chunks = [chunk async for chunk in reply.chunks()]
            return call, chunks
        assert isinstance(reply, Completion)
        return call, reply.body


def make_rig(
    models: list[dict[str, Any]] | None = None,
    routing: dict[str, Any] | None = None,
    health: DeploymentHealth | None = None,
    embedder: Any = None,
) -> Rig:
    settings = load_settings(None, models=models or [], routing=routing or {}, ledger={"enabled": False})
    catalog = PriceCatalog.load_default()
    registry = ModelRegistry.from_settings(settings, catalog)
    providers = available_providers({t.deployment.provider for e in registry for t in e.targets}, settings)
    sleep = FakeSleep()
    rows: list[LedgerRow] = []
    route = RouteStage(registry, settings.routing, embedder=embedder)
    health = health or MemoryHealth(settings.routing.health.failures, settings.routing.health.cooldown_s)
    execute = ResilientExecuteStage(providers, registry, settings.routing, health, sleep=sleep)
    pipeline = Pipeline(
        [
            RecordStage([lambda call: rows.append(LedgerRow.from_call(call))]),
            IdentifyStage(),
            ResolveStage(registry, route.names),
            route,
            execute,
        ]
    )
    return Rig(settings, pipeline, execute, route, sleep, rows)


def sim(name: str, price_model: str = "gpt-4o-mini", **options: Any) -> dict[str, Any]:
    """A simulated deployment spec."""
    return {"provider": "simulated", "model": name, "price_model": price_model, "read_timeout_s": 0.05, "options": options}


def model(name: str, *deployments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "deployments": list(deployments)}
