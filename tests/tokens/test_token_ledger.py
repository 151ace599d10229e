"""Ledger columns of token policies: savings per technique, output-cap hits, prompt versions."""

from __future__ import annotations

from collections.abc import Callable

from tokenomy.store.ledger import LedgerRow
from tokenomy.store.sql_ledger import SQLLedger

MakeRow = Callable[..., LedgerRow]


async def test_savings_per_technique_are_aggregated_in_sql(ledger: SQLLedger, make_row: MakeRow) -> None:
    await ledger.write_many(
        [
            make_row(feature="chat", savings={"prune": {"tokens": 100, "usd": 0.5}, "prompt_cache": {"tokens": 10, "usd": 0.1}}),
            make_row(feature="chat", savings={"prune": {"tokens": 50, "usd": 0.25}}),
            make_row(feature="search", savings={"summarize": {"tokens": 900, "usd": None}}),
            make_row(feature="search"),
        ]
    )
    rows = await ledger.savings_summary("feature")
    got = {(r.group, r.technique): (r.requests, r.tokens, round(r.usd, 6)) for r in rows}
    assert got == {
        ("chat", "prune"): (2, 150, 0.75),
        ("chat", "prompt_cache"): (1, 10, 0.1),
        ("search", "summarize"): (1, 900, 0.0),
    }
    assert rows[0].technique == "prune"  # largest first
    by_tag = await ledger.savings_summary("tag")
    assert {(r.group, r.technique) for r in by_tag} == {("beta", "prune"), ("beta", "prompt_cache"), ("beta", "summarize")}


async def test_cap_hits_per_feature(ledger: SQLLedger, make_row: MakeRow) -> None:
    await ledger.write_many(
        [
            make_row(feature="chat", output_cap=256, finish_reason="length", output_tokens=256),
            make_row(feature="chat", output_cap=256, finish_reason="stop", output_tokens=100),
            make_row(feature="chat", output_cap=None, finish_reason="length", output_tokens=50),
            make_row(feature="search", output_cap=None, finish_reason="stop", output_tokens=10),
            make_row(feature="search", kind="embeddings", output_cap=None, finish_reason=None, output_tokens=0),
        ]
    )
    caps = {c.group: c for c in await ledger.caps_summary("feature")}
    assert caps["chat"].requests == 3 and caps["chat"].capped == 2 and caps["chat"].cap_hits == 1
    assert caps["chat"].hit_rate == 0.5 and caps["chat"].length_total == 2 and caps["chat"].max_cap == 256
    assert caps["search"].requests == 1 and caps["search"].hit_rate is None


async def test_spend_by_prompt_version(ledger: SQLLedger, make_row: MakeRow) -> None:
    await ledger.write_many(
        [
            make_row(prompt="support@1", input_tokens=500, cost_usd=0.001),
            make_row(prompt="support@2", input_tokens=2500, cost_usd=0.005),
            make_row(prompt="support@2", input_tokens=2500, cost_usd=0.005),
        ]
    )
    groups = {g.group: g for g in await ledger.spend_summary("prompt")}
    assert groups["support@2"].requests == 2 and groups["support@2"].input_tokens == 5000
    assert groups["support@1"].input_tokens == 500
    rows = await ledger.fetch()
    assert {r.prompt for r in rows} == {"support@1", "support@2"}


def test_cli_spend_shows_savings_per_technique_and_caps_shows_hits(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import json

    from typer.testing import CliRunner

    from tests.conftest import ledger_row
    from tokenomy.cli import app

    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def seed() -> None:
        ledger = SQLLedger(url)
        await ledger.start()
        await ledger.write_many(
            [
                ledger_row(feature="chat", savings={"summarize": {"tokens": 4000, "usd": 0.002}}, output_cap=256,
                           finish_reason="length"),
                ledger_row(feature="chat", savings={"prompt_cache": {"tokens": 900, "usd": 0.0008}}, output_cap=256,
                           finish_reason="stop"),
            ]
        )  # fmt: skip
        await ledger.aclose()

    asyncio.run(seed())
    monkeypatch.setenv("TOKENOMY_LEDGER__URL", url)
    runner = CliRunner()
    table = runner.invoke(app, ["spend", "--by", "feature"])
    assert table.exit_code == 0, table.output
    assert "Savings by technique" in table.output and "summarize" in table.output and "prompt_cache" in table.output
    document = json.loads(runner.invoke(app, ["spend", "--by", "feature", "--format", "json"]).output)
    assert {s["technique"] for s in document["savings_by_technique"]} == {"summarize", "prompt_cache"}
    csv_text = runner.invoke(app, ["spend", "--by", "feature", "--format", "csv"]).output
    assert csv_text.splitlines()[0].endswith("saved_usd_prompt_cache,saved_usd_summarize")
    caps = runner.invoke(app, ["caps", "--format", "json"])
    assert caps.exit_code == 0, caps.output
    group = json.loads(caps.output)["groups"][0]
    assert group["group"] == "chat" and group["capped"] == 2 and group["hit_rate"] == 0.5
    assert runner.invoke(app, ["caps", "--by", "colour"]).exit_code == 2
