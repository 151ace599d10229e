"""Pricing what each token technique saved, once the provider's usage is known.

Before the call, stages record savings in counted tokens (``CostTrace.saving``):
prompt tokens a technique kept from being sent. When the first generation is
charged, ``settle`` converts them to the provider's units (the ratio of its
reported prompt tokens to the counted prompt sent) and prices them at the input
price of the model asked — the baseline's price — minus what the technique
itself cost (a summary call). Prompt caching is priced from the usage itself:
what the cached part would have cost at the plain input price minus what its
reads and writes cost, at the served model's prices.

So, without routing, ``baseline - total`` equals the sum of the savings (up to
rounding): every dollar of difference has a named cause.
"""

from __future__ import annotations

from tokenomy.pipeline.call import CostTrace
from tokenomy.pricing.catalog import ModelPrice
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage

PROMPT_CACHE = "prompt_cache"
_MILLION = 1_000_000.0


def settle(trace: CostTrace, usage: Usage, baseline_price: ModelPrice | None, served_price: ModelPrice | None) -> None:
    """Price the recorded savings against ``usage`` (the first generation's)."""
    scale = trace.input_scale(usage)
    for technique, saving in trace.savings.items():
        if technique == PROMPT_CACHE:
            continue
        saving.tokens = round(saving.tokens * scale)
        if baseline_price is None:
            saving.usd = None
        else:
            saving.usd = saving.tokens * baseline_price.input / _MILLION - saving.cost_usd
    if trace.cache_breakpoints_added and (usage.cached_tokens or usage.cache_write_tokens or usage.cache_write_1h_tokens):
        saving = trace.saving(PROMPT_CACHE)
        saving.tokens = usage.cached_tokens
        plain = cost_usd(served_price, Usage(input_tokens=usage.input_tokens))
        cached = cost_usd(
            served_price,
            Usage(usage.input_tokens, 0, usage.cached_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens),
        )
        saving.usd = None if plain is None or cached is None else plain - cached
