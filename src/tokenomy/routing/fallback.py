"""The resilient executor: retries with backoff, failover along the chain, circuit breakers.

``call.targets`` is the chain, best first: the chosen model's deployments
(cheapest healthy first), then its fallback models' deployments. Each error
class ends in one documented behaviour:

==========================  ===================================================================
error                       behaviour
==========================  ===================================================================
timeout, connection, 5xx,   retry the same deployment (``retry.attempts`` tries, exponential
malformed answer            backoff with jitter), counting toward its circuit breaker; then the
                            next deployment/model in the chain
429 (rate limited)          open the deployment's circuit for its Retry-After; go to the next
                            deployment at once; if none is left, wait Retry-After (when it is
                            ≤ ``retry.max_retry_after_s``) and retry
context window exceeded     skip the remaining deployments of that model; go to
                            ``context_fallbacks[model]``, else to the later models in the chain
                            whose catalog context window is larger; else answer the 400
content policy              no retry; try the model's other deployments (another provider's
                            filter may differ), then ``content_policy_fallbacks[model]``;
                            else answer the 400
other 4xx (the client's)    answer at once: retrying cannot help
all exhausted / deadline    answer the last error (its status and envelope); if every
                            deployment was cooling down: 503 ``service_unavailable``
==========================  ===================================================================

A stream that breaks after its first chunk cannot be replayed (the client has
it): it is charged for what was streamed and reported in-band. Every failed
attempt is a zero-cost item (step ``attempt``, outcome = the error code) in
the CostTrace, so the ledger shows each one; only the answer that succeeded is
charged, once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tokenomy.errors import (
    ContentPolicyViolation,
    ContextWindowExceeded,
    GatewayError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
)
from tokenomy.models import ModelRegistry, Target
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.execute import ExecuteStage
from tokenomy.pipeline.reply import Reply
from tokenomy.pipeline.runner import Next
from tokenomy.providers.base import Provider
from tokenomy.providers.usage import Usage
from tokenomy.routing.health import DeploymentHealth, MemoryHealth, deployment_key
from tokenomy.routing.settings import RoutingSettings

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def classify(err: GatewayError) -> str:
    """``transient`` | ``rate_limit`` | ``context`` | ``policy`` | ``client``."""
    if isinstance(err, ContextWindowExceeded):
        return "context"
    if isinstance(err, ContentPolicyViolation):
        return "policy"
    if isinstance(err, RateLimited):
        return "rate_limit"
    if isinstance(err, UpstreamError):  # includes timeouts, connection errors, 5xx, malformed answers
        return "transient"
    return "client"


def retry_after_s(err: GatewayError) -> float | None:
    for name, value in err.headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class LatencyBoard:
    """Recent upstream latency per deployment (EWMA), for latency-aware ordering."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.ms: dict[str, float] = {}

    def observe(self, key: str, ms: float) -> None:
        old = self.ms.get(key)
        self.ms[key] = ms if old is None else old + self.alpha * (ms - old)


