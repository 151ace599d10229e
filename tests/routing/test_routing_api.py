"""Routing through the real HTTP gateway: headers, the ledger's route column, failover under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from tests.harness import GatewayServer
from tests.routing.pipeline import model, sim

MODELS = [
    model("flaky", sim("flaky-a", "gpt-4o-mini", error_rate=0.5, seed=7), sim("flaky-b", "gpt-4o", error_rate=0.5, seed=8)),
    model("steady", sim("steady", "gpt-4o")),
]
ROUTING = {
    "tiers": {"cheap": ["sim-mini"], "strong": ["sim-flagship"]},
    "routers": [
        {"name": "auto", "default_tier": "cheap", "rules": [{"name": "code", "when": {"code": True}, "tier": "strong"}]}
    ],
    "fallbacks": {"flaky": ["steady"]},
    "retry": {"backoff_s": 0.001},
    "health": {"failures": 1000},
}


def test_route_headers_and_ledger(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(models=MODELS, routing=ROUTING)
    with httpx.Client(base_url=server.base_url) as client:
        r = client.post("/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        assert r.headers["x-tokenomy-model"] == "sim-mini"
        assert r.headers["x-tokenomy-route"] == "auto:rules -> sim-mini (tier cheap; no rule matched: default tier)"
        code = {"model": "auto", "messages": [{"role": "user", "content": "```\nprint(1)\n```"}], "stream": True}
        with client.stream("POST", "/chat/completions", json=code) as s:
            assert s.status_code == 200
            assert s.headers["x-tokenomy-route"].startswith("auto:rules -> sim-flagship (tier strong; rule code")
            body = "".join(s.iter_text())
        assert "[DONE]" in body
        r = client.post("/chat/completions", json={"model": "sim-mini", "messages": [{"role": "user", "content": "hi"}]})
        assert "x-tokenomy-route" not in r.headers
        listed = {m["id"]: m["owned_by"] for m in client.get("/models").json()["data"]}
        assert listed["auto"] == "tokenomy-router" and "sim-mini" in listed
    server.flush_ledger()
    rows = server.run_coro(server.gateway.ledger.fetch())
    assert len(rows) == 3 and sum(1 for row in rows if row.route is None) == 1
    assert sum(1 for row in rows if row.route and row.route.startswith("auto:rules")) == 2


def test_no_request_lost_or_double_charged_under_faults(start_gateway: Callable[..., GatewayServer]) -> None:
    """50 concurrent calls to a model whose two deployments fail half the time, with a steady fallback."""
    server = start_gateway(models=MODELS, routing=ROUTING)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
            body = lambda i: {"model": "flaky", "messages": [{"role": "user", "content": f"question {i}"}]}  # noqa: E731
            return await asyncio.gather(*(client.post("/chat/completions", json=body(i)) for i in range(50)))

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    server.flush_ledger()
    rows = {row.request_id: row for row in server.run_coro(server.gateway.ledger.fetch())}
    assert len(rows) == 50
    for r in responses:
        row = rows[r.headers["x-tokenomy-request-id"]]
        charged = [i for i in row.cost_items if i["outcome"] == "ok"]
        failed = [i for i in row.cost_items if i["outcome"] != "ok"]
        assert len(charged) == 1  # exactly one answer charged
        assert all(i["usd"] == 0 for i in failed)  # failed attempts shown, never charged
        assert row.cost_usd == charged[0]["usd"]
        assert abs(float(r.headers["x-tokenomy-cost-usd"]) - row.cost_usd) < 1e-8
    assert any(len(row.cost_items) > 1 for row in rows.values())  # some calls did need retries/failover
