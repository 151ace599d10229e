"""The route stage: choose where a call goes, before it is executed.

A request for a router's name (``model: "auto"``) is routed by that router
(rules, learned or cascade); a request for a concrete model is honoured, unless
a ``routing.substitute`` policy matching the caller hands it to a router. Either
way the stage sets ``call.targets`` to the whole chain the executor may use —
the chosen model's deployments, cheapest (then, optionally, fastest) first,
followed by its configured fallbacks — and records the decision and its reason
in ``call.route`` (``x-tokenomy-route`` header, ledger ``route`` column).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenomy.config import ConfigError
from tokenomy.errors import ModelNotFound
from tokenomy.models import ModelRegistry, Target
from tokenomy.pipeline.call import Call
from tokenomy.pipeline.reply import Reply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.routing.health import deployment_key
from tokenomy.routing.rules import CompiledCondition, PromptFacts, RuleRouter, describe
from tokenomy.routing.settings import RouterSettings, RoutingSettings

log = logging.getLogger(__name__)


class RoutingConfigError(ConfigError):
    """The routing section names a model, tier or router file that does not exist."""


def _blended(target: Target) -> float:
    """A deployment's price for ordering: input + output per 1M tokens (unknown: last)."""
    if target.price is None:
        return float("inf")
    return target.price.input + target.price.output


@dataclass
class CascadePlan:
    """What the executor needs to run a cascade: model chains cheapest first, and the checks."""

    models: list[str]
    chains: list[tuple[Target, ...]]
    settings: Any  # CascadeSettings


class Router:
    """One configured router: decides ``(model, reason)`` for a call."""

    def __init__(self, settings: RouterSettings, stage: RouteStage) -> None:
        self.settings = settings
        self.stage = stage
        self.name = settings.name
        tiers = stage.routing.tiers
        self.default_tier = settings.default_tier or (next(iter(tiers)) if tiers else None)
        self.rules: RuleRouter | None = None
        self.learned = None
        self.candidates: list[int] = []
        self.candidate_models: list[str] = []
        if settings.strategy == "rules":
            if self.default_tier is None:
                raise RoutingConfigError(f"router {self.name!r}: needs a default_tier or routing.tiers")
            self.rules = RuleRouter(settings.rules, self.default_tier)
            for rule in settings.rules:
                stage.models_of(rule.tier)
            stage.models_of(self.default_tier)
            every = [m for r in settings.rules for m in stage.models_of(r.tier)] + stage.models_of(self.default_tier)
        elif settings.strategy == "learned":
            from tokenomy.routing.learned import LearnedRouter

            learned = settings.learned
            assert learned is not None
            path = Path(learned.path)
            if not path.is_absolute() and stage.base_dir is not None:
                path = stage.base_dir / path
            try:
                self.learned = LearnedRouter.load(path)
            except (OSError, ValueError) as exc:
                raise RoutingConfigError(f"router {self.name!r}: cannot load {path}: {exc}") from exc
            mapping = learned.models or {m: m for m in self.learned.models if m in stage.registry}
            for router_model, gateway_model in mapping.items():
                if router_model not in self.learned.models:
                    raise RoutingConfigError(f"router {self.name!r}: {router_model!r} is not in {path}")
                stage.registry.resolve(gateway_model)
                self.candidates.append(self.learned.models.index(router_model))
                self.candidate_models.append(gateway_model)
            if not self.candidates:
                raise RoutingConfigError(f"router {self.name!r}: no model of {path} maps to a gateway model")
            self.mapping = dict(zip(self.candidates, self.candidate_models))
            every = list(self.candidate_models)
        else:  # cascade
            cascade = settings.cascade
            assert cascade is not None
            models = cascade.models or [m for tier in tiers for m in tiers[tier]]
            if not models:
                raise RoutingConfigError(f"router {self.name!r}: a cascade needs models or routing.tiers")
            models = models[: cascade.max_depth]
            self.cascade = CascadePlan(models, [stage.chain([m]) for m in models], cascade)
            self.stream_model = cascade.stream_model or models[-1]
            every = list(models)
        baseline = settings.baseline_model
        if baseline is None:
            baseline = max(every, key=lambda m: _blended(stage.registry.resolve(m).primary))
        self.baseline_price = stage.registry.resolve(baseline).primary.price

    async def decide(self, call: Call) -> tuple[list[str], str]:
        """Models to use (the first is the choice) and why."""
        strategy = self.settings.strategy
        if strategy == "rules":
            assert self.rules is not None
            tier, why = self.rules.decide(PromptFacts.of(call))
            return self.stage.models_of(tier), f"tier {tier}; {why}"
        if strategy == "learned":
            return await self._learned(call)
        plan = self.cascade
        if call.stream or call.kind != "chat":
            return [self.stream_model], "cascade skipped for a stream: strongest model"
        call.annotations["cascade"] = plan
        return [plan.models[0]], f"cascade over {', '.join(plan.models)}"

    async def _learned(self, call: Call) -> tuple[list[str], str]:
        from tokenomy.routing.embedder import call_embedding

        learned = self.settings.learned
        assert learned is not None and self.learned is not None
        embedder = self.stage.embedder
        if embedder is None:
            tier = self.default_tier
            models = self.stage.models_of(tier) if tier else [self.candidate_models[-1]]
            return models, "learned router has no embedder: default"
        try:
            vector = await call_embedding(call, embedder)
        except Exception as exc:  # the embedder broke: route by default rather than fail the call
            log.warning("embedding failed (%s); routing to the default", exc)
            tier = self.default_tier
            models = self.stage.models_of(tier) if tier else [self.candidate_models[-1]]
            return models, "embedding failed: default"
        return self.decide_vector(vector)

    def decide_vector(self, vector: Any) -> tuple[list[str], str]:
        """The learned decision from an embedding (what the latency benchmark times)."""
        learned = self.settings.learned
        assert learned is not None and self.learned is not None
        p = self.learned.predict(vector)
        pick = self.learned.choose(
            p, self.candidates, quality_target=learned.quality_target, cost_weight=learned.cost_weight
        )
        model = self.mapping[pick]
        rule = (
            f"target {learned.quality_target:g}" if learned.quality_target is not None else f"lambda {learned.cost_weight:g}"
        )
        return [model], f"learned {self.learned.method}: p={p[pick]:.2f} ({rule})"


