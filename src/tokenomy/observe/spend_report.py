"""``tokenomy spend``: who spent what, from the ledger, as a table, JSON or CSV.

The aggregation happens in the database (``Ledger.spend_summary``); this module
only parses the time window and renders the groups, so the CLI, the dashboard
and tests share one rendering.

    $ tokenomy spend --by team --since 7d
    $ tokenomy spend --by tag --since 2026-01-01 --format csv > tags.csv
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from tokenomy.config import LedgerSettings
from tokenomy.store.ledger import SPEND_DIMENSIONS, CapHits, SpendGroup, TechniqueSavings
from tokenomy.store.ledger_factory import make_ledger

FORMATS: tuple[str, ...] = ("table", "json", "csv")

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_FIELDS = ("requests", "input_tokens", "output_tokens", "cost_usd", "baseline_usd", "savings_usd", "unknown_cost_count")


def parse_since(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """The start of a report window, as an aware UTC datetime.

    Relative to now: ``30m``, ``24h``, ``7d``, ``2w`` (also ``90s``). Absolute:
    an ISO date (``2026-01-01``, midnight UTC) or datetime (``2026-01-01T12:00``,
    naive means UTC; an offset is honoured). Raises ``ValueError`` otherwise.
    """
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        now = now or dt.datetime.now(dt.timezone.utc)
        return now.astimezone(dt.timezone.utc) - dt.timedelta(seconds=amount * _UNIT_SECONDS[unit])
    try:
        if "T" not in text and " " not in text.strip():
            day = dt.date.fromisoformat(text.strip())
            return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: use a duration like 30m, 24h, 7d, 2w "
            "or a date like 2026-01-01 (UTC)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def totals(groups: Sequence[SpendGroup]) -> dict[str, Any]:
    """Column sums. For ``by="tag"`` a row with two tags counts in both groups, so
    these sums overstate the real totals; the renderers say so."""
    return {name: sum(getattr(group, name) for group in groups) for name in _FIELDS}


def render_spend(
    groups: Sequence[SpendGroup], fmt: str, by: str, savings: Sequence[TechniqueSavings] = ()
) -> str:
    """Render ``spend_summary`` groups as ``table`` (text), ``json`` or ``csv``.

    ``savings`` (from ``Ledger.savings_summary``) adds what each technique saved:
    a second table, a ``savings_by_technique`` list in JSON, and one
    ``saved_usd_<technique>`` column per technique in CSV.
    """
    if fmt == "table":
        text = _table(groups, by)
        return text + _savings_table(savings, by) if savings else text
    if fmt == "json":
        document: dict[str, Any] = {"by": by, "groups": [group.as_dict() for group in groups], "totals": totals(groups)}
        if savings:
            document["savings_by_technique"] = [entry.as_dict() for entry in savings]
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        techniques = sorted({entry.technique for entry in savings})
        saved = {(entry.group, entry.technique): entry.usd for entry in savings}
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([by, *_FIELDS, *(f"saved_usd_{t}" for t in techniques)])
        for group in groups:
            extra = [saved.get((group.group, t), 0.0) for t in techniques]
            writer.writerow([group.group, *(getattr(group, name) for name in _FIELDS), *extra])
        return out.getvalue()
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _savings_table(savings: Sequence[TechniqueSavings], by: str, width: int = 120) -> str:
    table = Table(title=f"Savings by technique and {by}", title_justify="left", show_footer=True)
    by_technique: dict[str, float] = {}
    for entry in savings:
        by_technique[entry.technique] = by_technique.get(entry.technique, 0.0) + entry.usd
    table.add_column(by, footer="Total")
    table.add_column("Technique", footer=", ".join(f"{t} {_usd(v)}" for t, v in sorted(by_technique.items())))
    table.add_column("Requests", justify="right")
    table.add_column("Tokens saved", justify="right")
    table.add_column("Saved", justify="right", footer=_usd(sum(by_technique.values())))
    for entry in savings:
        table.add_row(entry.group, entry.technique, f"{entry.requests:,}", f"{entry.tokens:,}", _usd(entry.usd))
    table.caption = (
        "Tokens: prompt tokens not sent (prompt_cache: read from the provider's cache). Saved: against the "
        "baseline, net of the technique's own cost (e.g. summaries); negative when a cache write was not read back."
    )
    table.caption_justify = "left"
    return _render(table, width)


def _render(table: Table, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, emoji=False)
    console.print(table)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    # Rich pads title and caption lines to the console width; trailing blanks only get in the way.
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


def _usd(value: float) -> str:
    return f"${value:,.4f}"


def _table(groups: Sequence[SpendGroup], by: str, width: int = 120) -> str:
    sums = totals(groups)
    table = Table(title=f"Spend by {by}", show_footer=True, title_justify="left")
    footer = {
        "requests": f"{sums['requests']:,}",
        "input_tokens": f"{sums['input_tokens']:,}",
        "output_tokens": f"{sums['output_tokens']:,}",
        "cost_usd": _usd(sums["cost_usd"]),
        "baseline_usd": _usd(sums["baseline_usd"]),
        "savings_usd": _usd(sums["savings_usd"]),
        "unknown_cost_count": f"{sums['unknown_cost_count']:,}",
    }
    table.add_column(by, footer="Total")
    titles = ("Requests", "Input tokens", "Output tokens", "Cost", "Baseline", "Savings", "Unpriced")
    for name, title in zip(_FIELDS, titles):
        table.add_column(title, footer=footer[name], justify="right")
    for group in groups:
        table.add_row(
            group.group,
            f"{group.requests:,}",
            f"{group.input_tokens:,}",
            f"{group.output_tokens:,}",
            _usd(group.cost_usd),
            _usd(group.baseline_usd),
            _usd(group.savings_usd),
            f"{group.unknown_cost_count:,}",
        )
    notes = []
    if not groups:
        notes.append("No calls recorded in this window.")
    if sums["unknown_cost_count"]:
        notes.append(f"{sums['unknown_cost_count']:,} requests have no known price: their cost is not in Cost.")
    if by == "tag":
        notes.append("A call with several tags counts in each, so totals may exceed the real spend.")
    table.caption = "\n".join(notes) or None
    table.caption_justify = "left"
    return _render(table, width)


async def spend_command(
    settings: LedgerSettings,
    by: str,
    since: str | dt.datetime | None,
    fmt: str = "table",
    until: str | dt.datetime | None = None,
) -> str:
    """Everything behind ``tokenomy spend``: open the ledger, aggregate, render.

    Arguments are checked before the database is touched, so a typo fails fast
    with a message naming the valid choices (``ValueError``).
    """
    if by not in SPEND_DIMENSIONS:
        raise ValueError(f"cannot group spend by {by!r}; choose one of {', '.join(SPEND_DIMENSIONS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    start = parse_since(since) if isinstance(since, str) else since
    end = parse_since(until) if isinstance(until, str) else until
    ledger = make_ledger(settings)
    await ledger.start()
    try:
        groups = await ledger.spend_summary(by, start, end)
        savings = await ledger.savings_summary(by, start, end)
    finally:
        await ledger.aclose()
    return render_spend(groups, fmt, by, savings)


async def caps_command(
    settings: LedgerSettings,
    by: str = "feature",
    since: str | dt.datetime | None = None,
    fmt: str = "table",
    until: str | dt.datetime | None = None,
) -> str:
    """Everything behind ``tokenomy caps``: how often answers hit their output limit, per group."""
    if by not in SPEND_DIMENSIONS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(SPEND_DIMENSIONS)}")
    if fmt not in ("table", "json"):
        raise ValueError(f"unknown format {fmt!r}; choose one of table, json")
    start = parse_since(since) if isinstance(since, str) else since
    end = parse_since(until) if isinstance(until, str) else until
    ledger = make_ledger(settings)
    await ledger.start()
    try:
        caps = await ledger.caps_summary(by, start, end)
    finally:
        await ledger.aclose()
    return render_caps(caps, fmt, by)


def render_caps(caps: Sequence[CapHits], fmt: str, by: str, width: int = 120) -> str:
    """Cap hits per group as a table or JSON."""
    if fmt == "json":
        return orjson.dumps({"by": by, "groups": [c.as_dict() for c in caps]}, option=orjson.OPT_INDENT_2).decode()
    table = Table(title=f"Output caps by {by}", title_justify="left")
    for title in (by, "Requests", "Capped", "Hit cap", "Hit rate", "Largest cap", "Any length stop", "Output/req"):
        table.add_column(title, justify="left" if title == by else "right")
    for c in caps:
        rate = "–" if c.hit_rate is None else f"{c.hit_rate:.1%}"
        table.add_row(
            c.group,
            f"{c.requests:,}",
            f"{c.capped:,}",
            f"{c.cap_hits:,}",
            rate,
            "–" if c.max_cap is None else f"{c.max_cap:,}",
            f"{c.length_total:,}",
            f"{c.output_tokens / c.requests:,.0f}" if c.requests else "–",
        )
    table.caption = (
        "Capped: calls whose max_tokens the gateway set or lowered. Hit cap: those that stopped at it "
        "(finish_reason length). A high hit rate means the cap cuts answers short: raise it."
        if caps
        else "No chat calls recorded in this window."
    )
    table.caption_justify = "left"
    return _render(table, width)
