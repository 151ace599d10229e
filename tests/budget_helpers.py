"""Helpers for budget tests: in-process gateways on a fake clock, and calls run through the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import settings_for
from tokenomy.app import Gateway, build_gateway
from tokenomy.errors import GatewayError
from tokenomy.pipeline.call import Call, Identity
from tokenomy.pipeline.reply import Completion, StreamReply

#: A simulated model whose answers are always OUTPUT_TOKENS long, priced as gpt-4o-mini.
OUTPUT_TOKENS = 20
FIXED_MODEL = {
    "name": "sim-fixed",
    "deployments": [
        {"provider": "simulated", "model": "sim-fixed", "price_model": "gpt-4o-mini", "options": {"output_tokens": OUTPUT_TOKENS}}
    ],
}
SLOW_MODEL = {
    "name": "sim-slow",
    "deployments": [
        {"provider": "simulated", "model": "sim-slow", "price_model": "gpt-4o-mini", "options": {"output_tokens": OUTPUT_TOKENS, "latency_ms": 300}}
    ],
}
HELLO = [{"role": "user", "content": "hi"}]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "sim-fixed", "messages": HELLO, "max_tokens": OUTPUT_TOKENS, **extra}


async def start_gateway(tmp_path: Path, clock: Any = None, **overrides: Any) -> Gateway:
    overrides.setdefault("ledger", {"enabled": False})
    # identical requests would be answered by the cache (free, never reaching the budget stage)
    overrides.setdefault("cache", {"enabled": False})
    overrides.setdefault("models", [FIXED_MODEL, SLOW_MODEL])
    settings = settings_for(tmp_path, **overrides)
    gateway = build_gateway(settings, clock=clock) if clock is not None else build_gateway(settings)
    await gateway.start()
    return gateway


async def run(gateway: Gateway, body: dict[str, Any], identity: Identity | None = None, **headers: str) -> Call:
    """Run one chat call through the pipeline (streams are read to the end); errors end in ``call.error``."""
    call = Call(kind="chat", body=body, model_asked=body["model"], headers=headers, stream=bool(body.get("stream")))
    if identity is not None:
        call.identity = identity
    try:
        reply = await gateway.pipeline.run(call)
    except GatewayError as err:
        call.annotations["error"] = err
        return call
    if isinstance(reply, StreamReply):
        async for _ in reply.chunks():
            pass
    assert isinstance(reply, (Completion, StreamReply))
    call.annotations["headers"] = reply.headers
    return call


def one_call_cost(gateway: Gateway) -> float:
    """What one ``chat_body()`` call costs (input counted as the simulator does)."""
    from tokenomy.pricing.cost import cost_usd
    from tokenomy.providers.usage import Usage
    from tokenomy.tokens.counting import count_messages

    price = gateway.registry.resolve("sim-fixed").primary.price
    return cost_usd(price, Usage(input_tokens=count_messages(HELLO, "sim-fixed"), output_tokens=OUTPUT_TOKENS)) or 0.0
