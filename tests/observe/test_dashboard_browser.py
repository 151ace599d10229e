"""End to end: headless Chromium logs in to ``/dashboard`` and its charts show the ledger's numbers.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/test.sh`` installs
them) and Selenium. The screenshot is saved to ``$TOKENOMY_SCREENSHOT_DIR``
(default ``bench/out/``) as ``dashboard.png`` and ``dashboard-detail.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import GatewayServer
from tests.observe.dashboard_seed import dashboard_rows

KEY = "sk-dashboard-browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (apt-get install -y chromium chromium-driver)"),
]

SCREENSHOTS = Path(os.environ.get("TOKENOMY_SCREENSHOT_DIR", Path(__file__).resolve().parents[2] / "bench" / "out"))


@pytest.fixture
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="tokenomy-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,2200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_loaded(driver, timeout: float = 20) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body.dataset.loaded") in ("1", "error")
    )
    assert driver.execute_script("return document.body.dataset.loaded") == "1", driver.execute_script(
        "return window.tokenomyDashboard.error"
    )


def test_dashboard_renders_the_ledger_in_chromium(start_gateway: Callable[..., GatewayServer], browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    server = start_gateway(server={"master_key": KEY})
    rows = dashboard_rows()
    server.run_coro(server.gateway.ledger.write_many(rows))
    driver = browser

    driver.get(server.url + "/dashboard")
    driver.find_element(By.NAME, "key").send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_loaded(driver)

    # KPI tiles: the totals of the seeded ledger
    total_cost = sum(r.cost_usd for r in rows)
    assert driver.find_element(By.ID, "kpi-requests").text == f"{len(rows):,}"
    shown = driver.find_element(By.ID, "kpi-cost").text
    assert shown == f"${total_cost:.2f}", shown
    hits = sum(r.cache_status == "hit-exact" for r in rows)
    shown_rate = float(driver.find_element(By.ID, "kpi-cache").text.rstrip("%"))
    assert shown_rate == pytest.approx(100 * hits / len(rows), abs=0.051)

    # Charts: read the numbers Chart.js is drawing, compare with the ledger
    spend = driver.execute_script(
        "const c = Chart.getChart('chart-spend');"
        "return c.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]);"
    )
    per_model: dict[str, float] = defaultdict(float)
    for row in rows:
        per_model[row.model_served] += row.cost_usd
    assert {label: pytest.approx(value) for label, value in spend} == {k: pytest.approx(v) for k, v in per_model.items()}
    assert all(value > 0 for _, value in spend)

    breakdown = driver.execute_script(
        "const c = Chart.getChart('chart-breakdown'); return [c.data.labels, c.data.datasets[0].data];"
    )
    per_team: dict[str, float] = defaultdict(float)
    for row in rows:
        per_team[row.team] += row.cost_usd
    assert dict(zip(*breakdown)) == {k: pytest.approx(v) for k, v in per_team.items()}

    savings = driver.execute_script(
        "const c = Chart.getChart('chart-savings'); return Object.fromEntries(c.data.labels.map((l, i) => [l, c.data.datasets[0].data[i]]));"
    )
    assert savings["routing"] == pytest.approx(
        sum(r.baseline_usd - r.cost_usd for r in rows if r.model_served != r.model_asked and r.cache_status != "hit-exact")
    )
    assert savings["routing"] > 0
    assert savings["tokens: prune"] == pytest.approx(sum(r.savings["prune"]["usd"] for r in rows if r.savings))
    # the canvas really has pixels drawn on it, not just data
    painted = driver.execute_script(
        "const c = document.getElementById('chart-spend'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
    )
    assert painted > 1000

    # budgets are hidden: no budgets table in this ledger
    assert not driver.find_element(By.ID, "budgets-card").is_displayed()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / "dashboard.png"))

    # most expensive request → detail view with its CostTrace
    first = driver.find_element(By.CSS_SELECTOR, "#requests-table tbody tr")
    most_expensive = max(rows, key=lambda r: r.cost_usd)
    assert first.get_attribute("data-request-id") == most_expensive.request_id
    first.click()
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "detail").is_displayed()
                                    and d.find_elements(By.CSS_SELECTOR, "#detail-items tbody tr"))
    assert driver.find_element(By.ID, "detail-id").text == most_expensive.request_id
    item = driver.find_element(By.CSS_SELECTOR, "#detail-items tbody tr").text
    assert "generation" in item and most_expensive.model_served in item
    driver.save_screenshot(str(SCREENSHOTS / "dashboard-detail.png"))
    driver.find_element(By.CSS_SELECTOR, "#detail .close").click()

    # filter by team: the numbers follow
    Select(driver.find_element(By.ID, "filter-dim")).select_by_value("team")
    Select(driver.find_element(By.ID, "filter-value")).select_by_value("support")
    driver.find_element(By.ID, "add-filter").click()
    wait_loaded(driver)
    support = [r for r in rows if r.team == "support"]
    assert driver.find_element(By.ID, "kpi-requests").text == f"{len(support):,}"
    assert "team=support" in driver.find_element(By.ID, "filters").text