class RouteStage(Stage):
    name = "route"

    def __init__(
        self,
        registry: ModelRegistry,
        routing: RoutingSettings,
        *,
        embedder: Any = None,
        latency: Any = None,
        base_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.routing = routing
        self.embedder = embedder
        self.latency = latency  # LatencyBoard when routing.health.latency_aware
        self.base_dir = base_dir
        self._chains: dict[str, tuple[Target, ...]] = {}
        try:
            for model, chain in {**routing.fallbacks, **routing.context_fallbacks, **routing.content_policy_fallbacks}.items():
                for name in [model, *chain]:
                    self.registry.resolve(name)
            self.routers = {r.name: Router(r, self) for r in routing.routers}
        except ModelNotFound as exc:
            raise RoutingConfigError(f"routing: {exc.message}") from exc
        for name in self.routers:
            if name in registry:
                raise RoutingConfigError(f"router name {name!r} is also a model name")
        self.substitutes = [(CompiledCondition(s.when), set(s.models), self.routers[s.router]) for s in routing.substitute]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.routers)

    def models_of(self, tier_or_model: str) -> list[str]:
        models = self.routing.tiers.get(tier_or_model)
        if models is None:
            if tier_or_model not in self.registry:
                raise RoutingConfigError(f"{tier_or_model!r} is neither a tier nor a model")
            return [tier_or_model]
        for model in models:
            self.registry.resolve(model)
        return list(models)

    def chain(self, models: list[str], kind: str = "chat") -> tuple[Target, ...]:
        """Deployments of ``models`` in order, each model's cheapest first, then their fallbacks."""
        key = kind + "\x00" + "\x00".join(models)
        cached = self._chains.get(key)
        if cached is not None and self.latency is None:
            return cached
        seen: set[str] = set()
        out: list[Target] = []

        def add(model: str) -> None:
            if model in seen:
                return
            seen.add(model)
            entry = self.registry.resolve(model, kind)
            targets = list(entry.targets)
            if self.latency is not None:
                ms = self.latency.ms
                targets.sort(key=lambda t: (_blended(t), ms.get(deployment_key(t.deployment), 0.0)))
            else:
                targets.sort(key=_blended)
            out.extend(targets)

        for model in models:
            add(model)
        for model in models:
            for fallback in self.routing.fallbacks.get(model, ()):
                add(fallback)
        result = tuple(out)
        self._chains[key] = result
        return result

    def _router_for(self, call: Call) -> Router | None:
        router = self.routers.get(call.model_asked)
        if router is not None or not self.substitutes or call.kind != "chat":
            return router
        facts = None
        for cond, models, candidate in self.substitutes:
            if models and call.model_asked not in models:
                continue
            facts = facts or PromptFacts.of(call)
            if cond.match(facts) is not None:
                call.annotations["substituted"] = call.model_asked
                return candidate
        return None

    async def __call__(self, call: Call, next: Next) -> Reply:
        router = self._router_for(call)
        if router is None:
            if call.targets:
                call.targets = self.chain([call.targets[0].deployment.name], call.kind)
            reply = await next(call)
            if call.model_served and call.targets and call.model_served != call.targets[0].deployment.name:
                call.route = describe(f"fallback -> {call.model_served} (asked {call.model_asked})")
            return reply
        models, why = await router.decide(call)
        call.targets = self.chain(models)
        if "substituted" not in call.annotations:
            call.baseline_price = router.baseline_price
        call.route = describe(f"{router.name}:{router.settings.strategy} -> {models[0]} ({why})")
        call.annotations["route_model"] = models[0]
        reply = await next(call)
        if call.model_served and call.model_served != models[0] and "cascade" not in call.annotations:
            call.route = describe(f"{call.route}; fallback -> {call.model_served}")
        return reply
