"""The official anthropic SDK against the gateway's /v1/messages, and the openai SDK
against an Anthropic upstream (fake speaking Anthropic's wire format)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.harness import GatewayServer
from tokenomy.pricing.catalog import PriceCatalog


def sdk(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def haiku_cost(input_tokens: int, output_tokens: int) -> float:
    price = PriceCatalog.load_default().get("claude-haiku-4-5")
    assert price is not None
    return (input_tokens * price.input + output_tokens * price.output) / 1e6


def test_messages_json(gateway: GatewayServer) -> None:
    raw = sdk(gateway).messages.with_raw_response.create(
        model="sim-haiku",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    expected = haiku_cost(message.usage.input_tokens, message.usage.output_tokens)
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    assert raw.headers["x-tokenomy-model"] == "sim-haiku"


def test_messages_stream(gateway: GatewayServer) -> None:
    with sdk(gateway).messages.stream(
        model="sim-haiku", max_tokens=100, messages=[{"role": "user", "content": "Tell me a story"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0


def test_messages_max_tokens_stop_reason(gateway: GatewayServer) -> None:
    message = sdk(gateway).messages.create(
        model="sim-haiku", max_tokens=3, messages=[{"role": "user", "content": "a long answer please"}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_messages_errors_use_anthropic_shape(gateway: GatewayServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as excinfo:
        sdk(gateway).messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert excinfo.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        sdk(gateway).messages.create(model="sim-haiku", max_tokens=5, messages=[])
    with pytest.raises(anthropic.InternalServerError):
        sdk(gateway).messages.create(model="up-fail-500", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def test_anthropic_sdk_through_openai_upstream(gateway: GatewayServer) -> None:
    """An Anthropic client reaching an OpenAI-compatible upstream: translated both ways."""
    message = sdk(gateway).messages.create(
        model="up-gpt", max_tokens=50, messages=[{"role": "user", "content": "ping pong"}]
    )
    assert message.content[0].text == "echo: ping pong"


def openai_sdk(server: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_openai_sdk_through_anthropic_upstream(gateway: GatewayServer, fake_anthropic) -> None:
    raw = openai_sdk(gateway).chat.completions.with_raw_response.create(
        model="claude",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello claude"},
        ],
        max_tokens=40,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello claude"
    assert completion.choices[0].finish_reason == "stop"
    sent = fake_anthropic.last_request
    assert sent["headers"]["x-api-key"] == "sk-ant-fake"
    assert sent["body"]["system"] == "Be brief."
    assert sent["body"]["model"] == "claude-haiku-4-5"
    usage = completion.usage
    assert usage is not None
    assert float(raw.headers["x-tokenomy-cost-usd"]) == pytest.approx(
        haiku_cost(usage.prompt_tokens, usage.completion_tokens), rel=1e-6
    )


def test_openai_sdk_stream_through_anthropic_upstream(gateway: GatewayServer) -> None:
    stream = openai_sdk(gateway).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "stream this answer"}],
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this answer"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.model_extra["cost_usd"] > 0


def test_openai_tool_calls_through_anthropic_upstream(gateway: GatewayServer) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = openai_sdk(gateway).chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "what is the weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        max_tokens=100,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"
    follow_up = openai_sdk(gateway).chat.completions.create(
        model="claude",
        messages=[
            {"role": "user", "content": "what is the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=tools,  # type: ignore[arg-type]
        max_tokens=100,
    )
    assert "sunny" in (follow_up.choices[0].message.content or "")


def test_anthropic_prompt_cache_tokens_are_priced(gateway: GatewayServer) -> None:
    """Cache writes then reads, reported by the upstream, priced at the catalog's cache rates."""
    long_system = "You are a support agent. " * 50
    messages = [
        {"role": "system", "content": [{"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "first question"},
    ]
    client = openai_sdk(gateway)
    first = client.chat.completions.with_raw_response.create(model="claude", messages=messages, max_tokens=20)  # type: ignore[arg-type]
    second = client.chat.completions.with_raw_response.create(model="claude", messages=messages, max_tokens=20)  # type: ignore[arg-type]
    price = PriceCatalog.load_default().get("claude-haiku-4-5")
    assert price is not None and price.cached_input is not None and price.cache_write is not None
    u1, u2 = first.parse().usage, second.parse().usage
    assert u1 is not None and u2 is not None
    cached = u2.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached and cached > 0
    expected_second = (
        (u2.prompt_tokens - cached) * price.input + cached * price.cached_input + u2.completion_tokens * price.output
    ) / 1e6
    assert float(second.headers["x-tokenomy-cost-usd"]) == pytest.approx(expected_second, rel=1e-6)
    assert float(first.headers["x-tokenomy-cost-usd"]) > float(second.headers["x-tokenomy-cost-usd"])


def test_anthropic_extensions_are_stripped_for_openai_upstreams(gateway: GatewayServer, fake_openai) -> None:
    sdk(gateway).messages.create(
        model="up-gpt",
        max_tokens=20,
        extra_body={"top_k": 5},
        system=[{"type": "text", "text": "Long stable prefix.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
    )
    sent = fake_openai.requests[-1]["body"]
    assert "top_k" not in sent
    assert "cache_control" not in str(sent)


def test_anthropic_sdk_through_anthropic_upstream(gateway: GatewayServer, fake_anthropic) -> None:
    """Anthropic in, Anthropic out: translated through the pipeline's OpenAI shape and back,
    with prompt-cache usage surviving both ways."""
    system = [{"type": "text", "text": "Policy. " * 60, "cache_control": {"type": "ephemeral"}}]
    client = sdk(gateway)
    first = client.messages.create(
        model="claude", max_tokens=30, system=system, messages=[{"role": "user", "content": "hello twice"}]
    )
    sent = fake_anthropic.last_request["body"]
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.content[0].text == "echo: hello twice"
    with client.messages.stream(
        model="claude", max_tokens=30, system=system, messages=[{"role": "user", "content": "hello twice"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hello twice"
    assert final.usage.cache_read_input_tokens and final.usage.cache_read_input_tokens > 0
    assert first.usage.cache_creation_input_tokens or first.usage.cache_read_input_tokens
