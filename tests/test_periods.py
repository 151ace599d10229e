"""Budget periods: calendar-aligned in a time zone, rolling, lifetime; and the CLI's amount syntax."""

from __future__ import annotations

import datetime as dt

import pytest

from tokenomy.budgets.periods import parse_amount_period, window


def ts(text: str, tz: str = "UTC") -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def test_daily_resets_at_local_midnight() -> None:
    before = window("daily", ts("2026-03-07T23:59:59", "Europe/Paris"), "Europe/Paris")
    after = window("daily", ts("2026-03-08T00:00:00", "Europe/Paris"), "Europe/Paris")
    assert before.bucket != after.bucket
    assert before.reset_at == ts("2026-03-08T00:00:00", "Europe/Paris")


def test_daily_across_dst_change() -> None:
    # 2026-03-29 in Paris has 23 hours
    day = window("daily", ts("2026-03-29T12:00:00", "Europe/Paris"), "Europe/Paris")
    assert day.reset_at == ts("2026-03-30T00:00:00", "Europe/Paris")


def test_weekly_starts_monday_and_monthly_on_the_first() -> None:
    sunday = window("weekly", ts("2026-11-29T22:00:00"), "UTC")
    monday = window("weekly", ts("2026-11-30T01:00:00"), "UTC")
    assert sunday.bucket == "w20261123" and monday.bucket == "w20261130"
    dec = window("monthly", ts("2026-12-31T23:00:00", "America/New_York"), "America/New_York")
    assert dec.bucket == "m202612"
    assert dec.reset_at == ts("2027-01-01T00:00:00", "America/New_York")
    # the same instant is already January in UTC
    assert window("monthly", ts("2026-12-31T23:00:00", "America/New_York"), "UTC").bucket == "m202701"


def test_rolling_window_slides_slot_by_slot() -> None:
    now = 1_000_000.0
    w = window("rolling", now, seconds=3600)
    later = window("rolling", now + 300, seconds=3600)
    assert len(w.buckets) == 12 and w.bucket == w.buckets[0]
    assert later.buckets[1:] == w.buckets[:-1]  # one 5-minute slot in, one out
    assert set(window("rolling", now + 3900, seconds=3600).buckets).isdisjoint(w.buckets)  # all slid out


def test_lifetime_never_resets() -> None:
    assert window("lifetime", 0.0).reset_at is None
    assert window("lifetime", 1e10).bucket == window("lifetime", 0.0).bucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200/month", (200.0, "monthly", None)),
        ("$5/day", (5.0, "daily", None)),
        ("7.5/week", (7.5, "weekly", None)),
        ("50/24h", (50.0, "rolling", 86400)),
        ("10/30m", (10.0, "rolling", 1800)),
        ("1000", (1000.0, "lifetime", None)),
    ],
)
def test_parse_amount_period(text: str, expected: tuple) -> None:
    assert parse_amount_period(text) == expected


@pytest.mark.parametrize("text", ["lots/month", "5/fortnight", "-3/day"])
def test_parse_amount_period_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount_period(text)
