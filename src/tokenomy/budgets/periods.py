"""Budget periods: which window a moment falls in, when it resets, and what its counter is called.

A period turns "now" into a ``Window``: the bucket id that names the counter
(so a new day, week or month simply starts a new counter — nothing has to be
reset at midnight, which would race with requests across replicas), the
moment it resets, and how long the counter must outlive it.

Calendar periods (daily, weekly from Monday, monthly) are aligned in a time zone
(``Europe/Paris`` budgets reset at Paris midnight, including across DST changes).
A rolling window of ``seconds`` is split into ``ROLLING_SLOTS`` slots (or as many
as asked: rate limits use six ten-second slots of a minute); the spend
in the window is the sum of the slots that overlap it, so old spend slides out
one slot at a time. Lifetime never resets.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("daily", "weekly", "monthly", "rolling", "lifetime")
#: A rolling window is summed over this many slots (precision: window / slots).
ROLLING_SLOTS = 12
#: Counters outlive their period by this much (late settles, reports, reconciliation).
GRACE_S = 2 * 86400

_UTC = dt.timezone.utc

_PERIOD_WORDS = {
    "day": "daily",
    "daily": "daily",
    "d": "daily",
    "week": "weekly",
    "weekly": "weekly",
    "w": "weekly",
    "month": "monthly",
    "monthly": "monthly",
    "mo": "monthly",
    "lifetime": "lifetime",
    "total": "lifetime",
}
_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Window:
    """The counters a limit reads at one moment, and when the period resets.

    ``bucket`` is the slot new spend is added to; ``buckets`` are all the slots
    whose sum is the spend in the window (just ``(bucket,)`` except for rolling
    windows). ``reset_at`` is epoch seconds (``None``: never, for lifetime).
    """

    bucket: str
    buckets: tuple[str, ...]
    reset_at: float | None
    ttl_s: int  # how long the newest counter must live (0: forever)


@lru_cache(maxsize=64)
def zone(name: str) -> dt.tzinfo:
    """A time zone by IANA name; ``ValueError`` if unknown."""
    if name.upper() == "UTC":
        return _UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


_CACHE: dict[tuple[str, str, int | None, int], tuple[float, float, Window]] = {}


def window(period: str, now: float, tz: str = "UTC", seconds: int | None = None, slots: int = ROLLING_SLOTS) -> Window:
    """The window of ``period`` containing epoch ``now``.

    Memoized per (period, zone, length) while ``now`` stays inside the window
    found last: it is asked for on every request and changes once a slot or a
    period. (The cached ``ttl_s`` is the one computed at the window's first use,
    a little longer than needed later on, never shorter.)
    """
    key = (period, tz, seconds, slots)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] <= now < hit[1]:
        return hit[2]
    found = _window(period, now, tz, seconds, slots)
    # valid from now (a moment known to be inside it) until it resets
    until = found.reset_at if found.reset_at is not None else float("inf")
    if len(_CACHE) > 1024:
        _CACHE.clear()
    _CACHE[key] = (now, until, found)
    return found


def _window(period: str, now: float, tz: str, seconds: int | None, slots: int) -> Window:
    if period == "lifetime":
        return Window("all", ("all",), None, 0)
    if period == "rolling":
        if not seconds or seconds <= 0:
            raise ValueError("a rolling window needs a positive length in seconds")
        slot = max(1, -(-seconds // slots))  # ceil: slots * slot covers the window
        index = int(now // slot)
        count = -(-seconds // slot)
        buckets = tuple(f"r{slot}.{index - i}" for i in range(count))
        # the oldest slot leaves the window when the current one ends
        return Window(buckets[0], buckets, float((index + 1) * slot), int(seconds + slot + GRACE_S))
    local = dt.datetime.fromtimestamp(now, zone(tz))
    if period == "daily":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = _midnight(start.date() + dt.timedelta(days=1), local.tzinfo)
        bucket = "d" + start.strftime("%Y%m%d")
    elif period == "weekly":
        monday = local.date() - dt.timedelta(days=local.weekday())
        end = _midnight(monday + dt.timedelta(days=7), local.tzinfo)
        bucket = "w" + monday.strftime("%Y%m%d")
    elif period == "monthly":
        first = local.date().replace(day=1)
        following = (first + dt.timedelta(days=32)).replace(day=1)
        end = _midnight(following, local.tzinfo)
        bucket = "m" + first.strftime("%Y%m")
    else:
        raise ValueError(f"unknown period {period!r}; choose one of {', '.join(PERIODS)}")
    reset_at = end.timestamp()
    return Window(bucket, (bucket,), reset_at, int(reset_at - now) + GRACE_S)


def period_start(period: str, now: float, tz: str = "UTC", seconds: int | None = None) -> float | None:
    """When the window containing ``now`` began (epoch seconds; ``None`` for lifetime).

    For a rolling window: ``now - seconds`` (what the ledger should be summed over).
    """
    if period == "lifetime":
        return None
    if period == "rolling":
        return now - float(seconds or 0)
    local = dt.datetime.fromtimestamp(now, zone(tz))
    if period == "daily":
        day = local.date()
    elif period == "weekly":
        day = local.date() - dt.timedelta(days=local.weekday())
    elif period == "monthly":
        day = local.date().replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return _midnight(day, local.tzinfo).timestamp()


def _midnight(day: dt.date, tzinfo: dt.tzinfo | None) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tzinfo)


def parse_amount_period(text: str) -> tuple[float, str, int | None]:
    """Parse the CLI's ``200/month``, ``5/day``, ``50/24h`` (rolling), ``1000`` (lifetime).

    Returns ``(amount_usd, period, rolling_seconds)``.
    """
    raw = text.strip().lstrip("$")
    amount_text, _, period_text = raw.partition("/")
    try:
        amount = float(amount_text)
    except ValueError:
        raise ValueError(f"budget {text!r}: the amount must be a number, e.g. 200/month") from None
    if amount < 0:
        raise ValueError(f"budget {text!r}: the amount must not be negative")
    period_text = period_text.strip().lower()
    if not period_text:
        return amount, "lifetime", None
    if period_text in _PERIOD_WORDS:
        return amount, _PERIOD_WORDS[period_text], None
    match = _DURATION.match(period_text)
    if match:
        return amount, "rolling", int(match.group(1)) * _UNIT_S[match.group(2)]
    raise ValueError(f"budget {text!r}: unknown period {period_text!r} (day, week, month, lifetime, or 24h/7d/30m)")


def format_reset(reset_at: float | None) -> str:
    """A reset moment for messages and headers: ISO-8601 UTC, or ``never``."""
    if reset_at is None:
        return "never"
    return dt.datetime.fromtimestamp(reset_at, _UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
