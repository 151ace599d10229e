"""``tokenomy report``: where the money went, as text or as one self-contained HTML file.

The numbers come from the same SQL aggregates as the dashboard
(``DashboardQueries``); the HTML embeds its charts as inline SVG and its CSS in
a ``<style>`` block, so the file opens anywhere, offline, and can be mailed.

    $ tokenomy report --since 30d
    $ tokenomy report --since 2026-01-01 --html spend.html
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from html import escape
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenomy.config import LedgerSettings
from tokenomy.observe.spend_report import parse_since
from tokenomy.observe.svg_charts import horizontal_bars, stacked_bars
from tokenomy.store.budget_view import budget_status
from tokenomy.store.dashboard_queries import DashboardQueries, Query
from tokenomy.store.ledger_factory import make_ledger
from tokenomy.store.sql_ledger import SQLLedger

BREAKDOWNS = ("team", "feature", "model", "customer", "endpoint", "tag", "traffic_class")


@dataclass
class ReportData:
    since: dt.datetime | None
    generated: dt.datetime
    summary: dict[str, Any]
    series: dict[str, Any]
    breakdowns: dict[str, list[dict[str, Any]]]
    savings: list[dict[str, Any]]
    token_savings: list[dict[str, Any]] | None
    routes: list[dict[str, Any]]
    top: list[dict[str, Any]]
    budgets: list[dict[str, Any]] | None


async def collect(queries: DashboardQueries, since: dt.datetime | None, top: int = 10) -> ReportData:
    query = Query(since, None)
    return ReportData(
        since=since,
        generated=dt.datetime.now(dt.timezone.utc),
        summary=await queries.summary(query),
        series=await queries.timeseries(query, "model", "day"),
        breakdowns={by: await queries.breakdown(query, by, limit=top) for by in BREAKDOWNS},
        savings=await queries.savings(query),
        token_savings=await queries.token_savings(query),
        routes=await queries.routing(query, limit=top),
        top=await queries.requests(query, "cost", limit=top),
        budgets=await budget_status(queries),
    )


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.4f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def render_text(data: ReportData, width: int = 110) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, emoji=False)
    s = data.summary
    window = f"since {data.since:%Y-%m-%d %H:%M} UTC" if data.since else "all time"
    console.print(f"Tokenomy spend report, {window}")
    console.print(
        f"Spend {_usd(s['cost_usd'])} · baseline {_usd(s['baseline_usd'])} · saved {_usd(s['savings_usd'])} "
        f"({_pct(s['savings_usd'], s['baseline_usd'])}) · {s['requests']:,} requests · "
        f"cache hit rate {_pct(s['cache_hits'], s['cache_lookups'])} · {s['routed']:,} routed · {s['errors']:,} errors"
    )
    for by, groups in data.breakdowns.items():
        table = Table(title=f"By {by}", title_justify="left")
        for column in (by, "Requests", "Cost", "Baseline", "Saved"):
            table.add_column(column, justify="left" if column == by else "right")
        for g in groups:
            table.add_row(g["group"], f"{g['requests']:,}", _usd(g["cost_usd"]), _usd(g["baseline_usd"]),
                          _usd(g["savings_usd"]))
        console.print(table)
    table = Table(title="Savings per technique", title_justify="left")
    for column in ("Technique", "Requests", "Saved"):
        table.add_column(column)
    for t in data.savings:
        table.add_row(t["technique"], f"{t['requests']:,}", _usd(t["savings_usd"]))
    console.print(table)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}.muted{color:#6b7385}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:16px 0}
.kpi{border:1px solid #e3e6ec;border-radius:8px;padding:10px 12px}.kpi b{display:block;font-size:20px}
.kpi span{color:#6b7385;font-size:12px}.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:4px 6px;border-bottom:1px solid #e3e6ec;text-align:right}
th:first-child,td:first-child{text-align:left}svg text{fill:#1d2330;font-family:inherit}
@media (max-width:900px){.grid{grid-template-columns:1fr}}
"""


