"""The unit that flows through the pipeline: a ``Call`` with its ``CostTrace``.

A Call carries the normalized request (OpenAI chat or embeddings shape, whatever
wire format the client spoke), who sent it, its traffic class, and every cost it
incurred. Stages read and annotate it; the ledger records it once the call ends.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tokenomy.providers.usage import Usage


@dataclass(slots=True)
class Identity:
    """Who pays for a call and what it was for (from the key and the request headers)."""

    key_id: str | None = None
    org: str | None = None
    team: str | None = None
    feature: str | None = None
    customer: str | None = None
    endpoint: str | None = None
    tags: tuple[str, ...] = ()
    #: models this caller may use (public names); ``None``: any
    allowed_models: frozenset[str] | None = None


@dataclass(slots=True)
class CostItem:
    """One thing the call paid for: a generation, an embedding, a retry, a summary…

    ``usd`` is ``None`` when the model's price is unknown: unknown is reported as
    unknown, never as 0.
    """

    step: str
    model: str
    provider: str
    usage: Usage
    usd: float | None
    #: ``"ok"``, or why this attempt was not the answer (the error code, or the cascade check that failed)
    outcome: str = "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "outcome": self.outcome,
            "model": self.model,
            "provider": self.provider,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "usd": self.usd,
        }


@dataclass(slots=True)
class Saving:
    """What one technique (pruning, compression, prompt caching…) saved on a call.

    ``tokens``: prompt tokens not sent (or, for prompt caching, read from the
    provider's cache), in the provider's units once the call is settled.
    ``usd``: dollars saved against the baseline, net of what the technique itself
    cost (``cost_usd``, e.g. the summary call); ``None`` while unsettled or when a
    price is unknown.
    """

    tokens: int = 0
    usd: float | None = None
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "usd": self.usd}


@dataclass(slots=True)
class CostTrace:
    """Every cost item of a call plus its baseline.

    The baseline is what the call would have cost sent unmodified to the model
    asked, with no cache, routing or pruning; savings are ``baseline - total``.
    When a stage rewrites the prompt it records the prompt's size before
    (``prompt_tokens_asked``) and after (``prompt_tokens_sent``), counted with
    the same tokenizer, so the baseline is priced on the prompt as asked; the
    difference is scaled to the provider's own count. ``savings`` says which
    technique saved what.
    """

    items: list[CostItem] = field(default_factory=list)
    baseline_usd: float | None = None
    savings: dict[str, Saving] = field(default_factory=dict)
    prompt_tokens_asked: int | None = None
    prompt_tokens_sent: int | None = None
    #: prompt-cache breakpoints the gateway added (the baseline then prices the prompt uncached)
    cache_breakpoints_added: int = 0

    def add(self, item: CostItem) -> None:
        self.items.append(item)

    @property
    def total_usd(self) -> float | None:
        """Sum of the items; ``None`` if any item's price is unknown."""
        total = 0.0
        for item in self.items:
            if item.usd is None:
                return None
            total += item.usd
        return total

    @property
    def savings_usd(self) -> float | None:
        total = self.total_usd
        if total is None or self.baseline_usd is None:
            return None
        return self.baseline_usd - total

    def saving(self, technique: str) -> Saving:
        """The (new or existing) saving entry of ``technique``."""
        entry = self.savings.get(technique)
        if entry is None:
            entry = self.savings[technique] = Saving()
        return entry

    def input_scale(self, usage: Usage) -> float:
        """Provider prompt tokens per counted token (1.0 when unknown)."""
        sent = self.prompt_tokens_sent
        if not sent or not usage.input_tokens:
            return 1.0
        return usage.input_tokens / sent

    def baseline_usage(self, usage: Usage) -> Usage:
        """The usage the unmodified request would have had, given the usage of the one sent."""
        asked, sent = self.prompt_tokens_asked, self.prompt_tokens_sent
        input_tokens = usage.input_tokens
        if asked is not None and sent is not None and asked != sent:
            input_tokens += round((asked - sent) * self.input_scale(usage))
        elif not self.cache_breakpoints_added:
            return usage
        if self.cache_breakpoints_added:
            return Usage(input_tokens=input_tokens, output_tokens=usage.output_tokens)
        return Usage(
            input_tokens,
            usage.output_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.cache_write_1h_tokens,
        )

    def usage(self) -> Usage:
        """Token totals over all items."""
        total = Usage()
        for item in self.items:
            total = total + item.usage
        return total

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": [item.as_dict() for item in self.items],
            "total_usd": self.total_usd,
            "baseline_usd": self.baseline_usd,
            "savings": {name: saving.as_dict() for name, saving in self.savings.items()},
        }


