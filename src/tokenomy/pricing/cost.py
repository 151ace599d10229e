"""Cost arithmetic: ``Usage`` × ``ModelPrice`` → USD.

Called on every request (settle, baseline, cascade attempts), so it is a handful of float
operations and nothing else: no lookups, no allocation beyond the floats themselves.

Rules
-----
``Usage.input_tokens`` is the whole prompt. Its parts are billed separately::

    uncached prompt            × input
    cached_tokens (reads)      × cached_input     (absent → input)
    cache_write_tokens (5 min) × cache_write      (absent → input)
    cache_write_1h_tokens      × cache_write_1h   (absent → cache_write, then input)
    output_tokens              × output

With ``batch=True`` the batch prices replace ``input`` and ``output``; cache prices are
scaled by the same ratio as ``batch_input / input`` (Anthropic documents that its cache
multipliers apply on top of the batch discount; OpenAI halves cached input in batches
too). A model without batch prices is charged its normal prices in batch mode: we only
assume a discount a provider documents, so batch cost is never under-counted.

``price is None`` (model not in the catalog) returns ``None``: unknown cost is never 0.
"""

from __future__ import annotations

from tokenomy.pricing.catalog import ModelPrice
from tokenomy.providers.usage import Usage

__all__ = ["cost_usd"]

_MILLION = 1_000_000.0


def cost_usd(price: ModelPrice | None, usage: Usage, *, batch: bool = False) -> float | None:
    """USD charged for ``usage`` at ``price``; ``None`` when the price is unknown."""
    if price is None:
        return None
    input_price = price.input
    output_price = price.output
    cache_scale = 1.0
    if batch:
        batch_input = price.batch_input
        if batch_input is not None:
            if input_price > 0.0:
                cache_scale = batch_input / input_price
            input_price = batch_input
        if price.batch_output is not None:
            output_price = price.batch_output

    read_price = price.cached_input
    read_price = input_price if read_price is None else read_price * cache_scale
    write_price = price.cache_write
    write_price = input_price if write_price is None else write_price * cache_scale
    write_1h_price = price.cache_write_1h
    write_1h_price = write_price if write_1h_price is None else write_1h_price * cache_scale

    return (
        usage.uncached_input_tokens * input_price
        + usage.cached_tokens * read_price
        + usage.cache_write_tokens * write_price
        + usage.cache_write_1h_tokens * write_1h_price
        + usage.output_tokens * output_price
    ) / _MILLION
