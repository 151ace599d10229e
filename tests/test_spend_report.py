"""The spend report: time windows, the three formats, and the whole command."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tokenomy.config import LedgerSettings
from tokenomy.observe.spend_report import parse_since, render_spend, spend_command
from tokenomy.store.ledger import NO_GROUP, LedgerRow, SpendGroup
from tokenomy.store.sql_ledger import SQLLedger

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)

GROUPS = [
    SpendGroup("search", requests=1200, input_tokens=1_500_000, output_tokens=300_000, cost_usd=12.5,
               baseline_usd=40.25, savings_usd=27.75, unknown_cost_count=0),
    SpendGroup(NO_GROUP, requests=30, input_tokens=4_000, output_tokens=1_000, cost_usd=0.125,
               baseline_usd=0.5, savings_usd=0.375, unknown_cost_count=2),
]  # fmt: skip


# --- parse_since --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30m", dt.timedelta(minutes=30)),
        ("24h", dt.timedelta(hours=24)),
        ("7d", dt.timedelta(days=7)),
        ("2w", dt.timedelta(weeks=2)),
        ("90s", dt.timedelta(seconds=90)),
        (" 1.5h ", dt.timedelta(minutes=90)),
        ("7D", dt.timedelta(days=7)),
    ],
)
def test_relative_durations(text: str, ago: dt.timedelta) -> None:
    assert parse_since(text, now=NOW) == NOW - ago


def test_relative_durations_default_to_now() -> None:
    since = parse_since("1h")
    assert since.tzinfo == UTC
    assert abs((dt.datetime.now(UTC) - since) - dt.timedelta(hours=1)) < dt.timedelta(seconds=5)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-01-01", dt.datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T12:30", dt.datetime(2026, 1, 1, 12, 30, tzinfo=UTC)),
        ("2026-01-01 12:30:05", dt.datetime(2026, 1, 1, 12, 30, 5, tzinfo=UTC)),
        ("2026-01-01T12:00+02:00", dt.datetime(2026, 1, 1, 10, 0, tzinfo=UTC)),
        ("2026-01-01T12:00Z", dt.datetime(2026, 1, 1, 12, 0, tzinfo=UTC)),
    ],
)
def test_absolute_dates_are_utc(text: str, moment: dt.datetime) -> None:
    result = parse_since(text)
    assert result == moment and result.tzinfo == UTC


@pytest.mark.parametrize("text", ["", "7", "d7", "7 days", "yesterday", "2026-13-01", "-3d"])
def test_bad_times_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="7d"):
        parse_since(text)


# --- render_spend ---------------------------------------------------------------------


def test_table_has_groups_and_a_totals_row() -> None:
    text = render_spend(GROUPS, "table", "team")
    lines = text.splitlines()
    assert "Spend by team" in lines[0]
    assert any("search" in line and "1,200" in line and "$12.5000" in line and "$27.7500" in line for line in lines)
    assert any(NO_GROUP in line for line in lines)
    total = next(line for line in lines if "Total" in line)
    for cell in ("1,230", "1,504,000", "301,000", "$12.6250", "$40.7500", "$28.1250"):
        assert cell in total
    assert "2 requests have no known price" in text
    assert all(line == line.rstrip() for line in lines)


def test_table_of_nothing_says_so() -> None:
    text = render_spend([], "table", "model")
    assert "No calls recorded" in text and "Total" in text


def test_tag_table_warns_that_totals_double_count() -> None:
    assert "several tags counts in each" in render_spend(GROUPS, "table", "tag")


def test_json_has_groups_and_totals() -> None:
    document = json.loads(render_spend(GROUPS, "json", "team"))
    assert document["by"] == "team"
    assert document["groups"][0] == GROUPS[0].as_dict()
    assert document["totals"]["requests"] == 1230
    assert document["totals"]["cost_usd"] == pytest.approx(12.625)
    assert document["totals"]["unknown_cost_count"] == 2


def test_csv_is_one_row_per_group_with_a_header() -> None:
    rows = list(csv.DictReader(io.StringIO(render_spend(GROUPS, "csv", "customer"))))
    assert [row["customer"] for row in rows] == ["search", NO_GROUP]
    assert float(rows[0]["cost_usd"]) == 12.5 and int(rows[1]["unknown_cost_count"]) == 2
    assert list(rows[0]) == [
        "customer", "requests", "input_tokens", "output_tokens",
        "cost_usd", "baseline_usd", "savings_usd", "unknown_cost_count",
    ]  # fmt: skip


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="table, json, csv"):
        render_spend(GROUPS, "xml", "team")


# --- spend_command ----------------------------------------------------------------------


async def test_spend_command_end_to_end(tmp_path: Path, make_row: Callable[..., LedgerRow]) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    store = SQLLedger(url)
    await store.start()
    now = dt.datetime.now(UTC)
    await store.write_many(
        [
            make_row(team="search", created_at=now - dt.timedelta(hours=1), cost_usd=1.0, baseline_usd=3.0),
            make_row(team="search", created_at=now - dt.timedelta(hours=2), cost_usd=2.0, baseline_usd=3.0),
            make_row(team=None, created_at=now - dt.timedelta(hours=3), cost_usd=None, baseline_usd=1.0),
            make_row(team="old", created_at=now - dt.timedelta(days=30), cost_usd=100.0, baseline_usd=100.0),
        ]
    )
    await store.aclose()
    settings = LedgerSettings(url=url)

    document = json.loads(await spend_command(settings, "team", "7d", "json"))
    groups = {group["group"]: group for group in document["groups"]}
    assert set(groups) == {"search", NO_GROUP}
    assert groups["search"]["cost_usd"] == pytest.approx(3.0)
    assert groups["search"]["savings_usd"] == pytest.approx(3.0)
    assert groups[NO_GROUP]["unknown_cost_count"] == 1

    table = await spend_command(settings, "team", None, "table")  # no window: all time
    assert "old" in table and "$103.0000" in table

    window = await spend_command(settings, "team", now - dt.timedelta(days=40), "csv", until="1d")
    assert [row["team"] for row in csv.DictReader(io.StringIO(window))] == ["old"]


@pytest.mark.parametrize(("by", "fmt", "message"), [("colour", "table", "team"), ("team", "xml", "csv")])
async def test_spend_command_checks_arguments_before_touching_the_database(
    tmp_path: Path, by: str, fmt: str, message: str
) -> None:
    settings = LedgerSettings(url=f"sqlite:///{tmp_path}/never/ledger.db")
    with pytest.raises(ValueError, match=message):
        await spend_command(settings, by, "7d", fmt)
    assert not (tmp_path / "never").exists()