_ID_PREFIX = "req_" + uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A unique id: a random per-process prefix plus a counter.

    Cheaper than ``uuid4()`` per request (``os.urandom`` costs ~16 µs here) and
    just as unique across processes and restarts.
    """
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


@dataclass(slots=True)
class Call:
    """A request on its way through the gateway.

    ``body`` is in OpenAI's shape: a chat-completions request for ``kind ==
    "chat"`` (requests to ``/v1/messages`` are translated into it), an
    embeddings request for ``kind == "embeddings"``.
    """

    kind: str  # "chat" | "embeddings"
    body: dict[str, Any]
    model_asked: str
    api: str = "openai"  # wire format the client spoke: "openai" | "anthropic"
    request_id: str = field(default_factory=new_request_id)
    identity: Identity = field(default_factory=Identity)
    headers: dict[str, str] = field(default_factory=dict)
    traffic_class: str = "realtime"
    #: executed through a provider's batch API: priced at its batch rates
    batch_priced: bool = False
    stream: bool = False
    started_at: float = field(default_factory=time.time)
    started_perf: float = field(default_factory=time.perf_counter)
    trace: CostTrace = field(default_factory=CostTrace)
    model_served: str | None = None
    provider: str | None = None
    cache_status: str = "none"
    outcome: str = "ok"
    status: int = 200
    error_message: str | None = None
    #: where the call may go, best first (set by the resolve stage; routing may reorder or replace)
    targets: tuple[Any, ...] = ()
    #: the price of the model asked, for the baseline (set by the resolve stage)
    baseline_price: Any = None
    stage_ms: dict[str, float] = field(default_factory=dict)
    upstream_ms: float | None = None
    duration_ms: float | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
    #: the answer's ``finish_reason`` (``length``: it hit its output limit)
    finish_reason: str | None = None
    #: the output limit the gateway imposed (a default or a clamp); ``None``: the request's own
    output_cap: int | None = None
    #: prompt template and version the client named (``x-tokenomy-prompt: name@version``)
    prompt: str | None = None
    #: the routing decision and its reason (``x-tokenomy-route`` header, ledger ``route`` column)
    route: str | None = None

    def finish(self) -> None:
        """Stamp the total duration; called once when the answer is complete."""
        if self.duration_ms is None:
            self.duration_ms = (time.perf_counter() - self.started_perf) * 1000.0

    def response_headers(self) -> dict[str, str]:
        """The ``x-tokenomy-*`` headers every answer carries."""
        headers = {"x-tokenomy-request-id": self.request_id}
        total = self.trace.total_usd
        headers["x-tokenomy-cost-usd"] = format_usd(total)
        headers["x-tokenomy-baseline-cost-usd"] = format_usd(self.trace.baseline_usd)
        if self.model_served:
            headers["x-tokenomy-model"] = self.model_served
        if self.route:
            headers["x-tokenomy-route"] = self.route
        return headers


def format_usd(value: float | None) -> str:
    """Dollars as a header value: ``"unknown"`` when the price is not known."""
    if value is None:
        return "unknown"
    return f"{value:.8f}".rstrip("0").rstrip(".") if value else "0"
