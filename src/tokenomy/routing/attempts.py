"""Every answer an execution may pay for: what a budget reservation has to cover.

The resilient executor (``fallback.py``) and the cascade (``cascade.py``) decide at
run time where a call goes; the budget stage must reserve, *before* the call, for
the dearest way that can turn out. This module says what that is, from the same
configuration the executor follows:

- a plain call pays for **one** answer, from any deployment of its chain
  (``call.targets``: the chosen model, then its ``routing.fallbacks``) or of a
  model the executor can switch to on a context-window or content-policy error
  (``routing.context_fallbacks`` / ``content_policy_fallbacks``, followed
  transitively). Failed attempts are charged nothing (zero-cost ``attempt``
  items), so retries and failover add no attempt of their own;
- a cascade pays for **every level** it may reach (each a plain call on that
  level's chain) plus, before each escalation, one **judge** call when a judge
  model is configured (its prompt holds the question and the rejected answer).

Token counts and prices are left to ``budgets.estimate``: an attempt says which
deployments may serve it and, where it is not the call's own request, how many
tokens go in and out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tokenomy.errors import GatewayError
from tokenomy.models import ModelRegistry, Target
from tokenomy.pipeline.call import Call
from tokenomy.routing.settings import RoutingSettings


@dataclass(frozen=True, slots=True)
class PaidAttempt:
    """One answer the call may be charged for, by whichever of ``targets`` serves it.

    ``input_tokens`` / ``output_tokens`` are ``None`` for an attempt that sends the
    call's own request (its counted prompt, its output cap × ``n``). ``reads_answer``:
    the prompt also holds one answer of the call, up to its output cap (a judge's).
    """

    targets: tuple[Target, ...]
    input_tokens: int | None = None
    output_tokens: int | None = None
    reads_answer: bool = False


class AttemptPlanner:
    """Lists a call's ``PaidAttempt``s as ``ResilientExecuteStage`` and ``run_cascade`` would run them.

    The fallbacks reachable from a chain depend only on the configuration, so they
    are computed once per distinct chain of model names.
    """

    def __init__(self, registry: ModelRegistry, routing: RoutingSettings) -> None:
        self.registry = registry
        self.routing = routing
        self._reachable: dict[tuple[str, ...], tuple[Target, ...]] = {}
        #: no context/content-policy fallbacks configured: a chain reaches nothing beyond itself
        self._closed = not (routing.context_fallbacks or routing.content_policy_fallbacks)

    def attempts(self, call: Call) -> list[PaidAttempt]:
        """The attempts of ``call``, in the order they may happen."""
        plan = call.annotations.get("cascade")
        if plan is None:
            return [PaidAttempt(self.reachable(call.targets, call.kind))]
        from tokenomy.routing.cascade import JUDGE_MAX_TOKENS, judge_prompt_tokens

        levels = [PaidAttempt(self.reachable(chain, call.kind)) for chain in plan.chains]
        judge = plan.settings.checks.judge_model
        if not judge or len(levels) < 2:
            return levels
        entry = _resolve(self.registry, judge, "chat")
        if entry is None:  # the cascade accepts answers when its judge is missing: no judge call is paid
            return levels
        judge_targets = self.reachable(entry.targets, "chat")
        judge_call = PaidAttempt(judge_targets, judge_prompt_tokens(call, judge), JUDGE_MAX_TOKENS, reads_answer=True)
        # a judge grades every answer but the last level's, which is returned as it is
        return [*levels, *([judge_call] * (len(levels) - 1))]

    def reachable(self, chain: Iterable[Target], kind: str) -> tuple[Target, ...]:
        """``chain`` plus the deployments of every context/content-policy fallback reachable from it."""
        chain = tuple(chain)
        if self._closed:
            return chain
        names = tuple(dict.fromkeys(t.deployment.name for t in chain))
        key = (kind, *names)
        extra = self._reachable.get(key)
        if extra is None:
            extra = self._reachable[key] = self._fallback_targets(names, kind)
        return chain + extra if extra else chain

    def _fallback_targets(self, names: tuple[str, ...], kind: str) -> tuple[Target, ...]:
        seen = set(names)
        todo = list(names)
        out: list[Target] = []
        tables = (self.routing.context_fallbacks, self.routing.content_policy_fallbacks)
        while todo:
            name = todo.pop()
            for table in tables:
                for fallback in table.get(name, ()):
                    if fallback in seen:
                        continue
                    seen.add(fallback)
                    entry = _resolve(self.registry, fallback, kind)
                    if entry is not None:
                        out.extend(entry.targets)
                        todo.append(fallback)
        return tuple(out)


def _resolve(registry: ModelRegistry, name: str, kind: str) -> Any:
    """The registry entry, or ``None`` for a misconfigured fallback (the executor fails on it too)."""
    try:
        return registry.resolve(name, kind)
    except GatewayError:
        return None
