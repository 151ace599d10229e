"""Files, batches and async jobs belong to the virtual key that created them, and every
batch line — run locally or passed through to a provider's batch API — is charged to
that key: its key/team budgets, allowed models and rate limits apply. Two keys made
through the admin API, driven with the official ``openai`` SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.budget_helpers import FIXED_MODEL, OUTPUT_TOKENS, SLOW_MODEL
from tests.fakes.openai_batch_upstream import FakeOpenAIBatches
from tests.harness import GatewayServer
from tests.test_batches import chat_line, wait_for_batch, write_jsonl
from tokenomy.budgets.counters import NANO
from tokenomy.pricing.catalog import PriceCatalog
from tokenomy.pricing.cost import cost_usd
from tokenomy.providers.usage import Usage
from tokenomy.tokens.counting import count_messages

MASTER = "sk-master-batches"


def admin(server: GatewayServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = httpx.request(method, server.url + path, headers={"authorization": f"Bearer {MASTER}"}, timeout=30,
                             **kwargs)  # fmt: skip
    assert response.status_code < 300, response.text
    return response


def new_key(server: GatewayServer, **fields: Any) -> tuple[str, str]:
    """``(secret, key id)`` of a virtual key made through the admin API."""
    created = admin(server, "POST", "/admin/keys", json=fields).json()
    return created["key"], created["id"]


def key_budget(server: GatewayServer, key_id: str, amount_usd: float) -> None:
    admin(server, "POST", "/admin/budgets", json={"scope": "key", "value": key_id, "amount_usd": amount_usd,
                                                  "period": "daily"})  # fmt: skip


def sdk(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def submit(client: openai.OpenAI, tmp_path: Path, lines: list[dict[str, Any]], **extra: Any) -> Any:
    path = write_jsonl(tmp_path / f"in-{time.monotonic_ns()}.jsonl", lines)
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **extra)  # fmt: skip


def results(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if not file_id:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def line_worst_case(price_model: str, text: str, *, batch: bool = False) -> float:
    """What one ``chat_line`` reserves: its counted prompt and max_tokens at the model's price."""
    price = PriceCatalog.load_default().get(price_model)
    inp = count_messages([{"role": "user", "content": text}], price_model)
    return cost_usd(price, Usage(input_tokens=inp, output_tokens=OUTPUT_TOKENS), batch=batch) or 0.0


def keyed_gateway(start_gateway: Callable[..., GatewayServer], tmp_path: Path, concurrency: int = 1) -> GatewayServer:
    """A gateway with a master key (so virtual keys are required), jobs and local batches."""
    return start_gateway(
        server={"master_key": MASTER},
        models=[FIXED_MODEL, SLOW_MODEL],
        keys={"cache_ttl_s": 0},
        cache={"enabled": False},
        jobs={"files_dir": str(tmp_path / "files"), "poll_interval_s": 0.02},
        batches={"local_concurrency": concurrency},
    )


@pytest.fixture
def server(start_gateway: Callable[..., GatewayServer], tmp_path: Path) -> GatewayServer:
    return keyed_gateway(start_gateway, tmp_path)


