"""Output caps: a default ``max_tokens`` when the request sets none, a hard cap when it does.

Output tokens cost three to five times input tokens, and a model with no limit
pads. A cap that is too tight cuts answers short, which shows as
``finish_reason: "length"``; the ledger records the cap applied and the finish
reason of every call, and ``tokenomy caps`` reports per feature how often
answers hit the cap, so caps can be tuned.

No saving is claimed for a cap: what the model would have written without it is
unknown, and the baseline is never an estimate.
"""

from __future__ import annotations

import re
from typing import Any

#: Models that take ``max_completion_tokens`` and refuse ``max_tokens`` (OpenAI reasoning models).
_COMPLETION_TOKENS_MODELS = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)")

LIMIT_KEYS = ("max_completion_tokens", "max_tokens")


def apply_output_cap(
    body: dict[str, Any], model: str, *, default: int | None, cap: int | None
) -> tuple[dict[str, Any], int | None]:
    """``(body, limit)``: the body with its output limit set or lowered, and the limit the gateway imposed.

    ``limit`` is ``None`` when the request's own limit stands. Both
    ``max_completion_tokens`` and ``max_tokens`` are clamped when present.
    """
    present = [key for key in LIMIT_KEYS if isinstance(body.get(key), int) and not isinstance(body.get(key), bool)]
    if not present:
        if default is None:
            return body, None
        return {**body, limit_field(model): default}, default
    if cap is None:
        return body, None
    over = [key for key in present if body[key] > cap]
    if not over:
        return body, None
    out = dict(body)
    for key in over:
        out[key] = cap
    return out, cap


def finish_reason_of(body: dict[str, Any]) -> str | None:
    """The first choice's ``finish_reason`` of an OpenAI chat completion."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None
    return None


def limit_field(model: str) -> str:
    """The output-limit parameter ``model`` accepts: ``max_completion_tokens`` for OpenAI reasoning models."""
    return "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(model) else "max_tokens"
