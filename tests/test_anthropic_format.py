"""Translation between OpenAI chat completions and Anthropic Messages (pure functions, no I/O).

Event and message fixtures follow Anthropic's documented shapes (Messages API
and "Streaming Messages" pages) and OpenAI's chat-completion chunks.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenomy.errors import InvalidRequest, UpstreamError
from tokenomy.providers.anthropic_format import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_to_openai_request,
    anthropic_to_openai_response,
    encode_sse,
    openai_to_anthropic_request,
    openai_to_anthropic_response,
    strip_anthropic_extensions,
)
from tokenomy.providers.usage import Usage

PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def tool_conversation() -> list[dict[str, Any]]:
    """An OpenAI conversation with two parallel tool calls and their results."""
    return [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "22C cloudy"}]},
        {"role": "user", "content": "Which is warmer?"},
    ]


# --------------------------------------------------------------------------- OpenAI → Anthropic request


def test_system_and_developer_messages_become_the_system_string() -> None:
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
    }
    out = openai_to_anthropic_request(body, "claude-sonnet-4-5")
    assert out == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_system_blocks_keep_cache_control() -> None:
    marker = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Long manual", "cache_control": marker}]},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": "Bonjour"},
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["system"] == [
        {"type": "text", "text": "Long manual", "cache_control": marker},
        {"type": "text", "text": "Answer in French."},
    ]


def test_multi_part_user_content_with_images_and_cache_control() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_tool_calls_and_tool_results_translate_and_merge_into_alternating_turns() -> None:
    out = openai_to_anthropic_request({"messages": tool_conversation(), "tools": [WEATHER_TOOL]}, "m")
    assert out["system"] == "You are terse."
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"location": "Rome"}},
    ]
    # both tool results and the next user text share one user turn, results first
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "22C cloudy"}]},
        {"type": "text", "text": "Which is warmer?"},
    ]
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": None},
            {"role": "assistant", "content": "four"},
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}]},
    ]


def test_sampling_parameters() -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "stream": True,
        "stream_options": {"include_usage": True},
        "seed": 7,
        "presence_penalty": 0.5,
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["max_tokens"] == 60  # max_completion_tokens wins over the deprecated max_tokens
    assert out["temperature"] == 1.0  # Anthropic's range ends at 1
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["metadata"] == {"user_id": "user-42"}
    assert out["stream"] is True
    assert not {"seed", "presence_penalty", "stream_options", "user", "stop"} & set(out)
    assert openai_to_anthropic_request({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"]}, "m")[
        "stop_sequences"
    ] == ["a", "b"]
    assert (
        openai_to_anthropic_request({"messages": [{"role": "user", "content": "x"}]}, "m", default_max_tokens=99)[
            "max_tokens"
        ]
        == 99
    )


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert openai_to_anthropic_request(body, "m").get("tool_choice") == expected


def test_response_format_json_schema_becomes_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}},
    }
    assert openai_to_anthropic_request(body, "m")["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 5}, "stop"),
    ],
)
def test_untranslatable_parameters_are_refused(extra: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(InvalidRequest) as info:
        openai_to_anthropic_request(body, "m")
    assert info.value.param == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}, "messages[1].content[0]"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]},
            "messages[1].content[0]",
        ),
        ({"role": "tool", "content": "no id"}, "messages[1].tool_call_id"),
        ({"role": "function", "name": "f", "content": "x"}, "messages[1].role"),
    ],
)
def test_untranslatable_messages_are_refused(message: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}, message]}
    with pytest.raises(InvalidRequest) as info:
        openai_to_anthropic_request(body, "m")
    assert info.value.param == param


def test_only_system_messages_is_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        openai_to_anthropic_request({"messages": [{"role": "system", "content": "x"}]}, "m")
    assert info.value.param == "messages"


# --------------------------------------------------------------------------- Anthropic → OpenAI response


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    message = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 6},
    }
    return {**message, **overrides}


def test_text_response() -> None:
    out = anthropic_to_openai_response(anthropic_message(), "claude-sonnet-4-5")
    assert out["object"] == "chat.completion"
    assert out["model"] == "claude-sonnet-4-5"
    assert out["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def test_tool_use_and_thinking_response() -> None:
    content = [
        {"type": "thinking", "thinking": "User wants weather.", "signature": "sig123"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris", "unit": "c"}},
    ]
    out = anthropic_to_openai_response(anthropic_message(content=content, stop_reason="tool_use"), "m")
    message = out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me check."
    assert message["tool_calls"] == [
        {
            "id": "toolu_01",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris","unit":"c"}'},
        }
    ]
    assert message["reasoning_content"] == "User wants weather."
    assert message["thinking_blocks"] == [content[0]]


def test_tool_use_only_response_has_null_content() -> None:
    content = [{"type": "tool_use", "id": "toolu_01", "name": "f", "input": {}}]
    message = anthropic_to_openai_response(anthropic_message(content=content, stop_reason="tool_use"), "m")["choices"][
        0
    ]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    out = anthropic_to_openai_response(anthropic_message(stop_reason=stop_reason), "m")
    assert out["choices"][0]["finish_reason"] == finish_reason


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 200,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 150, "ephemeral_1h_input_tokens": 50},
        "output_tokens": 30,
    }
    out = anthropic_to_openai_response(anthropic_message(usage=usage), "m")
    assert out["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 30,
        "total_tokens": 1240,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


# --------------------------------------------------------------------------- Anthropic events → OpenAI chunks

TOOL_STREAM = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 2048,
                "output_tokens": 2,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Need weather."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Okay,"}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " checking."}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {},
        },
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"location": "San'},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ' Francisco"}'}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89},
    },
    {"type": "message_stop"},
]


def run_anthropic_stream(events: list[dict[str, Any]]) -> tuple[AnthropicToOpenAIStream, list[dict[str, Any]]]:
    translator = AnthropicToOpenAIStream()
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    return translator, chunks


def test_anthropic_stream_to_openai_chunks() -> None:
    translator, chunks = run_anthropic_stream(TOOL_STREAM)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:] == [
        {"reasoning_content": "Need weather."},
        {"thinking_blocks": [{"type": "thinking", "signature": "EqQB"}]},
        {"content": "Okay,"},
        {"content": " checking."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"location": "San'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ' Francisco"}'}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert all(c["id"] == "msg_014p7gG3wDgGV9EUtLvnow3U" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "claude-sonnet-4-5" for c in chunks)
    # the last chunk is usage only: input from message_start, output from message_delta
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2520,
        "completion_tokens": 89,
        "total_tokens": 2609,
        "prompt_tokens_details": {"cached_tokens": 2048},
    }
    assert translator.finished
    assert translator.usage == Usage(input_tokens=2520, output_tokens=89, cached_tokens=2048)


def test_message_delta_cumulative_usage_replaces_message_start() -> None:
    events = [*TOOL_STREAM[:1], TOOL_STREAM[-2], TOOL_STREAM[-1]]
    events[1] = {**events[1], "usage": {"input_tokens": 500, "cache_read_input_tokens": 2048, "output_tokens": 90}}
    translator, _ = run_anthropic_stream(events)
    assert translator.usage == Usage(input_tokens=2548, output_tokens=90, cached_tokens=2048)


def test_two_tool_calls_get_consecutive_indexes() -> None:
    events = [TOOL_STREAM[0]]
    for index, name in ((0, "a"), (1, "b")):
        block = {"type": "tool_use", "id": f"toolu_{name}", "name": name, "input": {}}
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append(
            {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": "{}"}}
        )
        events.append({"type": "content_block_stop", "index": index})
    _, chunks = run_anthropic_stream(events)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert [(c["index"], c.get("id")) for c in calls] == [(0, "toolu_a"), (0, None), (1, "toolu_b"), (1, None)]


def test_error_event_raises_upstream_error() -> None:
    translator = AnthropicToOpenAIStream()
    translator.feed(TOOL_STREAM[0])
    with pytest.raises(UpstreamError, match=r"overloaded_error.*Overloaded"):
        translator.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


def test_events_before_message_start_are_an_error() -> None:
    with pytest.raises(UpstreamError, match="before message_start"):
        AnthropicToOpenAIStream().feed(TOOL_STREAM[1])


def test_unknown_events_and_pings_are_ignored() -> None:
    translator = AnthropicToOpenAIStream()
    translator.feed(TOOL_STREAM[0])
    assert translator.feed({"type": "ping"}) == []
    assert translator.feed({"type": "some_future_event", "index": 0}) == []
    assert not translator.finished


# ------------------------------------------------------------- Anthropic → OpenAI request (our /v1/messages)


def test_anthropic_request_to_openai() -> None:
    marker = {"type": "ephemeral"}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Manual", "cache_control": marker}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    out = anthropic_to_openai_request(body)
    assert out["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Manual", "cache_control": marker}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "user", "content": "Thanks"},
    ]
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}, "description": "Weather"},
        }
    ]
    assert out["tool_choice"] == "required"
    assert out["parallel_tool_calls"] is False
    assert out["stop"] == ["END"]
    assert out["max_tokens"] == 1024
    assert (out["temperature"], out["top_p"], out["user"], out["stream"]) == (0.2, 0.9, "u-1", True)
    assert "top_k" not in out and "metadata" not in out


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 10}, "messages"),
        ({"model": "m", "max_tokens": 10, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": "10", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
        (
            {
                "model": "m",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools",
        ),
    ],
)
def test_anthropic_request_validation(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        anthropic_to_openai_request(body)
    assert info.value.param == param


def test_missing_field_message_matches_anthropic() -> None:
    with pytest.raises(InvalidRequest, match="max_tokens: Field required"):
        anthropic_to_openai_request({"model": "m", "messages": [{"role": "user", "content": "x"}]})


def test_tool_result_images_move_to_the_next_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": "Take a screenshot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "done"}, image],
                        "is_error": False,
                    }
                ],
            },
        ],
    }
    messages = anthropic_to_openai_request(body)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "t1", "content": "done"}
    assert messages[3] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}],
    }


def test_anthropic_request_round_trips_through_the_openai_shape() -> None:
    """Anthropic client → internal → Anthropic upstream keeps cache_control, thinking and tool turns."""
    marker = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "model": "m",
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "Manual", "cache_control": marker}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"location": "Paris"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "18C"}]},
        ],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": marker}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["END"],
    }
    back = openai_to_anthropic_request(anthropic_to_openai_request(body), "m")
    assert back == {**body, "tool_choice": {"type": "tool", "name": "get_weather"}}


def test_openai_request_round_trips_through_the_anthropic_shape() -> None:
    body = {"model": "m", "messages": tool_conversation(), "tools": [WEATHER_TOOL], "max_tokens": 100, "stop": ["END"]}
    back = anthropic_to_openai_request(openai_to_anthropic_request(body, "m"))
    expected = tool_conversation()
    expected[4] = {**expected[4], "content": "22C cloudy"}  # text parts collapse to a string
    assert back["messages"] == expected
    assert back["tools"] == [WEATHER_TOOL]
    assert (back["max_tokens"], back["stop"]) == (100, ["END"])


def test_strip_anthropic_extensions() -> None:
    body = anthropic_to_openai_request(
        {
            "model": "m",
            "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "text", "text": "a"}],
                },
                {"role": "user", "content": "q2"},
            ],
            "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        }
    )
    clean = strip_anthropic_extensions(body)
    assert "thinking" not in clean
    assert clean["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "S"}]}
    assert clean["messages"][2] == {"role": "assistant", "content": "a"}
    assert clean["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert body["messages"][2]["thinking_blocks"]  # the original is untouched
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}


# --------------------------------------------------------------------------- OpenAI → Anthropic response


def openai_completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64},
        },
    }


def test_openai_response_to_anthropic_message() -> None:
    body = openai_completion({"role": "assistant", "content": "Hi there", "refusal": None})
    out = openai_to_anthropic_response(body, None, "claude-sonnet-4-5")
    assert out == {
        "id": "msg_abc123",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 36,
            "output_tokens": 20,
            "cache_read_input_tokens": 64,
            "cache_creation_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        },
    }


def test_openai_tool_calls_to_anthropic_tool_use() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"location":"Oslo"}'},
            }
        ],
    }
    usage = Usage(
        input_tokens=500, output_tokens=9, cached_tokens=100, cache_write_tokens=300, cache_write_1h_tokens=50
    )
    out = openai_to_anthropic_response(openai_completion(message, "tool_calls"), usage, "m")
    assert out["content"] == [
        {"type": "tool_use", "id": "call_9", "name": "get_weather", "input": {"location": "Oslo"}}
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {
        "input_tokens": 50,
        "output_tokens": 9,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 350,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 50},
    }


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_finish_reasons(finish_reason: Any, stop_reason: str) -> None:
    body = openai_completion({"role": "assistant", "content": "x"}, finish_reason)
    assert openai_to_anthropic_response(body, None, "m")["stop_reason"] == stop_reason


def test_invalid_tool_arguments_from_the_model_are_an_upstream_error() -> None:
    message = {
        "role": "assistant",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{bad"}}],
    }
    with pytest.raises(UpstreamError):
        openai_to_anthropic_response(openai_completion(message, "tool_calls"), None, "m")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_body(status: int, kind: str) -> None:
    assert anthropic_error_body(status, "boom") == {"type": "error", "error": {"type": kind, "message": "boom"}}


# --------------------------------------------------------------------------- OpenAI chunks → Anthropic events


def openai_chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    chunk["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )
    return {**chunk, **extra}


OPENAI_TOOL_STREAM = [
    openai_chunk({"role": "assistant", "content": "", "refusal": None}),
    openai_chunk({"content": "Let me"}),
    openai_chunk({"content": " check."}),
    openai_chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
            ]
        }
    ),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"location":'}}]}),
    openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    openai_chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        }
    ),
    openai_chunk({}, "tool_calls"),
    openai_chunk(
        None,
        usage={
            "prompt_tokens": 80,
            "completion_tokens": 25,
            "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 50},
        },
    ),
]


def run_openai_stream(chunks: list[dict[str, Any]], **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    translator = OpenAIToAnthropicStream("claude-sonnet-4-5", message_id="msg_test", **kwargs)
    events = [event for chunk in chunks for event in translator.feed(chunk)]
    return events + translator.close()


def test_openai_stream_to_anthropic_events() -> None:
    events = run_openai_stream(OPENAI_TOOL_STREAM, input_tokens=77)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"] == "msg_test" and start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 77
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Let me"}
    assert events[6][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
    }
    assert [e[1]["delta"]["partial_json"] for e in events[7:9]] == ['{"location":', '"Paris"}']
    assert events[10][1]["index"] == 2 and events[10][1]["content_block"]["name"] == "get_time"
    assert events[13][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 30,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 50,
            "output_tokens": 25,
        },
    }


def test_openai_stream_reasoning_becomes_a_thinking_block() -> None:
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        openai_chunk({"reasoning_content": "Let me think"}),
        openai_chunk({"content": "Answer"}),
        openai_chunk({}, "length"),
    ]
    events = run_openai_stream(chunks)
    starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert starts == ["thinking", "text"]
    assert (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think"}},
    ) in events
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


def test_openai_stream_without_content_still_makes_a_whole_message() -> None:
    translator = OpenAIToAnthropicStream("m")
    assert [name for name, _ in translator.start()] == ["message_start"]
    assert translator.start() == []
    events = translator.close(Usage(input_tokens=5, output_tokens=0))
    assert [name for name, _ in events] == ["message_delta", "message_stop"]
    assert events[0][1]["usage"]["input_tokens"] == 5
    assert translator.close() == []


def test_error_event_and_sse_encoding() -> None:
    name, data = OpenAIToAnthropicStream.error_event(529, "Overloaded")
    assert encode_sse(name, data) == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )


def test_stream_round_trip_openai_to_anthropic_to_openai() -> None:
    """Both stream translators compose: the tool calls and text survive a full circle."""
    events = run_openai_stream(OPENAI_TOOL_STREAM)
    translator = AnthropicToOpenAIStream()
    chunks = [chunk for _, data in events for chunk in translator.feed(orjson.loads(orjson.dumps(data)))]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in chunk["choices"][0]["delta"].get("tool_calls", []) if chunk["choices"] else []:
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            entry["name"] += call["function"].get("name") or ""
            entry["arguments"] += call["function"].get("arguments") or ""
    assert text == "Let me check."
    assert calls == {
        0: {"name": "get_weather", "arguments": '{"location":"Paris"}'},
        1: {"name": "get_time", "arguments": "{}"},
    }
    assert translator.usage == Usage(input_tokens=80, output_tokens=25, cached_tokens=50)


def test_thinking_signature_survives_both_stream_translations() -> None:
    """Anthropic upstream → internal chunks → Anthropic client: the signed thinking block is intact."""
    upstream = AnthropicToOpenAIStream()
    client = OpenAIToAnthropicStream("claude-sonnet-4-5")
    redacted = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}
    events = [
        *TOOL_STREAM[:4],
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": redacted},
        {"type": "content_block_stop", "index": 1},
        TOOL_STREAM[-2],
        TOOL_STREAM[-1],
    ]
    out = [event for e in events for chunk in upstream.feed(e) for event in client.feed(chunk)] + client.close()
    blocks: list[dict[str, Any]] = []
    for name, data in out:
        if name == "content_block_start":
            blocks.append(dict(data["content_block"]))
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "thinking_delta":
                blocks[data["index"]]["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                blocks[data["index"]]["signature"] = delta["signature"]
    assert blocks == [{"type": "thinking", "thinking": "Need weather.", "signature": "EqQB"}, redacted]
