"""``GET /metrics``: Prometheus text that parses, and counters that agree with the ledger."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import GatewayServer
from tokenomy.app import build_gateway
from tokenomy.config import load_settings
from tokenomy.observe.metrics import GatewayMetrics
from tokenomy.pipeline.call import Call, CostItem
from tokenomy.providers.usage import Usage


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample by name, parsed with prometheus_client's own parser."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def total(found: dict, name: str, **labels: str) -> float:
    return sum(v for ls, v in found.get(name, []) if all(ls.get(k) == want for k, want in labels.items()))


def test_counters_match_the_ledger_after_a_run(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway()
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    for i in range(12):
        team = ("search", "support", None)[i % 3]
        headers = {"x-tokenomy-feature": "faq", "x-tokenomy-customer": f"cust-{i}"}
        if team:
            headers["x-tokenomy-team"] = team
        model = "sim-mini" if i % 2 else "sim-flagship"
        if i % 4 == 3:
            for _ in sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"stream {i}"}], stream=True,
                stream_options={"include_usage": True}, extra_headers=headers,
            ):
                pass
        else:
            sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"question {i}"}], extra_headers=headers
            )
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sdk.embeddings.create(model="sim-embed", input="hello world")

    server.flush_ledger()
    rows = server.run_coro(server.gateway.ledger.fetch())
    assert len(rows) == 14

    answer = httpx.get(server.url + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    found = samples(answer.text)

    assert total(found, "tokenomy_requests_total") == len(rows)
    for row in rows:
        model = row.model_served or row.model_asked
        expected = sum(
            1 for r in rows
            if (r.model_served or r.model_asked) == model and (r.team or "") == (row.team or "") and r.outcome == row.outcome
        )
        got = total(found, "tokenomy_requests_total", model=model, team=row.team or "", outcome=row.outcome)
        assert got == expected, (model, row.team, row.outcome)
    assert total(found, "tokenomy_requests_total", outcome="model_not_found") == 1
    assert total(found, "tokenomy_tokens_total", direction="input") == sum(r.input_tokens for r in rows)
    assert total(found, "tokenomy_tokens_total", direction="output") == sum(r.output_tokens for r in rows)
    assert total(found, "tokenomy_cost_usd_total") == pytest.approx(sum(r.cost_usd or 0 for r in rows), rel=1e-9)
    assert total(found, "tokenomy_cost_usd_total", team="search") == pytest.approx(
        sum(r.cost_usd or 0 for r in rows if r.team == "search"), rel=1e-9
    )
    assert total(found, "tokenomy_baseline_cost_usd_total") == pytest.approx(
        sum(r.baseline_usd or 0 for r in rows), rel=1e-9
    )
    served = [r for r in rows if r.model_served]
    assert total(found, "tokenomy_route_decisions_total") == len(served)
    assert total(found, "tokenomy_upstream_latency_seconds_count") == sum(1 for r in rows if r.upstream_ms is not None)
    stages = {stage for r in rows for stage in r.stage_ms}
    assert {"identify", "resolve", "execute"} <= stages
    for stage in stages:
        assert total(found, "tokenomy_stage_latency_seconds_count", stage=stage) == sum(
            1 for r in rows if stage in r.stage_ms
        ), stage
    assert ("tokenomy_queue_depth", {"queue": "ledger"}) in [(n, ls) for n in found for ls, _ in found[n]]
    # customers are not labels: they would explode the number of series
    assert not any("customer" in labels for values in found.values() for labels, _ in values)


def test_metrics_need_the_master_key_when_set(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(server={"master_key": "sk-admin"})
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = httpx.get(server.url + "/metrics", headers={"authorization": "Bearer sk-admin"})
    assert ok.status_code == 200 and "# TYPE tokenomy_requests_total counter" in ok.text


def test_metrics_can_be_turned_off(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(observe={"metrics": False})
    assert httpx.get(server.url + "/metrics").status_code == 404


def test_each_gateway_has_its_own_registry() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    call = Call(kind="chat", body={}, model_asked="m")
    call.model_served, call.cache_status, call.outcome = "m", "hit-exact", "ok"
    call.trace.add(CostItem("generation", "m", "p", Usage(input_tokens=10, output_tokens=5), 0.25))
    call.stage_ms = {"record": 0.01}
    prune = call.trace.saving("prune")
    prune.tokens, prune.usd = 120, 0.0125
    first.record(call)
    a, b = samples(first.exposition().decode()), samples(second.exposition().decode())
    assert total(a, "tokenomy_requests_total") == 1 and total(b, "tokenomy_requests_total") == 0
    assert total(a, "tokenomy_cache_hits_total", status="hit-exact") == 1
    assert total(a, "tokenomy_cost_usd_total") == 0.25
    assert total(a, "tokenomy_saved_tokens_total", technique="prune") == 120
    assert total(a, "tokenomy_saved_usd_total", technique="prune") == 0.0125


def test_budget_rejections_are_counted() -> None:
    metrics = GatewayMetrics()
    call = Call(kind="chat", body={}, model_asked="m")
    call.outcome, call.status = "budget_exceeded", 429
    metrics.record(call)
    assert total(samples(metrics.exposition().decode()), "tokenomy_budget_rejections_total", reason="budget_exceeded") == 1


def test_two_gateways_in_one_process_do_not_clash(tmp_path) -> None:
    settings = load_settings(None, ledger={"enabled": False})
    one, two = build_gateway(settings), build_gateway(settings)
    assert one.metrics is not None and two.metrics is not None and one.metrics.registry is not two.metrics.registry