def test_another_key_cannot_see_read_cancel_or_delete_a_keys_files_batches_and_jobs(
    server: GatewayServer, tmp_path: Path
) -> None:
    key_a, _ = new_key(server, name="a", team="growth")
    key_b, _ = new_key(server, name="b", team="search")
    a, b, master = sdk(server, key_a), sdk(server, key_b), sdk(server, MASTER)

    lines = [chat_line(f"r{i}", f"question {i}", model="sim-slow") for i in range(3)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    file_a = a.files.create(file=path.open("rb"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        b.files.retrieve(file_a.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(file_a.id)
    with pytest.raises(openai.NotFoundError):
        b.files.delete(file_a.id)
    with pytest.raises(openai.NotFoundError):  # nor run a batch on it
        b.batches.create(input_file_id=file_a.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert [f.id for f in b.files.list()] == []
    assert [f.id for f in a.files.list()] == [file_a.id]
    assert file_a.id in [f.id for f in master.files.list()]

    batch = a.batches.create(input_file_id=file_a.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        b.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        b.batches.cancel(batch.id)
    assert [x.id for x in b.batches.list()] == []
    assert [x.id for x in a.batches.list()] == [batch.id]
    assert master.batches.retrieve(batch.id).id == batch.id
    done = wait_for_batch(a, batch.id)
    assert done.status == "completed"  # B's cancel did nothing
    assert len(results(a, done.output_file_id)) == 3
    with pytest.raises(openai.NotFoundError):  # the output file is A's too
        b.files.content(done.output_file_id)
    assert done.output_file_id in [f.id for f in a.files.list(purpose="batch_output")]
    assert master.files.content(done.output_file_id).text

    http_a = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key_a}"})
    http_b = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {key_b}"})
    job = http_a.post("/v1/async/chat/completions",
                      json={"model": "sim-slow", "messages": [{"role": "user", "content": "hi"}]}).json()  # fmt: skip
    missing = http_b.get(f"/v1/async/jobs/{job['id']}")
    unknown = http_b.get("/v1/async/jobs/job_does_not_exist")
    assert missing.status_code == unknown.status_code == 404  # exactly as for a job that does not exist
    assert missing.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert http_b.post(f"/v1/async/jobs/{job['id']}/cancel").status_code == 404
    assert http_a.get(f"/v1/async/jobs/{job['id']}").status_code == 200
    master_http = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {MASTER}"})
    assert master_http.get(f"/v1/async/jobs/{job['id']}").status_code == 200
    deadline = time.monotonic() + 20
    while http_a.get(f"/v1/async/jobs/{job['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)  # not cancelled by B

    a.files.delete(file_a.id)  # the owner may
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(file_a.id)


def test_a_batch_is_charged_to_the_key_that_submitted_it(server: GatewayServer, tmp_path: Path) -> None:
    key_a, id_a = new_key(server, name="a", team="growth")
    client = sdk(server, key_a)
    lines = [chat_line(f"r{i}", f"summarise {i}", model="sim-fixed") for i in range(4)]
    # a header cannot move the lines out of the team whose budget pays for them
    batch = submit(client, tmp_path, lines, extra_headers={"x-tokenomy-team": "someone-else"})
    batch = wait_for_batch(client, batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 4
    server.flush_ledger()
    rows = server.run_coro(server.gateway.ledger.fetch())
    assert len(rows) == 4
    assert {(r.key_id, r.team, r.traffic_class) for r in rows} == {(id_a, "growth", "batch")}


def test_an_exhausted_key_budget_fails_the_remaining_lines_with_budget_exceeded(
    server: GatewayServer, tmp_path: Path
) -> None:
    key_a, id_a = new_key(server, name="a", team="growth", models=["sim-fixed"])
    texts = [f"summarise record {i}" for i in range(8)]
    amount = line_worst_case("gpt-4o-mini", texts[0]) * 3.5  # room for three lines' worst case (actual = worst)
    key_budget(server, id_a, amount)
    client = sdk(server, key_a)
    lines = [chat_line(f"r{i}", text, model="sim-fixed") for i, text in enumerate(texts)]
    lines.append(chat_line("not-allowed", "hello", model="sim-slow"))  # the key may not use this model
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id)
    assert batch.status == "completed"
    ok, failed = results(client, batch.output_file_id), results(client, batch.error_file_id)
    assert len(ok) == 3 and len(failed) == 6
    codes = {r["custom_id"]: r["response"]["body"]["error"]["code"] for r in failed}
    assert codes.pop("not-allowed") == "model_not_allowed"
    assert set(codes.values()) == {"budget_exceeded"}
    assert all(r["response"]["status_code"] == 429 for r in failed if r["custom_id"] != "not-allowed")
    server.flush_ledger()
    rows = server.run_coro(server.gateway.ledger.fetch())
    spent = sum(r.cost_usd or 0.0 for r in rows if r.outcome == "ok")
    assert 0 < spent <= amount  # the budget held; refused lines cost nothing
    assert all(r.key_id == id_a for r in rows)


def test_a_keys_rate_limit_paces_a_batch_instead_of_failing_it(
    start_gateway: Callable[..., GatewayServer], tmp_path: Path
) -> None:
    server = keyed_gateway(start_gateway, tmp_path, concurrency=3)  # more lines at once than the key may run
    key_a, _ = new_key(server, name="a", concurrent=1)
    client = sdk(server, key_a)
    lines = [chat_line(f"r{i}", f"question {i}", model="sim-slow") for i in range(4)]
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id, timeout_s=60)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 0)
    server.flush_ledger()
    rows = server.run_coro(server.gateway.ledger.fetch())
    answered = [r for r in rows if r.outcome == "ok"]
    waited = [r for r in rows if r.outcome == "rate_limit_exceeded"]
    assert sorted(r.request_id for r in answered) == sorted(f"{batch.id}-{n}" for n in range(1, 5))
    assert waited and all(".attempt" in r.request_id for r in waited)  # refused tries never hide the answer


# -- passed through to the provider's batch API ---------------------------------------------


@pytest.fixture(scope="module")
def openai_batches() -> Iterator[FakeOpenAIBatches]:
    fake = FakeOpenAIBatches().start()
    yield fake
    fake.stop()


@pytest.fixture
def passthrough(start_gateway: Callable[..., GatewayServer], tmp_path: Path,
                openai_batches: FakeOpenAIBatches) -> GatewayServer:  # fmt: skip
    models = [{"name": "gpt-batch", "deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                                     "base_url": openai_batches.base_url,
                                                     "api_key_env": "FAKE_OPENAI_KEY", "price_model": "gpt-4o-mini"}]}]  # fmt: skip
    return start_gateway(
        server={"master_key": MASTER}, models=models, keys={"cache_ttl_s": 0},
        jobs={"files_dir": str(tmp_path / "files")}, batches={"upstream_poll_interval_s": 0.05},
        budgets={"output_cap_tokens": 500},
    )  # fmt: skip


def test_an_exhausted_key_cannot_slip_through_the_provider_batch_api(
    passthrough: GatewayServer, tmp_path: Path, openai_batches: FakeOpenAIBatches
) -> None:
    key_a, id_a = new_key(passthrough, name="a", team="growth")
    key_budget(passthrough, id_a, 0.0)  # exhausted
    client = sdk(passthrough, key_a)
    before = len(openai_batches.batches)
    lines = [chat_line(f"r{i}", f"summarise doc {i}", model="gpt-batch") for i in range(4)]
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id)
    assert batch.status == "completed" and batch.model_extra["tokenomy"]["execution"] == "openai"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 4)
    failed = results(client, batch.error_file_id)
    assert {r["response"]["body"]["error"]["code"] for r in failed} == {"budget_exceeded"}
    assert f"key '{id_a}'" in failed[0]["response"]["body"]["error"]["message"]
    assert len(openai_batches.batches) == before  # nothing was sent upstream