def render_html(data: ReportData) -> str:
    s = data.summary
    window = f"since {data.since:%Y-%m-%d %H:%M} UTC" if data.since else "all time"
    kpis = [
        ("Spend", _usd(s["cost_usd"])), ("Baseline", _usd(s["baseline_usd"])),
        ("Saved", f"{_usd(s['savings_usd'])} ({_pct(s['savings_usd'], s['baseline_usd'])})"),
        ("Requests", f"{s['requests']:,}"), ("Cache hit rate", _pct(s["cache_hits"], s["cache_lookups"])),
        ("Routed", f"{s['routed']:,}"), ("Errors", f"{s['errors']:,}"), ("Unpriced", f"{s['unknown_cost_count']:,}"),
    ]
    out = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tokenomy spend report</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Tokenomy spend report</h1><p class=\"muted\">{escape(window)} · generated "
        f"{data.generated:%Y-%m-%d %H:%M} UTC</p>",
        '<div class="kpis">' + "".join(f'<div class="kpi" id="kpi-{escape(name.lower().replace(" ", "-"))}"><span>'
                                       f"{escape(name)}</span><b>{escape(value)}</b></div>" for name, value in kpis)
        + "</div>",
    ]
    series = data.series
    labels = [b["t"][:10] for b in series["buckets"]]
    by_model = {g: [b["groups"].get(g, {}).get("cost_usd", 0.0) for b in series["buckets"]] for g in series["groups"]}
    out.append("<h2>Spend per day, by model</h2>" + stacked_bars(labels, by_model))
    savings_rows = [(t["technique"], t["savings_usd"], None) for t in data.savings]
    savings_rows += [(f"tokens: {t['technique']}", t["savings_usd"], None) for t in data.token_savings or []]
    out.append('<div class="grid"><div><h2>Savings per technique</h2>' + horizontal_bars(savings_rows) + "</div>")
    routes = "".join(
        f"<tr><td>{escape(r['model_asked'])} → {escape(r['model_served'])}</td><td>{r['requests']:,}</td>"
        f"<td>{_usd(r['cost_usd'])}</td><td>{_usd(r['savings_usd'])}</td></tr>" for r in data.routes
    )
    out.append("<div><h2>Routing decisions</h2><table><tr><th>Route</th><th>Requests</th><th>Cost</th><th>Saved</th></tr>"
               f"{routes}</table></div></div>")
    out.append('<div class="grid">')
    for by, groups in data.breakdowns.items():
        rows = [(g["group"], g["cost_usd"], g["baseline_usd"]) for g in groups]
        out.append(f'<div id="by-{by}"><h2>By {escape(by.replace("_", " "))} <span class="muted">(cost; baseline in grey)'
                   f"</span></h2>{horizontal_bars(rows)}</div>")
    out.append("</div>")
    if data.budgets:
        rows_html = "".join(
            f"<tr><td>{escape(str(b.get('scope')))} {escape(str(b.get('value')))}</td><td>{escape(str(b.get('period')))}</td>"
            f"<td>{_usd(b.get('amount_usd'))}</td><td>{_usd(b.get('spent_usd'))}</td>"
            f"<td>{escape(str(b.get('projected_exhaustion') or 'not this period'))}</td></tr>" for b in data.budgets
        )
        out.append("<h2>Budgets</h2><table><tr><th>Scope</th><th>Period</th><th>Budget</th><th>Spent</th>"
                   f"<th>Runs out</th></tr>{rows_html}</table>")
    top = "".join(
        f"<tr><td>{escape(r['created_at'][:19].replace('T', ' '))}</td><td>{escape(r['request_id'])}</td>"
        f"<td>{escape(r['model_asked'])} → {escape(str(r['model_served']))}</td><td>{escape(str(r['team'] or '–'))}</td>"
        f"<td>{escape(str(r['feature'] or '–'))}</td><td>{_usd(r['cost_usd'])}</td><td>{_usd(r['baseline_usd'])}</td></tr>"
        for r in data.top
    )
    out.append("<h2>Most expensive requests</h2><table><tr><th>When</th><th>Request</th><th>Model</th><th>Team</th>"
               f"<th>Feature</th><th>Cost</th><th>Baseline</th></tr>{top}</table>")
    out.append('<p class="muted">A call\'s savings count for the first that applies: cache hit, routed to another '
               "model, batch traffic; “other” is pruning and prompt-cache discounts.</p></body></html>")
    return "\n".join(out)


async def report_command(settings: LedgerSettings, since: str | None, html: bool) -> str:
    """Everything behind ``tokenomy report``: the text report, or the HTML document."""
    start = parse_since(since) if since else None
    ledger = make_ledger(settings)
    if not isinstance(ledger, SQLLedger):
        raise ValueError("tokenomy report needs the SQL ledger")
    await ledger.start()
    try:
        data = await collect(DashboardQueries(ledger), start)
    finally:
        await ledger.aclose()
    return render_html(data) if html else render_text(data)
