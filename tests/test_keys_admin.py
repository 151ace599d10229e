"""Virtual keys and the admin API over real HTTP: master-only admin, hashed keys, budgets per key."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.budget_helpers import FIXED_MODEL, HELLO, OUTPUT_TOKENS
from tests.harness import GatewayServer
from tokenomy.budgets.keys import KeyService, hash_key
from tokenomy.store.access import AccessStore

MASTER = "sk-master-test"


@pytest.fixture
def server(start_gateway: Callable[..., GatewayServer]) -> GatewayServer:
    # the answer cache off: these tests repeat identical requests to spend a budget
    return start_gateway(server={"master_key": MASTER}, models=[FIXED_MODEL], keys={"cache_ttl_s": 0}, cache={"enabled": False})


def admin(server: GatewayServer, method: str, path: str, key: str = MASTER, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30, **kwargs)


def chat(server: GatewayServer, key: str, **body) -> httpx.Response:
    payload = {"model": "sim-fixed", "messages": HELLO, "max_tokens": OUTPUT_TOKENS, **body}
    headers = {"authorization": f"Bearer {key}"}
    headers.update(body.pop("headers", {}) if "headers" in body else {})
    return httpx.post(server.url + "/v1/chat/completions", json=payload, headers=headers, timeout=30)


def test_admin_api_rejects_everything_but_the_master_key(server: GatewayServer) -> None:
    assert httpx.get(server.url + "/admin/keys").status_code == 401
    assert admin(server, "GET", "/admin/keys", key="wrong").status_code == 401
    created = admin(server, "POST", "/admin/keys", json={"team": "growth"})
    assert created.status_code == 201, created.text
    virtual = created.json()["key"]
    refused = admin(server, "GET", "/admin/keys", key=virtual)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "not_admin"
    assert admin(server, "POST", "/admin/budgets", key=virtual, json={"amount_usd": 1}).status_code == 403
    assert admin(server, "GET", "/admin/keys").status_code == 200


def test_admin_api_is_off_without_master_key(start_gateway: Callable[..., GatewayServer]) -> None:
    open_server = start_gateway(models=[FIXED_MODEL])
    response = admin(open_server, "GET", "/admin/keys", key="anything")
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_disabled"


def test_key_lifecycle_budget_models_and_revocation(server: GatewayServer) -> None:
    created = admin(
        server, "POST", "/admin/keys",
        json={"name": "bot", "team": "growth", "budget": "0.00004/day", "models": ["sim-fixed"], "rpm": 100},
    ).json()
    key = created["key"]
    assert key.startswith("tk-") and created["hint"].endswith(key[-4:])
    assert created["budget"]["scope"] == "key" and created["budget"]["value"] == created["id"]

    sdk = openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(model="sim-fixed", messages=HELLO, max_tokens=OUTPUT_TOKENS)  # type: ignore[arg-type]
    assert float(raw.headers["x-tokenomy-budget-remaining-usd"]) < 0.00004
    assert raw.headers["x-ratelimit-limit-requests"] == "100"

    with pytest.raises(openai.PermissionDeniedError):
        sdk.chat.completions.create(model="sim-mini", messages=HELLO)  # type: ignore[arg-type]
    statuses = [chat(server, key).status_code for _ in range(3)]
    assert statuses[-1] == 429
    refused = chat(server, key).json()["error"]
    assert refused["code"] == "budget_exceeded" and f"key '{created['id']}'" in refused["message"]

    listed = admin(server, "GET", "/admin/keys").json()["data"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and key not in str(listed)

    assert admin(server, "DELETE", f"/admin/keys/{created['id']}").json()["revoked_at"]
    gone = chat(server, key)
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"
    assert chat(server, "tk-" + "x" * 43).status_code == 401


def test_key_binds_team_and_header_cannot_move_it(server: GatewayServer) -> None:
    admin(server, "POST", "/admin/budgets", json={"scope": "team", "value": "growth", "amount": "0.00001/day"})
    key = admin(server, "POST", "/admin/keys", json={"team": "growth"}).json()["key"]
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "sim-fixed", "messages": HELLO, "max_tokens": OUTPUT_TOKENS},
        headers={"authorization": f"Bearer {key}", "x-tokenomy-team": "someone-else"},
        timeout=30,
    )
    assert response.status_code == 429
    assert "team 'growth'" in response.json()["error"]["message"]


def test_expired_key_is_refused(server: GatewayServer) -> None:
    key = admin(server, "POST", "/admin/keys", json={"expires_at": time.time() - 1}).json()["key"]
    assert chat(server, key).status_code == 401


def test_keys_are_never_stored_or_logged_in_clear(
    server: GatewayServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = admin(server, "POST", "/admin/keys", json={"team": "growth"}).json()["key"]
    assert chat(server, key).status_code == 200
    assert chat(server, key[:-1] + ("A" if key[-1] != "A" else "B")).status_code == 401
    server.flush_ledger()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"{path} holds the key in clear"
    assert key not in caplog.text


@pytest.fixture
def access_factory(ledger_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AccessStore]:
    """Unstarted access stores on SQLite or on PostgreSQL in a fresh schema."""
    if ledger_backend == "sqlite":
        return lambda: AccessStore(f"sqlite:///{tmp_path}/access.db")
    from tests.conftest import PG_URL

    schema = request.getfixturevalue("pg_schema")
    return lambda: AccessStore(PG_URL, schema=schema)


async def test_access_store_on_both_databases(access_factory: Callable[[], AccessStore]) -> None:
    store = access_factory()
    await store.start()
    try:
        keys = KeyService(store, b"pepper", cache_ttl_s=60)
        secret, record = await keys.create(team="growth", org="acme", allowed_models=["sim-mini"])
        assert (await store.get_team("growth")).org == "acme"
        identity = await keys.authenticate(secret)
        assert identity is not None and identity.key_id == record.id and identity.org == "acme"
        assert identity.allowed_models == frozenset({"sim-mini"})
        assert await store.find_key(hash_key(b"pepper", secret)) is not None
        assert await store.find_key(secret) is None  # only the hash is a lookup key
        await store.revoke_key(record.id)
        keys.forget()
        assert await keys.authenticate(secret) is None
    finally:
        await store.aclose()


def test_anthropic_messages_go_through_the_same_enforcement(server: GatewayServer) -> None:
    import anthropic

    created = admin(server, "POST", "/admin/keys", json={"budget": "0.00003/day", "models": ["sim-fixed"]}).json()
    client = anthropic.Anthropic(base_url=server.url, api_key=created["key"], max_retries=0)  # sent as x-api-key
    message = client.messages.create(model="sim-fixed", max_tokens=OUTPUT_TOKENS, messages=HELLO)  # type: ignore[arg-type]
    assert message.content
    with pytest.raises(anthropic.RateLimitError) as info:
        for _ in range(5):
            client.messages.create(model="sim-fixed", max_tokens=OUTPUT_TOKENS, messages=HELLO)  # type: ignore[arg-type]
    assert "Budget exceeded" in str(info.value)
    with pytest.raises(anthropic.PermissionDeniedError):
        client.messages.create(model="sim-haiku", max_tokens=10, messages=HELLO)  # type: ignore[arg-type]


def test_admin_teams_orgs_rate_limits_and_validation(server: GatewayServer) -> None:
    assert admin(server, "POST", "/admin/orgs", json={"name": "acme"}).status_code == 201
    assert admin(server, "POST", "/admin/orgs", json={"name": "acme"}).status_code == 400
    team = admin(server, "POST", "/admin/teams", json={"name": "search", "org": "acme", "models": ["sim-fixed"], "budget": "10/week"})
    assert team.status_code == 201 and team.json()["budget"]["period"] == "weekly"
    assert [t["name"] for t in admin(server, "GET", "/admin/teams").json()["data"]] == ["search"]
    limit = admin(server, "POST", "/admin/rate-limits", json={"scope": "team", "value": "search", "rpm": 1})
    assert limit.status_code == 201
    key = admin(server, "POST", "/admin/keys", json={"team": "search"}).json()
    assert key["org"] == "acme"
    assert chat(server, key["key"]).status_code == 200
    second = chat(server, key["key"])
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    assert admin(server, "DELETE", f"/admin/rate-limits/{limit.json()['id']}").status_code == 200
    assert chat(server, key["key"]).status_code == 200
    bad = admin(server, "POST", "/admin/budgets", json={"amount": "lots/month"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "amount"
    assert admin(server, "POST", "/admin/budgets", json={"amount_usd": 1, "scope": "planet"}).status_code == 400
    budgets = admin(server, "GET", "/admin/budgets").json()["data"]
    assert admin(server, "DELETE", f"/admin/budgets/{budgets[0]['id']}").status_code == 200
    assert admin(server, "DELETE", "/admin/budgets/nope").status_code == 404


def test_async_jobs_are_charged_to_the_key_that_queued_them(start_gateway: Callable[..., GatewayServer], tmp_path: Path) -> None:
    server = start_gateway(
        server={"master_key": MASTER},
        models=[FIXED_MODEL],
        keys={"cache_ttl_s": 0},
        cache={"enabled": False},
        jobs={"files_dir": str(tmp_path / "files"), "poll_interval_s": 0.02, "retry_backoff_s": 0.05, "max_attempts": 1},
    )
    created = admin(server, "POST", "/admin/keys", json={"team": "night", "budget": "0/day"}).json()
    headers = {"authorization": f"Bearer {created['key']}", "x-tokenomy-priority": "low", "x-tokenomy-team": "other"}
    queued = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": "sim-fixed", "messages": HELLO, "max_tokens": OUTPUT_TOKENS},
        headers=headers,
        timeout=30,
    )
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["id"]
    deadline = time.monotonic() + 20
    while True:
        job = admin(server, "GET", f"/v1/async/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "failed", job
    assert "budget" in str(job).lower()
    # without a key the async endpoint is refused like any other
    assert httpx.post(server.url + "/v1/async/chat/completions", json={"model": "sim-fixed", "messages": HELLO}).status_code == 401
