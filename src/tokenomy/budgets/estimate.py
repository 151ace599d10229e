"""The worst-case cost of a call, reserved before it goes upstream.

Worst case = what the call has already spent (a summary, cache embeddings) + for
every answer it may pay for (``routing.attempts``: one for a plain call, every
level and judge call of a cascade), counted input tokens × input price + output
cap × output price × n, at the dearest deployment that may serve that answer.

The output cap is ``min(requested max_tokens, model's max output, policy cap)``.
A request asking ``max_tokens: 999999999`` therefore reserves no more than the
model can produce or the policy allows, and a request without ``max_tokens``
reserves the policy cap. With ``enforce_cap`` the cap is also written into the
request — which every attempt, fallback and cascade level sends — so an answer
can never cost more than was reserved (otherwise a model's own default could
exceed the reservation).

Input is counted with OpenAI's tokenizer and scaled by the provider's factor
(``tokens.counting.PROVIDER_TOKEN_FACTORS``); a prompt that writes to a provider
cache is priced at the dearest cache-write rate. Calls run through a provider's
batch API (``call.batch_priced``) are priced at its batch rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenomy.pipeline.call import Call
from tokenomy.pricing.cost import cost_usd
from tokenomy.routing.attempts import PaidAttempt
from tokenomy.providers.usage import Usage
from tokenomy.tokens.caps import limit_field
from tokenomy.tokens.counting import count_messages, count_text, estimate_for_provider
from tokenomy.tokens.prompt_cache import has_breakpoints

if TYPE_CHECKING:
    from tokenomy.routing.attempts import AttemptPlanner

_LIMIT_KEYS = ("max_completion_tokens", "max_tokens")


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the call may use at most: tokens and dollars (``None``: price unknown)."""

    input_tokens: int
    output_tokens: int
    usd: float | None
    input_usd: float | None  # the least a call that reached upstream is charged
    #: tokens over every attempt (a cascade sends its prompt once per level); default: input + output
    total_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.total_tokens if self.total_tokens is not None else self.input_tokens + self.output_tokens


def output_cap(body: dict[str, Any], model_max: int | None, policy_cap: int) -> int:
    """``min(requested, model max, policy cap)``; the policy cap when nothing is asked."""
    cap = policy_cap
    if model_max:
        cap = min(cap, model_max)
    requested = [body.get(key) for key in _LIMIT_KEYS]
    for value in requested:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            cap = min(cap, value)
    return cap


def estimate(
    call: Call, policy_cap: int, *, enforce_cap: bool = True, planner: AttemptPlanner | None = None
) -> Estimate:
    """The worst case over every answer the call may pay for (see the module docstring).

    Without a ``planner`` the call pays for one answer from any of ``call.targets``.
    """
    spent = call.trace.total_usd or 0.0  # already paid before admission: summaries, cache embeddings
    body = call.body
    if call.kind == "embeddings":
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
        tokens = sum(count_text(i) if isinstance(i, str) else len(i) if isinstance(i, list) else 1 for i in items)
        usd = _dearest(call, call.targets, tokens, 0, caches=False)
        return Estimate(tokens, 0, _plus(usd, spent), usd)

    first = call.targets[0] if call.targets else None
    model = first.deployment.upstream_model if first else call.model_asked
    input_tokens = count_messages(body.get("messages") or [], model, tools=body.get("tools"))
    attempts = planner.attempts(call) if planner is not None else [PaidAttempt(tuple(call.targets))]
    answering = [t for a in attempts if a.output_tokens is None for t in a.targets]
    model_maxes = [t.price.max_output_tokens for t in answering if t.price and t.price.max_output_tokens]
    cap = output_cap(body, max(model_maxes) if model_maxes else None, policy_cap)
    if enforce_cap:
        _apply_cap(call, cap, model)
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    output_tokens = cap * choices
    caches = has_breakpoints(call.body)
    usd, total_tokens = _over_attempts(call, attempts, input_tokens, output_tokens, cap, caches)
    input_usd = _dearest(call, call.targets, input_tokens, 0, caches=caches)
    return Estimate(input_tokens, output_tokens, _plus(usd, spent), input_usd, total_tokens)


def _over_attempts(
    call: Call, attempts: Sequence[PaidAttempt], input_tokens: int, output_tokens: int, cap: int, caches: bool
) -> tuple[float | None, int]:
    """Dollars and tokens summed over the attempts, each at its dearest deployment."""
    usd: float | None = 0.0
    tokens = 0
    for attempt in attempts:
        sent = input_tokens if attempt.input_tokens is None else attempt.input_tokens
        if attempt.reads_answer:
            sent += cap
        out = output_tokens if attempt.output_tokens is None else attempt.output_tokens
        tokens += sent + out
        # a judge's prompt is the gateway's own: never cached
        worst = _dearest(call, attempt.targets, sent, out, caches=caches and attempt.input_tokens is None)
        usd = None if worst is None or usd is None else usd + worst
    return usd, tokens


def _apply_cap(call: Call, cap: int, model: str) -> None:
    call.body = limited(call.body, cap, model)


def limited(body: dict[str, Any], cap: int, model: str) -> dict[str, Any]:
    """``body`` with every output limit it sets lowered to ``cap``, or with the one ``model`` takes set to it."""
    present = [key for key in _LIMIT_KEYS if isinstance(body.get(key), int) and not isinstance(body.get(key), bool)]
    if not present:
        return {**body, limit_field(model): cap}
    over = {key: cap for key in present if body[key] > cap}
    return {**body, **over} if over else body


def _dearest(
    call: Call, targets: Sequence[Any], input_tokens: int, output_tokens: int, *, caches: bool
) -> float | None:
    """The dearest of ``targets`` for this usage; ``None`` if any is unpriced (the worst case is unknown).

    ``caches``: the prompt carries cache breakpoints, so it may be billed as a cache write.
    """
    worst: float | None = None
    for target in targets or ():
        sent = estimate_for_provider(input_tokens, target.deployment.provider)
        # a prompt the provider caches is billed at its write rate (1.25x-2x input at Anthropic)
        usage = Usage(input_tokens=sent, output_tokens=output_tokens, cache_write_1h_tokens=sent if caches else 0)
        usd = cost_usd(target.price, usage, batch=call.batch_priced)
        if usd is None:
            return None
        worst = usd if worst is None else max(worst, usd)
    return worst


def _plus(usd: float | None, spent: float) -> float | None:
    return None if usd is None else usd + spent
