"""``/dashboard`` over HTTP: login, JSON answers from a seeded ledger, CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import httpx
import pytest

from tests.harness import GatewayServer
from tests.observe.dashboard_seed import dashboard_rows

KEY = "sk-admin-test"


@pytest.fixture
def seeded_gateway(start_gateway: Callable[..., GatewayServer]) -> tuple[GatewayServer, list]:
    server = start_gateway(server={"master_key": KEY})
    rows = dashboard_rows()
    server.run_coro(server.gateway.ledger.write_many(rows))
    return server, rows


def test_login_cookie_and_bearer(seeded_gateway: tuple[GatewayServer, list]) -> None:
    server, _ = seeded_gateway
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/dashboard")
        assert page.status_code == 401 and 'name="key"' in page.text
        assert client.get("/dashboard/api/summary").status_code == 401
        assert client.post("/dashboard/login", data={"key": "wrong"}).status_code == 401
        answer = client.post("/dashboard/login", data={"key": KEY})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("samesite", "SameSite") and KEY not in cookie
        assert client.get("/dashboard").status_code == 200
        assert client.get("/dashboard/api/summary").status_code == 200
        client.get("/dashboard/logout")
        assert client.get("/dashboard/api/summary").status_code == 401
    bearer = httpx.get(server.url + "/dashboard/api/summary", headers={"authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    # static assets (no data) are served from the package, never a CDN
    js = httpx.get(server.url + "/dashboard/static/vendor/chart.umd.min.js")
    assert js.status_code == 200 and "Chart.js" in js.text[:200]
    assert "cdn" not in httpx.get(server.url + "/dashboard", headers={"authorization": f"Bearer {KEY}"}).text.lower()


def test_api_answers_match_the_seeded_ledger(seeded_gateway: tuple[GatewayServer, list]) -> None:
    server, rows = seeded_gateway
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=auth) as client:
        summary = client.get("/dashboard/api/summary").json()
        assert summary["requests"] == len(rows)
        assert summary["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows))
        teams = {g["group"]: g for g in client.get("/dashboard/api/breakdown", params={"by": "team"}).json()["groups"]}
        assert teams["search"]["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows if r.team == "search"))
        filtered = client.get("/dashboard/api/summary", params={"team": "support", "customer": "cust-3"}).json()
        assert filtered["requests"] == sum(r.team == "support" and r.customer == "cust-3" for r in rows)
        exported = client.get("/dashboard/api/breakdown", params={"by": "customer", "format": "csv"})
        assert exported.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert sum(int(r["requests"]) for r in table) == len(rows)
        top = client.get("/dashboard/api/requests", params={"limit": 3}).json()["requests"]
        assert top[0]["cost_usd"] == max(r.cost_usd for r in rows)
        detail = client.get(f"/dashboard/api/requests/{top[0]['request_id']}").json()
        assert detail["cost_items"][0]["usd"] == top[0]["cost_usd"]
        assert client.get("/dashboard/api/requests/missing").status_code == 404
        assert client.get("/dashboard/api/breakdown", params={"by": "colour"}).status_code == 400
        assert client.get("/dashboard/api/summary", params={"since": "yesterday-ish"}).status_code == 400
        assert client.get("/dashboard/api/budgets").json() == {"budgets": None}
        series = client.get("/dashboard/api/timeseries", params={"by": "model", "step": "hour"}).json()
        total = sum(c["cost_usd"] for b in series["buckets"] for c in b["groups"].values())
        assert total == pytest.approx(sum(r.cost_usd for r in rows))
        savings = {t["technique"]: t for t in client.get("/dashboard/api/savings").json()["techniques"]}
        assert savings["cache"]["requests"] == sum(r.cache_status == "hit-exact" for r in rows)
        assert client.get("/dashboard/api/dimensions").json()["dimensions"]["team"] == ["growth", "search", "support"]


def test_dashboard_can_be_turned_off(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(observe={"dashboard": False})
    assert httpx.get(server.url + "/dashboard").status_code == 404
