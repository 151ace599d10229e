"""Prometheus metrics: one ``CollectorRegistry`` per gateway, fed by a recorder.

``GatewayMetrics.record(call)`` is one of the ``RecordStage``'s recorders: called
once per finished call, synchronous, a handful of counter increments. Nothing
here is a module global, so several gateways in one process (tests) never share
counts.

Label cardinality is kept bounded on purpose: model, team, feature, outcome,
stage, cache status. Customers, tags, keys and request ids are *not* labels
(thousands of customers would mean thousands of series per metric); the ledger
and the dashboard break spend down by those.

With ``tokenomy serve --workers N`` each worker process has its own registry and
``/metrics`` answers from whichever worker took the scrape. Set the environment
variable ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before starting and
``/metrics`` aggregates all workers instead (prometheus_client's multiprocess mode;
the live ``tokenomy_queue_depth`` gauge then shows the answering worker only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tokenomy.pipeline.call import Call
from tokenomy.store.rollup import CACHE_NOT_HIT, CACHE_NOT_LOOKED_UP

#: Outcomes of calls the gateway refused for budget or rate-limit reasons.
BUDGET_OUTCOMES = frozenset({"budget_exceeded", "rate_limit_exceeded", "budget_store_unavailable"})

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_STAGE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str | None) -> str:
    return value if value else ""


class _QueueDepth(Collector):
    """``tokenomy_queue_depth{queue}``: read at scrape time from whoever owns each queue."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "tokenomy_queue_depth", "Items waiting in a gateway queue (ledger rows, jobs).", labels=["queue"]
        )
        for name, read in self.sources.items():
            family.add_metric([name], float(read()))
        yield family


class GatewayMetrics:
    """The gateway's Prometheus metrics.

        metrics = GatewayMetrics()
        recorders.append(metrics.record)          # once per finished call
        metrics.watch_queue("ledger", lambda: writer.pending)
        text = metrics.exposition()               # what GET /metrics answers
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "tokenomy_requests", "Calls finished, by model served, team, feature and outcome.",
            ["model", "team", "feature", "outcome"], registry=r,
        )
        self.tokens = Counter(
            "tokenomy_tokens", "Tokens billed, by model and direction (input, output, cached, cache_write).",
            ["model", "direction"], registry=r,
        )
        self.cost = Counter(
            "tokenomy_cost_usd", "Cost in USD of priced calls, by model, team and feature.",
            ["model", "team", "feature"], registry=r,
        )
        self.baseline = Counter(
            "tokenomy_baseline_cost_usd", "Baseline cost in USD (the call as asked, no optimisation).",
            ["model", "team", "feature"], registry=r,
        )
        self.unpriced = Counter(
            "tokenomy_unpriced_requests", "Calls whose cost is unknown (no price for the model).", ["model"], registry=r
        )
        self.cache_lookups = Counter(
            "tokenomy_cache_lookups", "Calls that consulted a cache, by cache status.", ["status"], registry=r
        )
        self.cache_hits = Counter(
            "tokenomy_cache_hits", "Calls answered (fully or partly) from a cache, by cache status.",
            ["status"], registry=r,
        )
        self.routes = Counter(
            "tokenomy_route_decisions", "Calls by model asked and model served (routing and fallbacks).",
            ["model_asked", "model_served"], registry=r,
        )
        self.saved_tokens = Counter(
            "tokenomy_saved_tokens", "Prompt tokens a token technique kept from being billed, by technique.",
            ["technique"], registry=r,
        )
        self.saved_usd = Counter(
            "tokenomy_saved_usd", "USD a token technique saved (net of its own cost), by technique.",
            ["technique"], registry=r,
        )
        self.budget_rejections = Counter(
            "tokenomy_budget_rejections", "Calls refused by a budget or rate limit, by reason.",
            ["reason"], registry=r,
        )
        self.upstream_latency = Histogram(
            "tokenomy_upstream_latency_seconds", "Time spent waiting for the upstream provider, by model.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.stage_latency = Histogram(
            "tokenomy_stage_latency_seconds", "Time each pipeline stage spent on its own work.",
            ["stage"], buckets=_STAGE_BUCKETS, registry=r,
        )
        self.duration = Histogram(
            "tokenomy_request_duration_seconds", "Whole-call time inside the gateway, by model.",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._queues = _QueueDepth()
        r.register(self._queues)

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as ``tokenomy_queue_depth{queue=name}`` at each scrape."""
        self._queues.sources[name] = depth

    def record(self, call: Call) -> None:
        """Count one finished call (a ``RecordStage`` recorder: synchronous, O(1))."""
        model = call.model_served or call.model_asked
        identity = call.identity
        team, feature = _label(identity.team), _label(identity.feature)
        self._child(self.requests, model, team, feature, call.outcome).inc()
        trace = call.trace
        if trace.items:
            usage = trace.usage()
            tokens = self.tokens
            if usage.input_tokens:
                self._child(tokens, model, "input").inc(usage.input_tokens)
            if usage.output_tokens:
                self._child(tokens, model, "output").inc(usage.output_tokens)
            if usage.cached_tokens:
                self._child(tokens, model, "cached").inc(usage.cached_tokens)
            written = usage.cache_write_tokens + usage.cache_write_1h_tokens
            if written:
                self._child(tokens, model, "cache_write").inc(written)
            total = trace.total_usd
            if total is None:
                self._child(self.unpriced, model).inc()
            else:
                self._child(self.cost, model, team, feature).inc(total)
        if trace.baseline_usd is not None:
            self._child(self.baseline, model, team, feature).inc(trace.baseline_usd)
        for technique, saving in trace.savings.items():
            if saving.tokens > 0:
                self._child(self.saved_tokens, technique).inc(saving.tokens)
            if saving.usd is not None and saving.usd > 0:  # a Counter only goes up
                self._child(self.saved_usd, technique).inc(saving.usd)
        status = call.cache_status
        if status not in CACHE_NOT_LOOKED_UP:
            self._child(self.cache_lookups, status).inc()
            if status not in CACHE_NOT_HIT:
                self._child(self.cache_hits, status).inc()
        if call.model_served:
            self._child(self.routes, call.model_asked, call.model_served).inc()
        if call.outcome in BUDGET_OUTCOMES:
            self._child(self.budget_rejections, call.outcome).inc()
        if call.upstream_ms is not None:
            self._child(self.upstream_latency, model).observe(call.upstream_ms / 1000.0)
        for stage, ms in call.stage_ms.items():
            self._child(self.stage_latency, stage).observe(ms / 1000.0)
        if call.duration_ms is not None:
            self._child(self.duration, model).observe(call.duration_ms / 1000.0)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoized: prometheus_client validates and locks on
        every ``labels()`` call, which cost ~100 µs a request across a dozen metrics."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """The text format ``GET /metrics`` answers (all workers' in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            merged.register(self._queues)
            return generate_latest(merged)
        return generate_latest(self.registry)
