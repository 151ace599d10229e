"""Which deployments may serve the call: the model asked, looked up in the registry."""

from __future__ import annotations

from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Reply
from tokenomy.pipeline.runner import Next, Stage


class ResolveStage(Stage):
    name = "resolve"

    def __init__(self, registry: ModelRegistry, routers: frozenset[str] = frozenset()) -> None:
        self.registry = registry
        #: names that are routers, not models: the route stage chooses their targets
        self.routers = routers

    async def __call__(self, call: Call, next: Next) -> Reply:
        if call.model_asked in self.routers and call.kind == "chat":
            return await next(call)
        entry = self.registry.resolve(call.model_asked, call.kind)
        call.targets = entry.targets
        call.baseline_price = entry.primary.price
        return await next(call)
