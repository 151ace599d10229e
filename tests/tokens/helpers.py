"""Run the token-policy stage on its own: a real registry and providers, a recording ``next``."""

from __future__ import annotations

from typing import Any

from tests.fakes.anthropic_upstream import validate as anthropic_validate
from tokenomy.config import load_settings
from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call, Identity
from tokenomy.pipeline.execute import charge
from tokenomy.pipeline.reply import Completion, Reply
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.providers import available_providers
from tokenomy.providers.anthropic_request import openai_to_anthropic_request
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages
from tokenomy.tokens.stage import TokenPolicyStage, build_token_stage


def make_stage(tokens: dict[str, Any], models: list[dict[str, Any]] | None = None) -> TokenPolicyStage:
    settings = load_settings(None, tokens=tokens, models=models or [], ledger={"enabled": False})
    registry = ModelRegistry.from_settings(settings, PriceCatalog.load_default())
    needed = {t.deployment.provider for e in registry for t in e.targets}
    stage = build_token_stage(settings.tokens, registry, available_providers(needed, settings))
    stage.registry = registry
    return stage


def make_call(stage: TokenPolicyStage, body: dict[str, Any], **identity: Any) -> Call:
    assert stage.registry is not None
    call = Call(kind="chat", body=body, model_asked=body["model"], identity=Identity(**identity))
    entry = stage.registry.resolve(body["model"])
    call.targets = entry.targets
    call.baseline_price = entry.primary.price
    return call


async def run(
    stage: TokenPolicyStage,
    body: dict[str, Any],
    *,
    usage: Usage | None = None,
    finish_reason: str = "stop",
    **identity: Any,
) -> tuple[Call, dict[str, Any]]:
    """Run ``body`` through the stage; ``next`` records the body sent and charges ``usage``."""
    call = make_call(stage, body, **identity)
    sent: dict[str, Any] = {}

    async def next(c: Call) -> Reply:
        sent.update(c.body)
        model = c.targets[0].deployment.upstream_model
        counted = Usage(input_tokens=count_messages(c.body["messages"], model, tools=c.body.get("tools")), output_tokens=10)
        charge(c, c.targets[0], "generation", usage or counted)
        return Completion({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                        "finish_reason": finish_reason}]})  # fmt: skip

    await stage(call, next)
    return call, sent


def assert_valid_openai(messages: list[dict[str, Any]]) -> None:
    """OpenAI's rules: tool results right after the assistant message that called them, all answered."""
    first = next(m for m in messages if m["role"] not in ("system", "developer"))
    assert first["role"] == "user", f"conversation starts with {first['role']}"
    pending: set[str] = set()
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            assert message["tool_call_id"] in pending, f"messages[{i}]: tool result without its call"
            pending.discard(message["tool_call_id"])
            continue
        assert not pending, f"messages[{i}]: tool calls {pending} not answered before a {role} message"
        if role == "assistant" and message.get("tool_calls"):
            pending = {call["id"] for call in message["tool_calls"]}
    assert not pending, f"tool calls {pending} never answered"


def assert_valid_anthropic(body: dict[str, Any], model: str = "claude-haiku-4-5") -> dict[str, Any]:
    """The body translated for Anthropic passes the fake Anthropic's validation (strict alternation)."""
    payload = openai_to_anthropic_request(body, model)
    anthropic_validate(payload, strict_alternation=True)
    return payload