def test_provider_batches_reserve_the_lines_that_fit_and_charge_the_key(
    passthrough: GatewayServer, tmp_path: Path, openai_batches: FakeOpenAIBatches
) -> None:
    key_a, id_a = new_key(passthrough, name="a", team="growth")
    texts = [f"summarise doc {i}" for i in range(5)]
    line_cost = line_worst_case("gpt-4o-mini", texts[0], batch=True)
    amount = line_cost * 2.5  # two lines' worst case at batch prices
    key_budget(passthrough, id_a, amount)
    client = sdk(passthrough, key_a)
    sent_before = len(openai_batches.batch_requests)
    lines = [chat_line(f"r{i}", text, model="gpt-batch") for i, text in enumerate(texts)]
    lines[1]["body"].pop("max_tokens")  # the other spelling of the limit is reserved the same way
    lines[1]["body"]["max_completion_tokens"] = OUTPUT_TOKENS
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)
    sent = openai_batches.batch_requests[sent_before:]
    assert [line["custom_id"] for line in sent] == ["r0", "r1"]  # the leading lines that fit, only
    refused = results(client, batch.error_file_id)
    assert sorted(r["custom_id"] for r in refused) == ["r2", "r3", "r4"]
    assert {r["response"]["body"]["error"]["code"] for r in refused} == {"budget_exceeded"}
    passthrough.flush_ledger()
    rows = passthrough.run_coro(passthrough.gateway.ledger.fetch())
    assert len(rows) == 2 and {(r.key_id, r.team) for r in rows} == {(id_a, "growth")}
    spent = sum(r.cost_usd for r in rows)
    enforcer = passthrough.gateway.enforcement.enforcer
    passthrough.run_coro(enforcer.drain())
    store = passthrough.gateway.enforcement.counters
    keys = [k for k in store._settled if k.startswith("b:")]  # type: ignore[attr-defined]
    settled = passthrough.run_coro(store.read([keys]))[0] / NANO
    assert settled == pytest.approx(spent, abs=1e-9) and settled <= amount  # reservation settled to the cost
    record = passthrough.run_coro(passthrough.gateway.jobs.store.get_batch(batch.id))
    assert record["owner"] == id_a and record["reservation"]["admitted"] == 2


def test_provider_batch_lines_carry_the_reserved_output_cap(
    passthrough: GatewayServer, tmp_path: Path, openai_batches: FakeOpenAIBatches
) -> None:
    key_a, _ = new_key(passthrough, name="a")
    client = sdk(passthrough, key_a)
    sent_before = len(openai_batches.batch_requests)
    lines = [chat_line("huge", "write a lot", model="gpt-batch"), chat_line("none", "write", model="gpt-batch")]
    lines[0]["body"]["max_tokens"] = 999999999
    lines[1]["body"].pop("max_tokens")
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id)
    assert batch.status == "completed"
    sent = {line["custom_id"]: line["body"] for line in openai_batches.batch_requests[sent_before:]}
    assert sent["huge"]["max_tokens"] == 500 and sent["none"]["max_tokens"] == 500  # budgets.output_cap_tokens


def test_without_budgets_a_provider_batch_is_sent_whole_and_uncapped(
    start_gateway: Callable[..., GatewayServer], tmp_path: Path, openai_batches: FakeOpenAIBatches
) -> None:
    models = [{"name": "gpt-batch", "deployments": [{"provider": "openai", "model": "gpt-4o-mini",
                                                     "base_url": openai_batches.base_url,
                                                     "api_key_env": "FAKE_OPENAI_KEY"}]}]  # fmt: skip
    server = start_gateway(models=models, jobs={"files_dir": str(tmp_path / "files")},
                           batches={"upstream_poll_interval_s": 0.05}, budgets={"enabled": False})  # fmt: skip
    client = sdk(server, "unused")
    sent_before = len(openai_batches.batch_requests)
    lines = [chat_line(f"r{i}", f"doc {i}", model="gpt-batch") for i in range(3)]
    lines[0]["body"]["max_tokens"] = 999999999
    batch = wait_for_batch(client, submit(client, tmp_path, lines).id)
    assert (batch.status, batch.request_counts.completed) == ("completed", 3)
    sent = openai_batches.batch_requests[sent_before:]
    assert len(sent) == 3 and sent[0]["body"]["max_tokens"] == 999999999  # no budget stage, no cap (as real-time)
