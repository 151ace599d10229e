"""OpenTelemetry traces: one span per pipeline stage and per upstream attempt.

Off by default (``observe.tracing.enabled``). When off, ``make_tracer`` returns
``None`` and the pipeline runs its stages unwrapped: zero cost, and the
``opentelemetry`` packages need not even be installed (``pip install 'tokenomy[otel]'``).

When on, every stage runs inside a span ``tokenomy.stage.<name>``; stages nest,
so the outermost (``record``) is the root of the call's trace and the others are
its descendants. Each upstream attempt is a span ``tokenomy.upstream`` under the
``execute`` stage. Every span carries ``tokenomy.request_id`` (the id in the
``x-tokenomy-request-id`` header and the ledger), which links a trace to its
ledger row. For streams, stage spans end when the stream starts (time to first
byte); the upstream span lasts until the stream ends.

The tracer provider belongs to the gateway (not OpenTelemetry's global one), so
several gateways in a process keep their spans apart.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tokenomy.config import ConfigError, TracingSettings

if TYPE_CHECKING:
    from tokenomy.pipeline.call import Call
    from tokenomy.pipeline.reply import Reply

REQUEST_ID = "tokenomy.request_id"


class StageTracer:
    """Wraps pipeline stages and upstream attempts in spans.

        tracer = StageTracer(TracerProvider(...))
        run = tracer.wrap_stage("execute", run)          # by Pipeline, once per stage
        span = tracer.start_attempt(call, "gpt-4o", "openai")  # by ExecuteStage
        tracer.end_attempt(span, error)
    """

    def __init__(self, provider: Any) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.provider = provider
        self._tracer = provider.get_tracer("tokenomy")
        self._error = Status(StatusCode.ERROR)
        self._status = Status

    def wrap_stage(self, name: str, run: Callable[[Call], Awaitable[Reply]]) -> Callable[[Call], Awaitable[Reply]]:
        tracer = self._tracer
        span_name = f"tokenomy.stage.{name}"

        async def traced(call: Call) -> Reply:
            with tracer.start_as_current_span(
                span_name, attributes={REQUEST_ID: call.request_id, "tokenomy.stage": name}
            ) as span:
                reply = await run(call)
                if call.model_served:
                    span.set_attribute("tokenomy.model_served", call.model_served)
                return reply

        return traced

    def start_attempt(self, call: Call, model: str, provider: str) -> Any:
        """A span for one upstream attempt, child of the current (``execute``) span."""
        return self._tracer.start_span(
            "tokenomy.upstream",
            attributes={REQUEST_ID: call.request_id, "tokenomy.model": model, "tokenomy.provider": provider},
        )

    def end_attempt(self, span: Any, call: Call, error: BaseException | None = None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(self._status(self._error.status_code, str(error)[:200]))
        items = call.trace.items
        if items and items[-1].usd is not None:
            span.set_attribute("tokenomy.cost_usd", items[-1].usd)
        span.end()

    def shutdown(self) -> None:
        """Flush and stop exporters (gateway shutdown)."""
        self.provider.shutdown()


def make_tracer(settings: TracingSettings, exporter: Any = None) -> StageTracer | None:
    """The gateway's tracer, or ``None`` when tracing is off.

    ``exporter`` (any OpenTelemetry ``SpanExporter``) replaces the configured one:
    tests pass an ``InMemorySpanExporter``.
    """
    if not settings.enabled:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        raise ConfigError(
            "observe.tracing.enabled needs OpenTelemetry: pip install 'tokenomy[otel]'"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif settings.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif settings.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "observe.tracing.exporter 'otlp' needs: pip install opentelemetry-exporter-otlp-proto-http"
            ) from None
        kwargs = {"endpoint": settings.otlp_endpoint} if settings.otlp_endpoint else {}
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(**kwargs)))
    return StageTracer(provider)
