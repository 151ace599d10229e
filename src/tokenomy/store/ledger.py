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

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections."""
