"""The spend ledger's contract: one row per call, written off the request path.

``Ledger`` is the storage interface (SQLite by default, PostgreSQL by DSN: see
``tokenomy.store.sql_ledger``); ``LedgerWriter`` (``tokenomy.store.writer``)
batches rows in memory and flushes them in the background, so recording a call
costs the request an append to a list and nothing else.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tokenomy.pipeline.call import Call


@dataclass(slots=True)
class LedgerRow:
    request_id: str
    created_at: dt.datetime  # UTC, when the call arrived
    duration_ms: float | None
    api: str  # wire format the client spoke: openai | anthropic
    kind: str  # chat | embeddings
    endpoint: str | None
    traffic_class: str
    stream: bool
    key_id: str | None
    org: str | None
    team: str | None
    feature: str | None
    customer: str | None
    tags: list[str]
    model_asked: str
    model_served: str | None
    provider: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    cost_usd: float | None
    baseline_usd: float | None
    cache_status: str
    outcome: str  # "ok" or the error code/type
    status: int
    error_message: str | None
    upstream_ms: float | None
    stage_ms: dict[str, float] = field(default_factory=dict)
    cost_items: list[dict[str, Any]] = field(default_factory=list)
    #: the answer's finish reason (``length``: it hit its output limit)
    finish_reason: str | None = None
    #: the output limit the gateway imposed (default or clamp); ``None``: the request's own
    output_cap: int | None = None
    #: prompt template and version named by the client (``x-tokenomy-prompt: name@version``)
    prompt: str | None = None
    #: what each token technique saved: ``{technique: {"tokens": int, "usd": float | None}}``
    savings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the routing decision and its reason (``None``: the model asked was served as asked)
    route: str | None = None

    @property
    def savings_usd(self) -> float | None:
        if self.cost_usd is None or self.baseline_usd is None:
            return None
        return self.baseline_usd - self.cost_usd

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_call(cls, call: Call) -> LedgerRow:
        usage = call.trace.usage()
        identity = call.identity
        return cls(
            request_id=call.request_id,
            created_at=dt.datetime.fromtimestamp(call.started_at, tz=dt.timezone.utc),
            duration_ms=call.duration_ms,
            api=call.api,
            kind=call.kind,
            endpoint=identity.endpoint,
            traffic_class=call.traffic_class,
            stream=call.stream,
            key_id=identity.key_id,
            org=identity.org,
            team=identity.team,
            feature=identity.feature,
            customer=identity.customer,
            tags=list(identity.tags),
            model_asked=call.model_asked,
            model_served=call.model_served,
            provider=call.provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cache_write_tokens=usage.cache_write_tokens + usage.cache_write_1h_tokens,
            cost_usd=call.trace.total_usd,
            baseline_usd=call.trace.baseline_usd,
            cache_status=call.cache_status,
            outcome=call.outcome,
            status=call.status,
            error_message=call.error_message,
            upstream_ms=call.upstream_ms,
            stage_ms=dict(call.stage_ms),
            cost_items=[item.as_dict() for item in call.trace.items],
            finish_reason=call.finish_reason,
            output_cap=call.output_cap,
            prompt=call.prompt,
            savings={name: saving.as_dict() for name, saving in call.trace.savings.items()},
            route=call.route,
        )


#: Dimensions ``Ledger.spend_summary`` can group by, and the column each reads.
#: ``tag`` is special: a row counts once in every tag it carries.
SPEND_DIMENSIONS: dict[str, str] = {
    "team": "team",
    "feature": "feature",
    "customer": "customer",
    "model": "model_served",
    "endpoint": "endpoint",
    "tag": "tags",
    "provider": "provider",
    "traffic_class": "traffic_class",
    "key": "key_id",
    "prompt": "prompt",
}

#: Group name for rows whose dimension is NULL (or that carry no tag).
NO_GROUP = "(none)"


@dataclass(slots=True, frozen=True)
class SpendGroup:
    """Spend of one group (one team, one model, one tag…) over a time window.

    ``cost_usd`` sums the rows whose cost is known; ``unknown_cost_count`` says how
    many were left out, so an unknown price never masquerades as free.
    ``savings_usd`` sums ``baseline - cost`` over rows where both are known, which
    is why it may differ from ``baseline_usd - cost_usd`` when some are unknown.
    """

    group: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    baseline_usd: float
    savings_usd: float
    unknown_cost_count: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class TechniqueSavings:
    """What one technique (``prune``, ``summarize``, ``compress``, ``prompt_cache``…) saved in one group."""

    group: str
    technique: str
    requests: int
    tokens: int
    usd: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class CapHits:
    """How often answers of one group hit their output limit (``finish_reason == "length"``).

    ``capped``: calls whose limit the gateway set or lowered; ``cap_hits``: those
    that stopped at it — a high rate means the cap cuts answers short.
    ``length_total`` counts every answer cut by a limit, the client's own included.
    """

    group: str
    requests: int
    capped: int
    cap_hits: int
    length_total: int
    max_cap: int | None
    output_tokens: int

    @property
    def hit_rate(self) -> float | None:
        return self.cap_hits / self.capped if self.capped else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


class Ledger(abc.ABC):
    """Durable storage of ledger rows."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and bring the schema up to date (Alembic migrations)."""

    @abc.abstractmethod
    async def write_many(self, rows: Sequence[LedgerRow]) -> None:
        """Insert rows in one transaction (idempotent on ``request_id``)."""

    @abc.abstractmethod
    async def fetch(self, *, since: dt.datetime | None = None, limit: int | None = None) -> list[LedgerRow]:
        """Rows newest first (for tests, reports and the dashboard)."""

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of rows."""

    @abc.abstractmethod
    async def spend_summary(
        self, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[SpendGroup]:
        """Spend per group of ``by`` (a key of ``SPEND_DIMENSIONS``) in ``[since, until)``.

        Aggregated by the store (in SQL), not in Python: a month of traffic is
        millions of rows. Groups come most expensive first; NULL → ``NO_GROUP``.
        Raises ``ValueError`` for an unknown ``by``.
        """

    async def savings_summary(
        self, by: str, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[TechniqueSavings]:
        """Savings per (group of ``by``, technique) in ``[since, until)``, largest first.

        This default aggregates ``fetch()`` in Python; SQL stores do it in the database.
        """
        column = _dimension(by)
        totals: dict[tuple[str, str], list[float]] = {}
        for row in await self.fetch(since=since):
            if until is not None and row.created_at >= until:
                continue
            for group in _groups(row, column):
                for technique, saving in (row.savings or {}).items():
                    entry = totals.setdefault((group, technique), [0, 0, 0.0])
                    entry[0] += 1
                    entry[1] += int(saving.get("tokens") or 0)
                    entry[2] += float(saving.get("usd") or 0.0)
        out = [TechniqueSavings(g, t, int(v[0]), int(v[1]), v[2]) for (g, t), v in totals.items()]
        return sorted(out, key=lambda s: (-s.usd, s.group, s.technique))

    async def caps_summary(
        self, by: str = "feature", since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[CapHits]:
        """Output-limit hits per group of ``by`` (chat calls only), most capped first."""
        column = _dimension(by)
        totals: dict[str, list[Any]] = {}
        for row in await self.fetch(since=since):
            if row.kind != "chat" or (until is not None and row.created_at >= until):
                continue
            for group in _groups(row, column):
                entry = totals.setdefault(group, [0, 0, 0, 0, None, 0])
                entry[0] += 1
                length = row.finish_reason == "length"
                if row.output_cap is not None:
                    entry[1] += 1
                    entry[2] += int(length)
                    entry[4] = max(entry[4] or 0, row.output_cap)
                entry[3] += int(length)
                entry[5] += row.output_tokens
        out = [CapHits(g, *v) for g, v in totals.items()]
        return sorted(out, key=lambda c: (-c.capped, -c.requests, c.group))

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""


def _dimension(by: str) -> str:
    if by not in SPEND_DIMENSIONS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(SPEND_DIMENSIONS)}")
    return SPEND_DIMENSIONS[by]


def _groups(row: LedgerRow, column: str) -> list[str]:
    value = getattr(row, column)
    if column == "tags":
        return list(value) or [NO_GROUP]
    return [value if value is not None else NO_GROUP]
