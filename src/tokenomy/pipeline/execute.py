"""The innermost stage: send the call upstream and price what it used.

Every attempt becomes a cost item in the CostTrace, priced from the provider's
reported usage. When a stream ends without usage (cut, or the client left) the
call is charged an estimate of what was consumed: the counted prompt plus the
streamed output (about four characters a token).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tokenomy.models import Target
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.pipeline.reply import Completion, Reply, StreamReply
from tokenomy.pipeline.runner import Next, Stage
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.anthropic_client_request import strip_anthropic_extensions
from tokenomy.providers.base import Provider
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages, count_text
from tokenomy.tokens.savings import settle as settle_savings

if TYPE_CHECKING:
    from tokenomy.observe.tracing import StageTracer

CHARS_PER_TOKEN = 4


class ExecuteStage(Stage):
    name = "execute"
    #: set by the pipeline when tracing is on: each upstream attempt becomes a span
    tracer: StageTracer | None = None

    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers

    async def __call__(self, call: Call, next: Next) -> Reply:
        return await self.attempt(call, call.targets[0])

    async def attempt(self, call: Call, target: Target) -> Reply:
        """Send the call to one deployment; charge what it used. Errors propagate (nothing charged).

        With tracing on, each attempt (retries and fallbacks included) is one span.
        """
        tracer = self.tracer
        if tracer is None:
            return await self._send(call, target)
        span = tracer.start_attempt(call, target.deployment.name, target.deployment.provider)
        try:
            reply = await self._send(call, target)
        except BaseException as exc:
            tracer.end_attempt(span, call, exc)
            raise
        if isinstance(reply, StreamReply):
            reply.on_finish(lambda _reply, exc: tracer.end_attempt(span, call, exc))
        else:
            tracer.end_attempt(span, call)
        return reply

    async def _send(self, call: Call, target: Target) -> Reply:
        deployment = target.deployment
        provider = self.providers[deployment.provider]
        body = call.body
        if (call.api == "anthropic" or call.trace.cache_breakpoints_added) and not provider.accepts_anthropic_extensions:
            body = strip_anthropic_extensions(body)
        if body.get("model") != deployment.upstream_model:
            body = {**body, "model": deployment.upstream_model}
        call.model_served = deployment.name
        call.provider = deployment.provider
        start = time.perf_counter()
        if call.kind == "embeddings":
            result = await provider.embeddings(deployment, body)
            call.upstream_ms = (time.perf_counter() - start) * 1000.0
            usage = result.usage or Usage(input_tokens=_count_inputs(body))
            charge(call, target, "embedding", usage)
            return Completion(result.body)
        if not call.stream:
            result = await provider.chat(deployment, body)
            call.upstream_ms = (time.perf_counter() - start) * 1000.0
            usage = result.usage or estimate_usage(body, _completion_text(result.body), deployment.upstream_model)
            charge(call, target, "generation", usage)
            return Completion(result.body)
        stream = await provider.chat_stream(deployment, body)
        reply = StreamReply(stream, call)
        streamed_chars = 0
        charged = False

        def observe(chunk: dict[str, Any]) -> dict[str, Any]:
            nonlocal streamed_chars, charged
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    streamed_chars += len(content)
            if chunk.get("usage") and not charged:
                # price as soon as usage arrives so outer stages can put the cost in this chunk
                charged = True
                charge(call, target, "generation", stream.usage or Usage())
            return chunk

        def settle(_: StreamReply, exc: BaseException | None) -> None:
            nonlocal charged
            call.upstream_ms = (time.perf_counter() - start) * 1000.0
            if charged:
                return
            charged = True
            usage = stream.usage or estimate_usage(body, streamed_chars, deployment.upstream_model)
            charge(call, target, "generation", usage)

        reply.transform(observe)
        reply.on_finish(settle)
        return reply


def charge(call: Call, target: Target, step: str, usage: Usage) -> None:
    """Add a priced cost item; the first one also fixes the baseline if nothing else did.

    A call executed through a provider's batch API (``call.batch_priced``) is
    charged the batch rates, as step ``batch_<step>``; its baseline stays at the
    real-time rate of the model asked, so the batch discount shows as a saving.
    Async jobs and batches the gateway runs itself use real-time APIs upstream
    and pay real-time rates: they are tagged by ``traffic_class``, not discounted.
    """
    deployment = target.deployment
    trace = call.trace
    if call.batch_priced:
        # run by the provider's batch API: its batch rates, as its own step
        step = "batch_" + step
        usd = cost_usd(target.price, usage, batch=True)
    else:
        usd = cost_usd(target.price, usage)
    first = not any(item.step == step for item in trace.items)
    trace.add(CostItem(step, deployment.name, deployment.provider, usage, usd))
    if trace.baseline_usd is None and call.baseline_price is not None:
        # priced on the prompt as asked when a stage rewrote it (pruning, compression, caching)
        trace.baseline_usd = cost_usd(call.baseline_price, trace.baseline_usage(usage))
    if first and (trace.savings or trace.cache_breakpoints_added):
        settle_savings(trace, usage, call.baseline_price, target.price)


def estimate_usage(body: dict[str, Any], output: str | int, model: str) -> Usage:
    """What a call consumed when the provider did not say: counted prompt, estimated output."""
    messages = body.get("messages") or []
    input_tokens = count_messages(messages, model, tools=body.get("tools"))
    if isinstance(output, str):
        output_tokens = count_text(output, model)
    else:
        output_tokens = (output + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens)


def _completion_text(body: dict[str, Any]) -> str:
    parts = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def _count_inputs(body: dict[str, Any]) -> int:
    inputs = body.get("input")
    if isinstance(inputs, str):
        return count_text(inputs)
    if isinstance(inputs, list):
        return sum(count_text(item) if isinstance(item, str) else len(item) for item in inputs)
    return 0

