"""``tokenomy report``: text and a self-contained HTML file whose charts carry the ledger's numbers."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.observe.dashboard_seed import dashboard_rows
from tokenomy.cli import app
from tokenomy.store.sql_ledger import SQLLedger


@pytest.fixture
def seeded_url(tmp_path: Path) -> tuple[str, list]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    rows = dashboard_rows(200)

    async def seed() -> None:
        ledger = SQLLedger(url)
        await ledger.start()
        await ledger.write_many(rows)
        await ledger.aclose()

    asyncio.run(seed())
    return url, rows


def test_html_report_is_self_contained_with_real_numbers(
    seeded_url: tuple[str, list], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, rows = seeded_url
    monkeypatch.setenv("TOKENOMY_LEDGER__URL", url)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--since", "30d", "--html", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html
    # self-contained: no scripts, stylesheets or images fetched from anywhere
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<script" not in html
    total = sum(r.cost_usd for r in rows)
    assert f"${total:,.4f}" in html
    # the bars of the team chart carry each team's exact spend
    team_block = html[html.index('id="by-team"'):]
    team_block = team_block[: team_block.index("</svg>")]
    drawn = {m[0]: float(m[1]) for m in re.findall(r'data-label="([^"]+)" data-value="([0-9.]+)"', team_block)}
    per_team: dict[str, float] = defaultdict(float)
    for row in rows:
        per_team[row.team] += row.cost_usd
    assert drawn == {k: pytest.approx(v, abs=1e-7) for k, v in per_team.items()}
    daily = [float(v) for v in re.findall(r'data-series="[^"]+" data-value="([0-9.]+)"', html)]
    assert sum(daily) == pytest.approx(total, abs=1e-6)


def test_text_report(seeded_url: tuple[str, list], monkeypatch: pytest.MonkeyPatch) -> None:
    url, rows = seeded_url
    monkeypatch.setenv("TOKENOMY_LEDGER__URL", url)
    result = CliRunner().invoke(app, ["report", "--since", "all"])
    assert result.exit_code == 0, result.output
    assert f"{len(rows):,} requests" in result.output
    assert "By team" in result.output and "Savings per technique" in result.output
    bad = CliRunner().invoke(app, ["report", "--since", "someday"])
    assert bad.exit_code == 2 and "cannot read" in bad.output
