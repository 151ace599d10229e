"""The worst-case cost of a call, reserved before it goes upstream.

Worst case = counted input tokens × input price + output cap × output price × n,
where the output cap is ``min(requested max_tokens, model's max output, policy
cap)``. A request asking ``max_tokens: 999999999`` therefore reserves no more
than the model can produce or the policy allows, and a request without
``max_tokens`` reserves the policy cap. With ``enforce_cap`` the cap is also
written into the upstream request, so the answer can never cost more than was
reserved (otherwise a model's own default could exceed the reservation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokenomy.pipeline.call import Call
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages, count_text


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the call may use at most: tokens and dollars (``None``: price unknown)."""

    input_tokens: int
    output_tokens: int
    usd: float | None
    input_usd: float | None  # the least a call that reached upstream is charged

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def output_cap(body: dict[str, Any], model_max: int | None, policy_cap: int) -> int:
    """``min(requested, model max, policy cap)``; the policy cap when nothing is asked."""
    requested = body.get("max_completion_tokens") or body.get("max_tokens")
    cap = policy_cap
    if model_max:
        cap = min(cap, model_max)
    if isinstance(requested, int) and not isinstance(requested, bool) and requested > 0:
        cap = min(cap, requested)
    return cap


def estimate(call: Call, policy_cap: int, *, enforce_cap: bool = True) -> Estimate:
    """The worst case over the call's targets (a fallback may be dearer than the first choice)."""
    body = call.body
    if call.kind == "embeddings":
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
        tokens = sum(count_text(i) if isinstance(i, str) else len(i) if isinstance(i, list) else 1 for i in items)
        usd = _max_cost(call, Usage(input_tokens=tokens))
        return Estimate(tokens, 0, usd, usd)

    first = call.targets[0] if call.targets else None
    model = first.deployment.upstream_model if first else call.model_asked
    input_tokens = count_messages(body.get("messages") or [], model, tools=body.get("tools"))
    model_maxes = [t.price.max_output_tokens for t in call.targets if t.price and t.price.max_output_tokens]
    cap = output_cap(body, max(model_maxes) if model_maxes else None, policy_cap)
    if enforce_cap:
        _apply_cap(call, cap)
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    output_tokens = cap * choices
    usd = _max_cost(call, Usage(input_tokens=input_tokens, output_tokens=output_tokens))
    input_usd = _max_cost(call, Usage(input_tokens=input_tokens))
    return Estimate(input_tokens, output_tokens, usd, input_usd)


def _apply_cap(call: Call, cap: int) -> None:
    body = call.body
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    requested = body.get(field)
    if not isinstance(requested, int) or requested > cap:
        call.body = {**body, field: cap}


def _max_cost(call: Call, usage: Usage) -> float | None:
    worst: float | None = None
    for target in call.targets or ():
        usd = cost_usd(target.price, usage)
        if usd is None:
            return None  # an unpriced target: the worst case is unknown
        worst = usd if worst is None else max(worst, usd)
    return worst
