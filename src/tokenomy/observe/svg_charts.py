"""Small inline-SVG charts for the self-contained HTML report (no JavaScript, no network).

Each function returns an ``<svg>`` string sized in CSS pixels; every bar carries
a ``<title>`` (hover tooltip) and a ``data-value`` attribute with the exact
number, so tests and curious readers can check what is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#2f6fde", "#e8743b", "#19a979", "#ed4a7b", "#945ecf", "#13a4b4", "#525df4", "#bf399e", "#6c8893", "#ee6868")


def _money(value: float) -> str:
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:,.4f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def stacked_bars(labels: Sequence[str], series: dict[str, Sequence[float]], *, width: int = 860, height: int = 280) -> str:
    """Vertical bars per label, stacked by series (spend over time by model)."""
    left, bottom, top, right = 64, 40, 28, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = _nice_max(max(totals, default=0.0))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img">']
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e3e6ec"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_money(peak * k / 4)}</text>')
    n = max(len(labels), 1)
    slot = plot_w / n
    bar = max(min(slot * 0.7, 40), 1)
    every = max(1, n // 12)
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for j, (name, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}" '
                f'data-series="{escape(name)}" data-value="{value:.8f}"><title>{escape(label)} · {escape(name)}: '
                f"{_money(value)}</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="11">{escape(label)}</text>'
            )
    x = left
    for j, name in enumerate(series):
        parts.append(f'<rect x="{x}" y="6" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="15" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def horizontal_bars(rows: Sequence[tuple[str, float, float | None]], *, width: int = 560, row_height: int = 22) -> str:
    """One bar per row (label, value, optional baseline drawn behind it in grey)."""
    left, right = 150, 90
    height = row_height * max(len(rows), 1) + 8
    peak = max((max(value, baseline or 0.0) for _, value, baseline in rows), default=0.0) or 1.0
    plot_w = width - left - right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart" role="img">']
    for i, (label, value, baseline) in enumerate(rows):
        y = 4 + i * row_height
        short = label if len(label) <= 22 else label[:21] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" font-size="12">{escape(short)}</text>')
        if baseline:
            parts.append(f'<rect x="{left}" y="{y + 2}" width="{plot_w * baseline / peak:.1f}" height="{row_height - 6}" '
                         f'fill="#d5d9e2"><title>baseline {_money(baseline)}</title></rect>')
        parts.append(
            f'<rect x="{left}" y="{y + 2}" width="{max(plot_w * value / peak, 0):.1f}" height="{row_height - 6}" '
            f'fill="#2f6fde" data-label="{escape(label)}" data-value="{value:.8f}"><title>{escape(label)}: '
            f"{_money(value)}</title></rect>"
        )
        parts.append(f'<text x="{width - right + 6}" y="{y + 14}" font-size="12">{_money(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)
