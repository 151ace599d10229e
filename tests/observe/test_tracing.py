"""OpenTelemetry: one span per stage and per upstream attempt, linked by the request id; off by default."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.harness import GatewayServer
from tokenomy.app import build_gateway
from tokenomy.config import ConfigError, TracingSettings, load_settings
from tokenomy.observe.tracing import REQUEST_ID, make_tracer


def traced_gateway(start_gateway: Callable[..., GatewayServer]) -> tuple[GatewayServer, InMemorySpanExporter]:
    server = start_gateway(observe={"tracing": {"enabled": True, "exporter": "none"}})
    exporter = InMemorySpanExporter()
    assert server.gateway.tracer is not None
    server.gateway.tracer.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return server, exporter


def test_spans_per_stage_and_attempt_linked_by_request_id(start_gateway: Callable[..., GatewayServer]) -> None:
    server, exporter = traced_gateway(start_gateway)
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "hi"}],
                                extra_headers={"x-request-id": "trace-json"})
    # another prompt: the same one would be answered by the exact cache, with no upstream attempt
    for _ in sdk.chat.completions.create(model="sim-mini", messages=[{"role": "user", "content": "hi again"}], stream=True,
                                         extra_headers={"x-request-id": "trace-stream"}):
        pass
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}],
                                    extra_headers={"x-request-id": "trace-404"})
    spans = exporter.get_finished_spans()
    by_request: dict[str, list] = {}
    for span in spans:
        by_request.setdefault(span.attributes[REQUEST_ID], []).append(span)
    assert set(by_request) == {"trace-json", "trace-stream", "trace-404"}

    names = sorted(s.name for s in by_request["trace-json"])
    stages = [f"tokenomy.stage.{stage.name}" for stage in server.gateway.pipeline.stages]
    assert {"tokenomy.stage.record", "tokenomy.stage.identify", "tokenomy.stage.execute"} <= set(stages)
    assert names == sorted([*stages, "tokenomy.upstream"])  # every stage once, one upstream attempt
    spans_json = {s.name: s for s in by_request["trace-json"]}
    root = spans_json["tokenomy.stage.record"]
    assert root.parent is None
    assert len({s.context.trace_id for s in by_request["trace-json"]}) == 1  # one trace per call
    assert spans_json["tokenomy.stage.identify"].parent.span_id == root.context.span_id
    assert spans_json["tokenomy.upstream"].parent.span_id == spans_json["tokenomy.stage.execute"].context.span_id
    assert spans_json["tokenomy.upstream"].attributes["tokenomy.model"] == "sim-mini"
    assert spans_json["tokenomy.upstream"].attributes["tokenomy.cost_usd"] > 0
    assert any(s.name == "tokenomy.upstream" for s in by_request["trace-stream"])
    # the failed call has no upstream attempt, and its resolve span records the error
    failed = {s.name: s for s in by_request["trace-404"]}
    assert "tokenomy.upstream" not in failed
    assert not failed["tokenomy.stage.resolve"].status.is_ok


def test_tracing_is_off_by_default_and_costs_nothing() -> None:
    gateway = build_gateway(load_settings(None, ledger={"enabled": False}))
    assert gateway.tracer is None and gateway.pipeline.tracer is None
    assert make_tracer(TracingSettings()) is None


def test_otlp_exporter_needs_its_package() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="otlp"):
            make_tracer(TracingSettings(enabled=True, exporter="otlp"))
    else:
        assert make_tracer(TracingSettings(enabled=True, exporter="otlp")) is not None
