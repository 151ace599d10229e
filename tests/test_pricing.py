"""The price catalog (data, lookup, overrides), cost arithmetic and `tokenomy prices` output."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import pytest

from tokenomy.pricing.catalog import ModelPrice, PriceCatalog
from tokenomy.pricing.cost import cost_usd
from tokenomy.pricing.prices_command import render_prices
from tokenomy.providers.usage import Usage


@pytest.fixture(scope="module")
def catalog() -> PriceCatalog:
    return PriceCatalog.load_default()


# -- the shipped data ---------------------------------------------------------------------


def test_default_catalog_loads_once(catalog: PriceCatalog) -> None:
    assert PriceCatalog.load_default() is catalog
    assert len(catalog) >= 40
    assert len(list(catalog)) == len(catalog)


REQUIRED_MODELS = [
    "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o",
    "gpt-4o-mini", "o3", "o4-mini", "o3-mini", "text-embedding-3-small", "text-embedding-3-large",
    "text-embedding-ada-002", "claude-opus-4-5", "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5",
    "claude-sonnet-4", "claude-3-7-sonnet", "claude-haiku-4-5", "claude-3-5-haiku", "claude-3-haiku",
    "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash", "mistral-large",
    "mistral-medium", "mistral-small", "codestral", "ministral-8b", "llama-3.1-8b-instant",
    "llama-3.3-70b-versatile", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "deepseek-ai/DeepSeek-V3",
    "deepseek-chat", "deepseek-reasoner", "local-smollm2",
]  # fmt: skip


@pytest.mark.parametrize("model", REQUIRED_MODELS)
def test_required_models_are_listed(catalog: PriceCatalog, model: str) -> None:
    price = catalog.get(model)
    assert price is not None and price.model == model


def test_every_entry_is_complete_and_sourced(catalog: PriceCatalog) -> None:
    for price in catalog:
        where = price.model
        assert price.kind in ("chat", "embeddings"), where
        assert price.input >= 0 and price.output >= 0, where
        assert re.match(r"https://[\w.-]+/", price.source), where
        assert dt.date.fromisoformat(price.as_of) <= dt.date.today(), where
        assert price.context_window and price.context_window > 0, where
        if price.kind == "chat":
            assert price.max_output_tokens and 0 < price.max_output_tokens <= price.context_window, where
        for name in ("cached_input", "cache_write", "cache_write_1h"):
            value = getattr(price, name)
            # A discount for cached tokens, a premium for writes: never the other way round.
            if value is not None and name == "cached_input":
                assert value < price.input, where
            if value is not None and name != "cached_input":
                assert value > price.input, where


def test_anthropic_cache_and_batch_multipliers(catalog: PriceCatalog) -> None:
    claudes = [price for price in catalog if price.provider == "anthropic"]
    assert len(claudes) >= 9
    for price in claudes:
        # Claude 3 Haiku's page prices are rounded ($0.30 / $0.03 rather than 0.3125 / 0.025).
        rel = 0.25 if price.model == "claude-3-haiku" else 1e-9
        assert price.cache_write == pytest.approx(1.25 * price.input, rel=rel), price.model
        assert price.cache_write_1h == pytest.approx(2 * price.input), price.model
        assert price.cached_input == pytest.approx(0.1 * price.input, rel=rel), price.model
        assert price.batch_input == pytest.approx(0.5 * price.input), price.model
        assert price.batch_output == pytest.approx(0.5 * price.output), price.model


def test_batch_prices_are_half_where_listed(catalog: PriceCatalog) -> None:
    for price in catalog:
        if price.batch_input is not None:
            assert price.batch_input == pytest.approx(0.5 * price.input), price.model
        if price.batch_output is not None:
            assert price.batch_output == pytest.approx(0.5 * price.output), price.model


def test_local_model_is_free_and_small(catalog: PriceCatalog) -> None:
    price = catalog.get("local-smollm2")
    assert price is not None
    assert (price.provider, price.input, price.output) == ("local", 0.0, 0.0)
    assert (price.context_window, price.max_output_tokens) == (2048, 1024)


# -- lookup -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # its own, higher price: exact wins
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("OpenAI/GPT-4o-Mini", "gpt-4o-mini"),
        ("azure/openai/gpt-4.1-2025-04-14", "gpt-4.1"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic/claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
        ("gemini-2.0-flash-001", "gemini-2.0-flash"),
        ("mistral-large-latest", "mistral-large"),
        ("mistral-large-2411", "mistral-large-2411"),
        ("mistral-small-2506", "mistral-small"),
        ("together/meta-llama/Llama-3.3-70B-Instruct-Turbo", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("groq/llama-3.3-70b-versatile", "llama-3.3-70b-versatile"),
        ("gpt-4", "gpt-4"),
    ],
)
def test_get_normalizes(catalog: PriceCatalog, asked: str, expected: str) -> None:
    price = catalog.get(asked)
    assert price is not None, asked
    assert price.model == expected


@pytest.mark.parametrize(
    "asked",
    [
        "",
        "no-such-model",
        "gpt-4o-mini-search-preview",  # a different product: no prefix guessing
        "gpt-4o-audio-preview",
        "gpt-5-pro",
        "claude-3-5-sonnet",  # retired family not in the catalog; never "nearest" match
        "claude",
        "gpt",
        "openai/",
        "gpt-4o-2024",  # not a date suffix
    ],
)
def test_get_never_guesses(catalog: PriceCatalog, asked: str) -> None:
    assert catalog.get(asked) is None
    assert asked not in catalog


def test_get_is_stable_when_asked_again(catalog: PriceCatalog) -> None:
    first = catalog.get("anthropic/claude-haiku-4-5-20251001")
    assert first is not None and catalog.get("anthropic/claude-haiku-4-5-20251001") is first
    assert catalog.get("unknown/thing") is None and catalog.get("unknown/thing") is None


def test_duplicate_names_are_rejected() -> None:
    a = ModelPrice("a", "x", 1.0, 1.0, aliases=("b",))
    with pytest.raises(ValueError, match="'b' names both"):
        PriceCatalog([a, ModelPrice("b", "x", 1.0, 1.0)])
    with pytest.raises(ValueError, match="listed twice"):
        PriceCatalog([a, a])
    with pytest.raises(ValueError, match="case"):
        PriceCatalog([ModelPrice("Model", "x", 1.0, 1.0), ModelPrice("model", "x", 2.0, 2.0)])


# -- search -------------------------------------------------------------------------------


def test_search(catalog: PriceCatalog) -> None:
    assert catalog.search(None) == list(catalog)
    assert catalog.search("") == list(catalog)
    haikus = {price.model for price in catalog.search("HAIKU")}
    assert haikus == {"claude-haiku-4-5", "claude-3-5-haiku", "claude-3-haiku"}
    assert {price.model for price in catalog.search("claude-*-4-5")} == {
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
    }
    assert {price.model for price in catalog.search("gpt-5?")} == set()
    assert "gpt-5-nano" in {price.model for price in catalog.search("gpt-5*")}
    assert all(price.provider == "groq" for price in catalog.search("groq"))
    assert catalog.search("*20251001") == [catalog.get("claude-haiku-4-5")]  # aliases match too
    assert catalog.search("no-such-thing") == []


# -- overrides ----------------------------------------------------------------------------


def test_override_changes_only_given_fields(catalog: PriceCatalog) -> None:
    updated = catalog.with_overrides({"gpt-4o": {"input": 2.0, "cached_input": None}})
    price = updated.get("gpt-4o")
    assert price is not None
    assert (price.input, price.cached_input, price.output) == (2.0, None, 10.0)
    assert price.source == catalog.get("gpt-4o").source  # type: ignore[union-attr]
    assert catalog.get("gpt-4o").input == 2.5  # type: ignore[union-attr]  # original untouched
    assert len(updated) == len(catalog)


def test_override_through_alias_or_case_edits_the_entry(catalog: PriceCatalog) -> None:
    updated = catalog.with_overrides({"claude-sonnet-4-0": {"output": 14.0}, "GPT-4O-MINI": {"output": 0.5}})
    assert updated.get("claude-sonnet-4").output == 14.0  # type: ignore[union-attr]
    assert updated.get("gpt-4o-mini").output == 0.5  # type: ignore[union-attr]
    assert len(updated) == len(catalog)


def test_override_of_a_snapshot_adds_an_entry(catalog: PriceCatalog) -> None:
    updated = catalog.with_overrides({"gpt-4o-2024-08-06": {"input": 2.0}})
    snapshot = updated.get("gpt-4o-2024-08-06")
    assert snapshot is not None and snapshot.model == "gpt-4o-2024-08-06"
    assert (snapshot.input, snapshot.output, snapshot.provider) == (2.0, 10.0, "openai")
    assert updated.get("gpt-4o").input == 2.5  # type: ignore[union-attr]
    assert len(updated) == len(catalog) + 1


def test_override_adds_new_models(catalog: PriceCatalog) -> None:
    updated = catalog.with_overrides(
        {
            "acme/tiny": {"input": "0.5", "output": 1, "context_window": 32000, "aliases": ["tiny"]},
            "house-model": {"input": 0, "output": 0, "as_of": dt.date(2026, 1, 2)},
        }
    )
    tiny = updated.get("tiny")
    assert tiny is not None and tiny.model == "acme/tiny"
    assert (tiny.provider, tiny.input, tiny.output, tiny.context_window) == ("acme", 0.5, 1.0, 32000)
    house = updated.get("house-model")
    assert house is not None and (house.provider, house.as_of) == ("custom", "2026-01-02")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"new-model": {"input": 1.0}}, r"prices\['new-model'\].*output.*required"),
        ({"new-model": {}}, r"input and output required"),
        ({"gpt-4o": {"inptu": 1.0}}, r"unknown field.*'inptu'"),
        ({"gpt-4o": {"input": -1}}, r"gpt-4o.*input.*≥ 0"),
        ({"gpt-4o": {"input": True}}, r"input: expected a number"),
        ({"gpt-4o": {"input": "cheap"}}, r"input: expected a number"),
        ({"gpt-4o": {"input": None}}, r"input: required"),
        ({"gpt-4o": {"input": float("nan")}}, r"finite"),
        ({"gpt-4o": {"context_window": 0}}, r"context_window.*> 0"),
        ({"gpt-4o": {"context_window": 1.5}}, r"context_window"),
        ({"gpt-4o": {"kind": "image"}}, r"kind: expected one of chat, embeddings"),
        ({"gpt-4o": {"as_of": "last week"}}, r"as_of: expected a date"),
        ({"gpt-4o": {"aliases": "gpt-4-omni"}}, r"aliases: expected a list"),
        ({"gpt-4o": {"model": "gpt-4p"}}, r"may not rename"),
        ({"gpt-4o": 2.5}, r"expected a mapping"),
        ({"my-model": {"input": 1, "output": 1, "aliases": ["gpt-4o-mini"]}}, r"'gpt-4o-mini' names both"),
    ],
)
def test_bad_overrides_are_explained(catalog: PriceCatalog, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        catalog.with_overrides(overrides)


def test_no_overrides_returns_the_same_catalog(catalog: PriceCatalog) -> None:
    assert catalog.with_overrides({}) is catalog


def test_from_yaml_reports_structure_errors() -> None:
    with pytest.raises(ValueError, match="providers"):
        PriceCatalog.from_yaml("models: {}")
    with pytest.raises(ValueError, match=r"providers.acme.models.m: 'output' is required"):
        PriceCatalog.from_yaml("providers: {acme: {models: {m: {input: 1}}}}")
    catalog = PriceCatalog.from_yaml(
        "providers: {acme: {source: 'https://acme.test/p', as_of: 2025-01-02, models: {m: {input: 1, output: 2}}}}"
    )
    assert catalog.get("m") == ModelPrice("m", "acme", 1.0, 2.0, source="https://acme.test/p", as_of="2025-01-02")


# -- cost ---------------------------------------------------------------------------------

PRICE = ModelPrice(
    "m", "x", input=2.0, output=10.0, cached_input=0.2, cache_write=2.5, cache_write_1h=4.0,
    batch_input=1.0, batch_output=5.0,
)  # fmt: skip
BARE = ModelPrice("bare", "x", input=2.0, output=10.0)


def test_cost_of_plain_usage() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000)
    assert cost_usd(PRICE, usage) == pytest.approx(2.0 + 5.0)
    assert cost_usd(PRICE, Usage()) == 0.0


def test_cost_splits_cache_reads_and_writes() -> None:
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000,
        cached_tokens=400_000,
        cache_write_tokens=100_000,
        cache_write_1h_tokens=200_000,
    )
    expected = (300_000 * 2.0 + 400_000 * 0.2 + 100_000 * 2.5 + 200_000 * 4.0 + 1_000 * 10.0) / 1e6
    assert cost_usd(PRICE, usage) == pytest.approx(expected)


def test_cost_falls_back_to_input_price_for_cache_items() -> None:
    usage = Usage(
        input_tokens=1_000_000, cached_tokens=400_000, cache_write_tokens=100_000, cache_write_1h_tokens=200_000
    )
    assert cost_usd(BARE, usage) == pytest.approx(2.0)
    only_5m = dataclasses.replace(BARE, cache_write=3.0)
    expected = (700_000 * 2.0 + 300_000 * 3.0) / 1e6  # 1-hour writes fall back to cache_write
    assert cost_usd(only_5m, usage) == pytest.approx(expected)


def test_batch_cost_uses_batch_prices_and_scales_cache_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_tokens=500_000, cache_write_tokens=100_000)
    expected = (400_000 * 1.0 + 500_000 * 0.1 + 100_000 * 1.25 + 1_000_000 * 5.0) / 1e6
    assert cost_usd(PRICE, usage, batch=True) == pytest.approx(expected)


def test_batch_without_batch_prices_charges_normal_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd(BARE, usage, batch=True) == cost_usd(BARE, usage) == pytest.approx(12.0)


def test_unknown_price_is_unknown_cost() -> None:
    assert cost_usd(None, Usage(input_tokens=10, output_tokens=10)) is None
    assert cost_usd(None, Usage(), batch=True) is None


def test_cost_with_real_catalog_entries(catalog: PriceCatalog) -> None:
    # Anthropic: 1,000 plain + 10,000 read + 2,000 written (5 min) prompt tokens, 500 out.
    usage = Usage.from_anthropic(
        {"input_tokens": 1_000, "cache_read_input_tokens": 10_000, "cache_creation_input_tokens": 2_000,
         "output_tokens": 500}
    )  # fmt: skip
    assert usage is not None
    sonnet = catalog.get("claude-sonnet-4-5-20250929")
    assert cost_usd(sonnet, usage) == pytest.approx((1_000 * 3 + 10_000 * 0.3 + 2_000 * 3.75 + 500 * 15) / 1e6)
    # Batch: everything at half, cache multipliers on top.
    assert cost_usd(sonnet, usage, batch=True) == pytest.approx(cost_usd(sonnet, usage) / 2)
    embedding = catalog.get("text-embedding-3-small")
    assert cost_usd(embedding, Usage(input_tokens=1_000_000)) == pytest.approx(0.02)
    assert cost_usd(catalog.get("local-smollm2"), Usage(input_tokens=500, output_tokens=50)) == 0.0


# -- `tokenomy prices` --------------------------------------------------------------------


def test_render_table(catalog: PriceCatalog) -> None:
    text = render_prices(catalog, "claude-*-4-5", "table")
    assert "claude-sonnet-4-5" in text and "claude-opus-4-5" in text
    assert "gpt-4o" not in text
    assert "6.25/10" in text and "200,000" in text  # cache writes 5m/1h, context window
    assert "\x1b[" not in text  # plain text, no colour codes


def test_render_table_without_matches(catalog: PriceCatalog) -> None:
    assert render_prices(catalog, "nothing-like-this", "table") == "No models match 'nothing-like-this'."


def test_render_json(catalog: PriceCatalog) -> None:
    entries = json.loads(render_prices(catalog, "gpt-4o-mini", "json"))
    assert [entry["model"] for entry in entries] == ["gpt-4o-mini"]
    assert entries[0]["input"] == 0.15 and entries[0]["source"].startswith("https://")
    assert json.loads(render_prices(catalog, "nothing-like-this", "json")) == []
    assert len(json.loads(render_prices(catalog, None, "json"))) == len(catalog)


def test_render_rejects_unknown_format(catalog: PriceCatalog) -> None:
    with pytest.raises(ValueError, match="table, json"):
        render_prices(catalog, None, "csv")