class ResilientExecuteStage(ExecuteStage):
    """ExecuteStage plus retries, failover along ``call.targets`` and circuit breakers."""

    name = "execute"

    def __init__(
        self,
        providers: dict[str, Provider],
        registry: ModelRegistry,
        routing: RoutingSettings,
        health: DeploymentHealth | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        latency: LatencyBoard | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(providers)
        self.registry = registry
        self.routing = routing
        self.retry = routing.retry
        self.health = health or MemoryHealth(routing.health.failures, routing.health.cooldown_s)
        self.sleep = sleep
        self.latency = latency or LatencyBoard()
        self._rng = rng or random.Random()
        self._failing: set[str] = set()  # keys with failures counted here (reset on success)

    async def __call__(self, call: Call, next: Next) -> Reply:
        cascade = call.annotations.get("cascade")
        if cascade is not None:
            from tokenomy.routing.cascade import run_cascade

            return await run_cascade(self, call, cascade)
        return await self.serve(call, call.targets)

    # -- the chain --------------------------------------------------------------------
    async def serve(self, call: Call, targets: Sequence[Target]) -> Reply:
        """Answer from the first deployment in ``targets`` that succeeds (retrying/failing over)."""
        chain = list(targets)
        if not chain:
            raise ServiceUnavailable("no deployment can serve this request")
        cooling = await self.health.open_keys(deployment_key(t.deployment) for t in chain)
        deadline = call.started_perf + self.retry.deadline_s
        last: GatewayError | None = None
        index = 0
        while index < len(chain):
            target = chain[index]
            index += 1
            key = deployment_key(target.deployment)
            if key in cooling:
                self._note(call, target, "skipped:circuit_open")
                continue
            tries = 0
            while True:
                tries += 1
                start = time.perf_counter()
                try:
                    reply = await self.attempt(call, target)
                except GatewayError as err:
                    last = err
                    kind = classify(err)
                    self._failed(call, target, err)
                    if kind == "client":
                        self._stamp(err, call)
                        raise
                    if kind in ("context", "policy"):
                        replacement = self._replacement(kind, target, chain[index:])
                        if not replacement:
                            self._stamp(err, call)
                            raise
                        chain = chain[:index] + replacement
                        cooling |= await self.health.open_keys(deployment_key(t.deployment) for t in replacement)
                        break
                    if kind == "rate_limit":
                        wait = retry_after_s(err)
                        await self.health.trip(key, wait if wait is not None else self._backoff(tries))
                        cooling.add(key)
                        others = any(deployment_key(t.deployment) not in cooling for t in chain[index:])
                        if others or tries >= self.retry.attempts:
                            break
                        wait = self._backoff(tries) if wait is None else wait
                        if wait > self.retry.max_retry_after_s or time.perf_counter() + wait > deadline:
                            break
                        await self.sleep(wait)
                        continue
                    # transient: count toward the breaker, back off, retry
                    self._failing.add(key)
                    if await self.health.record_failure(key):
                        cooling.add(key)
                        break
                    if tries >= self.retry.attempts:
                        break
                    wait = self._backoff(tries)
                    if time.perf_counter() + wait > deadline:
                        break
                    await self.sleep(wait)
                    continue
                self.latency.observe(key, (time.perf_counter() - start) * 1000.0)
                if key in self._failing:
                    self._failing.discard(key)
                    await self.health.record_success(key)
                return reply
            if time.perf_counter() > deadline:
                break
        if last is None:
            raise self._stamp(
                ServiceUnavailable(
                    "every deployment for this request is cooling down after failures; retry later",
                    headers={"Retry-After": f"{self.routing.health.cooldown_s:g}"},
                ),
                call,
            )
        raise self._stamp(last, call)

    def _replacement(self, kind: str, target: Target, rest: list[Target]) -> list[Target]:
        model = target.deployment.name
        configured = (
            self.routing.context_fallbacks if kind == "context" else self.routing.content_policy_fallbacks
        ).get(model)
        extra = [t for name in configured or () for t in self.registry.resolve(name).targets]
        if kind == "policy":
            # another deployment of the same model (another provider) may filter differently
            return [t for t in rest if t.deployment.name == model] + extra
        if extra:
            return extra
        if kind == "context":
            window = target.price.context_window if target.price else None
            if window is not None:
                return [
                    t
                    for t in rest
                    if t.deployment.name != model and t.price and (t.price.context_window or 0) > window
                ]
        return []

    def _backoff(self, tries: int) -> float:
        base = min(self.retry.backoff_max_s, self.retry.backoff_s * self.retry.backoff_multiplier ** (tries - 1))
        return base * (0.8 + 0.4 * self._rng.random())

    # -- the trace ------------------------------------------------------------------------
    def _failed(self, call: Call, target: Target, err: GatewayError) -> None:
        """A failed attempt: a zero-cost item in the trace (the upstream billed nothing we know of)."""
        deployment = target.deployment
        call.trace.add(CostItem("attempt", deployment.name, deployment.provider, Usage(), 0.0, err.code or err.type))
        log.info("attempt on %s (%s) failed: %s", deployment.name, deployment.provider, err.message)

    def _note(self, call: Call, target: Target, why: str) -> None:
        skipped: list[dict[str, Any]] = call.annotations.setdefault("skipped", [])
        skipped.append({"model": target.deployment.name, "provider": target.deployment.provider, "why": why})

    @staticmethod
    def _stamp(err: GatewayError, call: Call) -> GatewayError:
        attempts = sum(1 for item in call.trace.items if item.step == "attempt")
        err.headers = {**err.headers, "x-tokenomy-attempts": str(attempts)}
        return err
