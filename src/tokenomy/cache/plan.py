"""Per call, what the cache may do: namespace, keys, read/write, tiers, TTL (config policy + request headers).

Computed once by the first cache stage and kept in ``call.annotations["cache"]``
so the exact, semantic and coalescing stages agree on one plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenomy.cache.keys import CacheControl, exact_key, is_sampled, namespace_of
from tokenomy.config import CachePolicy, CacheSettings
from tokenomy.pipeline.call import Call

ANNOTATION = "cache"


@dataclass(slots=True)
class CachePlan:
    namespace: str
    control: CacheControl
    exact: bool
    semantic: bool
    ttl_s: float
    #: a cached answer may be served to this call (deterministic request, or opted in)
    servable: bool
    key: str
    tags: tuple[str, ...] = ()
    #: set once an inner tier has stored the answer, so outer tiers do not store it twice
    stored: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lookup(self) -> bool:
        return self.control.lookup and self.servable

    @property
    def store(self) -> bool:
        return self.control.store


class CachePlanner:
    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self.parts = tuple(settings.namespace_by)

    def policy_for(self, call: Call) -> CachePolicy | None:
        identity = call.identity
        for policy in self.settings.policies:
            if policy.key is not None and policy.key != identity.key_id:
                continue
            if policy.team is not None and policy.team != identity.team:
                continue
            if policy.feature is not None and policy.feature != identity.feature:
                continue
            if policy.model is not None and policy.model != call.model_asked:
                continue
            return policy
        return None

    def plan(self, call: Call) -> CachePlan | None:
        """The call's plan, or ``None`` when caching does not apply to it at all."""
        existing = call.annotations.get(ANNOTATION)
        if existing is not None:
            return existing
        settings = self.settings
        if not settings.enabled or call.kind != "chat":
            return None
        policy = self.policy_for(call)
        control = CacheControl.from_headers(call.headers)
        exact = settings.exact.enabled and control.exact
        semantic = settings.semantic.enabled and control.semantic
        ttl = settings.ttl_s
        serve_sampled = settings.serve_sampled
        shared = settings.shared
        if policy is not None:
            # a policy may switch a tier on or off for its calls; the request's header can still switch it off
            if policy.exact is not None:
                exact = policy.exact and control.exact
            if policy.semantic is not None:
                semantic = policy.semantic and control.semantic
            ttl = policy.ttl_s or ttl
            serve_sampled = policy.serve_sampled if policy.serve_sampled is not None else serve_sampled
            shared = policy.shared if policy.shared is not None else shared
        namespace = namespace_of(call, self.parts, shared)
        servable = control.opted_in or serve_sampled or not is_sampled(call, settings.missing_temperature_is_sampled)
        plan = CachePlan(
            namespace=namespace,
            control=control,
            exact=exact,
            semantic=semantic,
            ttl_s=ttl,
            servable=servable,
            key=exact_key(call, namespace),
            tags=call.identity.tags,
        )
        call.annotations[ANNOTATION] = plan
        return plan
