"""Output of ``tokenomy prices [PATTERN] [--format table|json]``.

Rendering lives here, away from the Typer wiring in ``cli.py``, so it is a pure function
of the catalog that tests can call and other front ends (the dashboard) can reuse.
"""

from __future__ import annotations

import dataclasses
import io
import json

from rich.console import Console
from rich.table import Table

from tokenomy.pricing.catalog import ModelPrice, PriceCatalog

__all__ = ["FORMATS", "render_prices"]

FORMATS = ("table", "json")
_NONE = "-"


def render_prices(catalog: PriceCatalog, pattern: str | None, fmt: str, *, width: int = 160) -> str:
    """The entries of ``catalog`` matching ``pattern`` (see ``PriceCatalog.search``) as text.

    ``fmt="json"`` gives a JSON array of entries (every field; prices in USD per 1M
    tokens), ``"[]"`` when nothing matches. ``fmt="table"`` gives a plain-text Rich table
    ``width`` columns wide, or a one-line message when nothing matches.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
    prices = catalog.search(pattern)
    if fmt == "json":
        return json.dumps([_as_json(price) for price in prices], indent=2, ensure_ascii=False)
    if not prices:
        return f"No models match {pattern!r}." if pattern else "The price catalog is empty."
    return _table(prices, width)


def _as_json(price: ModelPrice) -> dict[str, object]:
    entry = dataclasses.asdict(price)
    entry["aliases"] = list(price.aliases)
    return entry


def _table(prices: list[ModelPrice], width: int) -> str:
    table = Table(
        title="Model prices (USD per 1M tokens)",
        caption="'-' = not charged separately (billed at the input price) or no batch discount known",
        header_style="bold",
    )
    table.add_column("Model", no_wrap=True)
    table.add_column("Provider", no_wrap=True)
    table.add_column("Input", justify="right")
    table.add_column("Output", justify="right")
    table.add_column("Cached", justify="right")
    table.add_column("Write 5m/1h", justify="right")
    table.add_column("Batch in/out", justify="right")
    table.add_column("Context", justify="right")
    table.add_column("Max out", justify="right")
    table.add_column("As of", no_wrap=True)
    for price in prices:
        table.add_row(
            price.model if price.kind == "chat" else f"{price.model} ({price.kind})",
            price.provider,
            _usd(price.input),
            _usd(price.output),
            _usd(price.cached_input),
            _pair(price.cache_write, price.cache_write_1h),
            _pair(price.batch_input, price.batch_output),
            _tokens(price.context_window),
            _tokens(price.max_output_tokens),
            price.as_of or _NONE,
        )
    buffer = io.StringIO()
    # A plain file console: no colour codes, fixed width, so the text is the same on any terminal.
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False)
    console.print(table)
    return buffer.getvalue().rstrip("\n")


def _usd(value: float | None) -> str:
    if value is None:
        return _NONE
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def _pair(first: float | None, second: float | None) -> str:
    if first is None and second is None:
        return _NONE
    return f"{_usd(first)}/{_usd(second)}"


def _tokens(value: int | None) -> str:
    return _NONE if value is None else f"{value:,}"
