"""``AnthropicProvider`` against a fake Anthropic API that validates like the real one,
and the ``/v1/messages`` translation as the official ``anthropic`` SDK sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp import web

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tokenomy.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError, UpstreamRejected
from tokenomy.providers.anthropic import AnthropicProvider
from tokenomy.providers.anthropic_format import (
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_to_openai_request,
    encode_sse,
    openai_to_anthropic_response,
    strip_anthropic_extensions,
)
from tokenomy.providers.base import ChatStream, Deployment, Provider
from tokenomy.providers.openai import OpenAICompatibleProvider
from tokenomy.providers.usage import Usage

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_failures(fake_anthropic: FakeAnthropic) -> Iterator[None]:
    fake_anthropic.failures.clear()
    yield
    fake_anthropic.failures.clear()


@pytest.fixture
async def provider() -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider()
    yield provider
    await provider.aclose()


@pytest.fixture
def deployment(fake_anthropic: FakeAnthropic) -> Deployment:
    return Deployment(
        name="claude",
        provider="anthropic",
        upstream_model="claude-sonnet-4-5",
        base_url=fake_anthropic.base_url,
        api_key="sk-ant-fake",
    )


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": text}], **extra}


async def collect(stream: ChatStream) -> tuple[str, dict[int, dict[str, str]], list[dict[str, Any]]]:
    """Accumulate a chunk stream the way an OpenAI client does: text, tool calls, chunks."""
    text, calls, chunks = "", {}, []
    async for chunk in stream:
        chunks.append(chunk)
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.get("id") or ""
                entry["name"] += call["function"].get("name") or ""
                entry["arguments"] += call["function"].get("arguments") or ""
    return text, calls, chunks


# --------------------------------------------------------------------------- chat


async def test_chat(provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic) -> None:
    body = chat_body("hello there", max_tokens=50, temperature=0.3, stop=["zzz"], user="u-7")
    body["messages"].insert(0, {"role": "system", "content": "Be kind."})
    result = await provider.chat(deployment, body)
    assert result.body["object"] == "chat.completion"
    assert result.body["choices"][0]["message"]["content"] == "echo: hello there"
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.usage == Usage(input_tokens=4, output_tokens=3)
    assert result.body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    sent = fake_anthropic.last_request
    assert sent["path"] == "/v1/messages"
    assert sent["headers"]["x-api-key"] == "sk-ant-fake"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"] == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "system": "Be kind.",
        "messages": [{"role": "user", "content": "hello there"}],
        "temperature": 0.3,
        "stop_sequences": ["zzz"],
        "metadata": {"user_id": "u-7"},
    }


async def test_max_tokens_and_stop_sequences_cut_the_answer(
    provider: AnthropicProvider, deployment: Deployment
) -> None:
    result = await provider.chat(deployment, chat_body("one two three four five", max_tokens=3))
    assert result.body["choices"][0]["finish_reason"] == "length"
    assert result.body["choices"][0]["message"]["content"] == "echo: one two"
    result = await provider.chat(deployment, chat_body("one two STOP three", stop="STOP"))
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["choices"][0]["message"]["content"] == "echo: one two "


async def test_default_max_tokens_from_deployment_options(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic
) -> None:
    await provider.chat(deployment, chat_body("hi"))
    assert fake_anthropic.last_request["body"]["max_tokens"] == 4096
    deployment.options["default_max_tokens"] = 512
    await provider.chat(deployment, chat_body("hi"))
    assert fake_anthropic.last_request["body"]["max_tokens"] == 512


async def test_base_url_with_v1_suffix(provider: AnthropicProvider, deployment: Deployment) -> None:
    deployment.base_url = deployment.base_url + "/v1/"
    result = await provider.chat(deployment, chat_body("hi"))
    assert result.body["choices"][0]["message"]["content"] == "echo: hi"


async def test_prompt_cache_usage_is_normalized(provider: AnthropicProvider, deployment: Deployment) -> None:
    manual = "policy " * 300
    body = chat_body("question one")
    body["messages"].insert(
        0, {"role": "system", "content": [{"type": "text", "text": manual, "cache_control": {"type": "ephemeral"}}]}
    )
    first = await provider.chat(deployment, body)
    assert first.usage == Usage(input_tokens=302, output_tokens=3, cache_write_tokens=300)
    body["messages"][-1]["content"] = "question two"
    second = await provider.chat(deployment, body)
    assert second.usage == Usage(input_tokens=302, output_tokens=3, cached_tokens=300)
    assert second.body["usage"]["prompt_tokens_details"] == {"cached_tokens": 300}


async def test_one_hour_cache_writes(provider: AnthropicProvider, deployment: Deployment) -> None:
    body = chat_body("q")
    body["messages"].insert(
        0,
        {
            "role": "system",
            "content": [{"type": "text", "text": "hour " * 50, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        },
    )
    result = await provider.chat(deployment, body)
    assert result.usage == Usage(input_tokens=51, output_tokens=2, cache_write_1h_tokens=50)


async def test_tool_call_then_tool_result(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic
) -> None:
    body = chat_body("What's the weather in Rome?", tools=[WEATHER_TOOL])
    result = await provider.chat(deployment, body)
    message = result.body["choices"][0]["message"]
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me check the weather."
    [call] = message["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"location":"Rome"}'}
    assert fake_anthropic.last_request["body"]["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]
    # the next turn, as an OpenAI client sends it: the fake checks alternation and tool_result pairing
    body["messages"] += [message, {"role": "tool", "tool_call_id": call["id"], "content": "24C and sunny"}]
    result = await provider.chat(deployment, body)
    assert result.body["choices"][0]["message"]["content"] == "tool said: 24C and sunny"
    sent = fake_anthropic.last_request["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": call["id"], "content": "24C and sunny"}]


async def test_forced_tool_choice(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic
) -> None:
    body = chat_body(
        "anything", tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    result = await provider.chat(deployment, body)
    assert result.body["choices"][0]["message"]["content"] is None
    assert fake_anthropic.last_request["body"]["tool_choice"] == {"type": "tool", "name": "get_weather"}


async def test_thinking_blocks_go_back_upstream(provider: AnthropicProvider, deployment: Deployment) -> None:
    body = chat_body(
        "weather in Oslo?", tools=[WEATHER_TOOL], max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    message = (await provider.chat(deployment, body)).body["choices"][0]["message"]
    assert message["reasoning_content"] == "The user said: weather in Oslo?"
    assert message["thinking_blocks"][0]["signature"].startswith("sig_")
    body["messages"] += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "cold"}]
    result = await provider.chat(deployment, body)  # the fake refuses the turn without its signed thinking
    assert result.body["choices"][0]["message"]["content"] == "tool said: cold"


async def test_embeddings_are_not_supported(provider: AnthropicProvider, deployment: Deployment) -> None:
    with pytest.raises(InvalidRequest):
        await provider.embeddings(deployment, {"model": "x", "input": "hi"})


async def test_untranslatable_request_never_reaches_upstream(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic
) -> None:
    before = len(fake_anthropic.requests)
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(deployment, chat_body("hi", n=3))
    assert info.value.param == "n"
    assert len(fake_anthropic.requests) == before


# --------------------------------------------------------------------------- stream


async def test_stream(provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic) -> None:
    stream = await provider.chat_stream(
        deployment, chat_body("stream me please", stream_options={"include_usage": False})
    )
    text, calls, chunks = await collect(stream)
    assert text == "echo: stream me please"
    assert not calls
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert stream.finish_reason == "stop"
    assert stream.usage == Usage(input_tokens=3, output_tokens=4)
    assert stream.completed
    sent = fake_anthropic.last_request
    assert sent["body"]["stream"] is True and "stream_options" not in sent["body"]
    assert sent["headers"]["accept"] == "text/event-stream"


async def test_stream_tool_call(provider: AnthropicProvider, deployment: Deployment) -> None:
    stream = await provider.chat_stream(deployment, chat_body("weather in Lima", tools=[WEATHER_TOOL]))
    text, calls, _ = await collect(stream)
    assert text == "Let me check the weather."
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("toolu_")
    assert orjson.loads(calls[0]["arguments"]) == {"location": "Lima"}
    assert stream.finish_reason == "tool_calls"


async def test_stream_reports_cache_usage(provider: AnthropicProvider, deployment: Deployment) -> None:
    body = chat_body("q", stream=True)
    body["messages"][0]["content"] = [
        {"type": "text", "text": "stream cache " * 40, "cache_control": {"type": "ephemeral"}}
    ]
    for expected in (
        Usage(input_tokens=80, output_tokens=81, cache_write_tokens=80),
        Usage(input_tokens=80, output_tokens=81, cached_tokens=80),
    ):
        stream = await provider.chat_stream(deployment, body)
        await collect(stream)
        assert stream.usage == expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("failure", "error", "status", "message"),
    [
        ("529", UpstreamError, 502, "Overloaded"),
        ("500", UpstreamError, 502, "Internal server error"),
        ("429", RateLimited, 429, "rate limit"),
        ("400", UpstreamRejected, 400, "Injected invalid request"),
        ("malformed", UpstreamError, 502, "malformed JSON"),
    ],
)
async def test_chat_errors(
    provider: AnthropicProvider,
    deployment: Deployment,
    failure: str,
    error: type[GatewayError],
    status: int,
    message: str,
) -> None:
    with pytest.raises(error) as info:
        await provider.chat(deployment, chat_body(f"[[fail:{failure}]]"))
    assert type(info.value) is error
    assert info.value.status == status
    assert message in info.value.message
    if failure == "429":
        assert info.value.headers == {"Retry-After": "7"}


async def test_upstream_validation_error_keeps_anthropics_message(
    provider: AnthropicProvider, deployment: Deployment
) -> None:
    body = {"model": "x", "messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "hi"}]}
    with pytest.raises(UpstreamRejected, match='first message must use the "user" role'):
        await provider.chat(deployment, body)


async def test_bad_api_key(provider: AnthropicProvider, deployment: Deployment) -> None:
    deployment.api_key = "sk-ant-wrong"
    with pytest.raises(UpstreamError, match="invalid x-api-key"):
        await provider.chat(deployment, chat_body("hi"))


async def test_stream_refused_before_it_starts(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.inject("529")
    with pytest.raises(UpstreamError, match="Overloaded"):
        await provider.chat_stream(deployment, chat_body("hi"))


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("cut-stream", "broke the stream"),
        ("truncate-stream", "before message_stop"),
        ("error-event", "overloaded_error"),
        ("malformed", "malformed stream event"),
    ],
)
async def test_stream_broken_mid_way(
    provider: AnthropicProvider, deployment: Deployment, fake_anthropic: FakeAnthropic, failure: str, message: str
) -> None:
    fake_anthropic.inject(failure)
    stream = await provider.chat_stream(deployment, chat_body("a few words to stream here"))
    received = []
    with pytest.raises(UpstreamError, match=message):
        async for chunk in stream:
            received.append(chunk)
    assert received and received[0]["choices"][0]["delta"]["role"] == "assistant"
    assert not stream.completed
    await stream.aclose()


# --------------------------------------------------------------------------- the fake itself


TOOL_USE_TURN = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens: Field required"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            },
            400,
            'found multiple "user" roles in a row',
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": "a"}]},
            400,
            'first message must use the "user" role',
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]},
                ],
            },
            400,
            "unexpected `tool_use_id`",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "a"}, TOOL_USE_TURN, {"role": "user", "content": "b"}],
            },
            400,
            "`tool_use` ids were found without `tool_result` blocks",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}], "n": 1},
            400,
            "n: Extra inputs are not permitted",
        ),
    ],
)
async def test_fake_validates_like_anthropic(
    fake_anthropic: FakeAnthropic, body: dict[str, Any], status: int, message: str
) -> None:
    headers = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}
    url = f"{fake_anthropic.base_url}/v1/messages"
    async with aiohttp.ClientSession() as session, session.post(url, json=body, headers=headers) as response:
        answer = await response.json()
    assert response.status == status
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]
    assert answer["request_id"].startswith("req_")


async def test_fake_checks_headers(fake_anthropic: FakeAnthropic) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "a"}]}
    url = f"{fake_anthropic.base_url}/v1/messages"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"anthropic-version": "2023-06-01"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "authentication_error"
        async with session.post(url, json=body, headers={"x-api-key": "sk-ant-fake"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "anthropic-version: header is required"


# --------------------------------------------------------------------------- /v1/messages as the official SDK sees it
#
# A miniature of the lead's /v1/messages route: Anthropic request → internal (OpenAI) request →
# a provider → back to Anthropic JSON or SSE. The SDK's own parsing and stream accumulator check the output.

SCRIPTED_TOOL_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Checking both."}, "finish_reason": None}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": "Pa'}}]},
                "finish_reason": None,
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]},
                "finish_reason": None,
            }
        ]
    },
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"location": "Rome"}'},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}},
]


class ScriptedProvider(Provider):
    """Replays fixed OpenAI chunks: a parallel tool-call stream as OpenAI sends it."""

    name = "scripted"

    async def chat(self, deployment: Deployment, body: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def chat_stream(self, deployment: Deployment, body: dict[str, Any]) -> ChatStream:
        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for chunk in SCRIPTED_TOOL_CHUNKS:
                yield chunk

        return ChatStream(chunks())


class MessagesRoute:
    """The /v1/messages translation loop, served by aiohttp for the SDK to call."""

    def __init__(self, targets: dict[str, tuple[Provider, Deployment]]) -> None:
        self.targets = targets

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        try:
            internal = anthropic_to_openai_request(body)
            provider, deployment = self.targets[body["model"]]
            if provider.name != "anthropic":
                internal = strip_anthropic_extensions(internal)
            if not internal.get("stream"):
                result = await provider.chat(deployment, internal)
                answer = openai_to_anthropic_response(result.body, result.usage, body["model"])
                return web.json_response(answer, dumps=lambda o: orjson.dumps(o).decode())
            stream = await provider.chat_stream(deployment, internal)
        except GatewayError as exc:
            return web.json_response(anthropic_error_body(exc.status, exc.message), status=exc.status)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        translator = OpenAIToAnthropicStream(body["model"])
        try:
            async for chunk in stream:
                for event in translator.feed(chunk):
                    await response.write(encode_sse(*event))
            events = translator.close(stream.usage)
        except GatewayError as exc:
            events = [OpenAIToAnthropicStream.error_event(exc.status, exc.message)]
        for event in events:
            await response.write(encode_sse(*event))
        await response.write_eof()
        return response


@pytest.fixture
async def sdk(
    fake_anthropic: FakeAnthropic, fake_openai: FakeOpenAI, provider: AnthropicProvider
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    openai_provider = OpenAICompatibleProvider()
    route = MessagesRoute(
        {
            "via-anthropic": (
                provider,
                Deployment("via-anthropic", "anthropic", "claude-sonnet-4-5", fake_anthropic.base_url, "sk-ant-fake"),
            ),
            "via-openai": (
                openai_provider,
                Deployment("via-openai", "openai", "gpt-4o-mini", fake_openai.base_url, "sk-fake"),
            ),
            "scripted-tools": (ScriptedProvider(), Deployment("scripted-tools", "scripted", "x")),
        }
    )
    app = web.Application()
    app.router.add_post("/v1/messages", route.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = anthropic.AsyncAnthropic(api_key="gateway-key", base_url=f"http://127.0.0.1:{port}", max_retries=0)
    yield client
    await client.close()
    await openai_provider.aclose()
    await runner.cleanup()


async def test_sdk_create_via_openai_upstream(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.create(
        model="via-openai", max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "hi there"}]
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text == "echo: hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3 and message.usage.input_tokens > 0


async def test_sdk_stream_accumulates_text_via_openai_upstream(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(
        model="via-openai", max_tokens=100, messages=[{"role": "user", "content": "count one two three four"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "echo: count one two three four"
    assert final.content[0].text == "echo: count one two three four"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6  # from the final message_delta, not message_start's placeholder


async def test_sdk_stream_accumulates_parallel_tool_calls(sdk: anthropic.AsyncAnthropic) -> None:
    async with sdk.messages.stream(
        model="scripted-tools", max_tokens=100, messages=[{"role": "user", "content": "weather?"}]
    ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking both."
    assert (final.content[1].id, final.content[1].input) == ("call_a", {"location": "Paris"})
    assert (final.content[2].id, final.content[2].input) == ("call_b", {"location": "Rome"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 12)


async def test_sdk_round_trip_through_anthropic_upstream_with_thinking_and_tools(
    sdk: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic
) -> None:
    """Anthropic client → gateway (OpenAI shape) → Anthropic upstream, streamed, two turns."""
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object", "properties": {}}}]
    messages: list[Any] = [{"role": "user", "content": "weather in Berlin?"}]
    params: dict[str, Any] = {
        "model": "via-anthropic",
        "max_tokens": 2048,
        "tools": tools,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    async with sdk.messages.stream(messages=messages, **params) as stream:
        first = await stream.get_final_message()
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature.startswith("sig_")
    assert first.content[2].input == {"location": "Berlin"}
    assert first.stop_reason == "tool_use"
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[2].id, "content": "9C"}]},
    ]
    async with sdk.messages.stream(messages=messages, **params) as stream:
        second = await stream.get_final_message()
    assert second.content[-1].text == "tool said: 9C"
    sent = fake_anthropic.last_request["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": first.content[0].thinking,
        "signature": first.content[0].signature,
    }


async def test_sdk_sees_prompt_cache_usage(sdk: anthropic.AsyncAnthropic) -> None:
    system = [{"type": "text", "text": "sdk manual " * 100, "cache_control": {"type": "ephemeral"}}]
    usages = []
    for _ in range(2):
        message = await sdk.messages.create(
            model="via-anthropic", max_tokens=100, system=system, messages=[{"role": "user", "content": "hello"}]
        )
        usages.append(
            (
                message.usage.input_tokens,
                message.usage.cache_creation_input_tokens,
                message.usage.cache_read_input_tokens,
            )
        )
    assert usages == [(1, 200, 0), (1, 0, 200)]


async def test_sdk_errors(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        await sdk.messages.create(model="via-openai", max_tokens=10, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.RateLimitError):
        await sdk.messages.create(
            model="via-anthropic", max_tokens=10, messages=[{"role": "user", "content": "[[fail:429]]"}]
        )
    with pytest.raises(anthropic.InternalServerError) as upstream:
        await sdk.messages.create(
            model="via-anthropic", max_tokens=10, messages=[{"role": "user", "content": "[[fail:529]]"}]
        )
    assert "Overloaded" in upstream.value.body["error"]["message"]


async def test_sdk_sees_an_in_band_error_when_the_stream_breaks(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        async with sdk.messages.stream(
            model="via-anthropic",
            max_tokens=100,
            messages=[{"role": "user", "content": "[[fail:error-event]] some words"}],
        ) as stream:
            await stream.get_final_message()
