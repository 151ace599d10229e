"""Bad input and upstream failures end in clean OpenAI-style errors, recorded in the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import openai
import orjson
import pytest

from tests.harness import GatewayServer


def post(server: GatewayServer, body: bytes | dict, path: str = "/v1/chat/completions", **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        server.url + path, content=content, headers={"content-type": "application/json", **headers}, timeout=30
    )


def assert_envelope(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def ledger_rows(server: GatewayServer) -> list:
    server.flush_ledger()
    assert server.gateway.ledger is not None
    return server.run_coro(server.gateway.ledger.fetch())


HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        ({"messages": HELLO}, "model"),
        ({"model": 5, "messages": HELLO}, "model"),
        ({"model": "sim-mini"}, "messages"),
        ({"model": "sim-mini", "messages": []}, "messages"),
        ({"model": "sim-mini", "messages": "hi"}, "messages"),
        ({"model": "sim-mini", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": "sim-mini", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"model": "sim-mini", "messages": HELLO, "max_tokens": "ten"}, "max_tokens"),
        ({"model": "sim-mini", "messages": HELLO, "temperature": 9}, "temperature"),
        ({"model": "sim-mini", "messages": HELLO, "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_get_400(gateway: GatewayServer, body: bytes | dict, param: str | None) -> None:
    error = assert_envelope(post(gateway, body), 400, param=param)
    assert error["type"] == "invalid_request_error"


def test_unknown_fields_are_tolerated(gateway: GatewayServer) -> None:
    response = post(gateway, {"model": "sim-mini", "messages": HELLO, "frobnicate": True, "metadata": {"a": "b"}})
    assert response.status_code == 200


def test_unknown_model_is_404(gateway: GatewayServer) -> None:
    assert_envelope(post(gateway, {"model": "gpt-17", "messages": HELLO}), 404, "model_not_found", "model")


def test_chat_model_on_embeddings_is_404(gateway: GatewayServer) -> None:
    assert_envelope(post(gateway, {"model": "sim-mini", "input": "x"}, "/v1/embeddings"), 404, "model_not_found")


def test_oversized_body_is_413(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(server={"max_body_bytes": 2048})
    big = {"model": "sim-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_envelope(post(server, big), 413, "request_too_large")


def test_unknown_route_is_404_envelope(gateway: GatewayServer) -> None:
    response = httpx.get(gateway.url + "/v1/nope")
    assert_envelope(response, 404, "not_found")


def test_master_key_required(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(server={"master_key": "sk-master"})
    assert_envelope(post(server, {"model": "sim-mini", "messages": HELLO}), 401, "invalid_api_key")
    assert_envelope(
        post(server, {"model": "sim-mini", "messages": HELLO}, authorization="Bearer wrong"), 401, "invalid_api_key"
    )
    ok = post(server, {"model": "sim-mini", "messages": HELLO}, authorization="Bearer sk-master")
    assert ok.status_code == 200
    sdk = openai.OpenAI(base_url=server.base_url, api_key="sk-master", max_retries=0)
    assert sdk.chat.completions.create(model="sim-mini", messages=HELLO).choices  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("up-hang", 504, "upstream_timeout"),
        ("up-refused", 502, "upstream_error"),
        ("up-fail-500", 502, "upstream_error"),
        ("up-fail-503", 502, "upstream_error"),
        ("up-malformed", 502, "upstream_error"),
        ("up-fail-400", 400, "upstream_rejected"),
        ("up-fail-401", 502, "upstream_error"),
        ("up-fail-429", 429, "upstream_rate_limited"),
    ],
)
def test_upstream_failures_are_clean_and_recorded(
    gateway: GatewayServer, model: str, status: int, code: str
) -> None:
    response = post(gateway, {"model": model, "messages": HELLO}, **{"x-request-id": f"fail-{model}"})
    assert_envelope(response, status, code)
    if model == "up-fail-429":
        assert response.headers["retry-after"] == "2"
    rows = {row.request_id: row for row in ledger_rows(gateway)}
    row = rows[f"fail-{model}"]
    assert row.outcome == code and row.status == status
    assert row.model_asked == model


def test_stream_cut_midway_is_reported_in_band_and_recorded(gateway: GatewayServer) -> None:
    body = {
        "model": "up-cut-stream",
        "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}],
        "stream": True,
    }
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers={"x-request-id": "cut-1"}, timeout=30
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] != "data: [DONE]"
    error = orjson.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_error"
    row = {r.request_id: r for r in ledger_rows(gateway)}["cut-1"]
    assert row.outcome == "upstream_error"
    assert row.input_tokens > 0  # charged what was consumed: at least the input


def test_stream_upstream_error_before_first_chunk_is_plain_error(gateway: GatewayServer) -> None:
    response = post(gateway, {"model": "up-fail-500", "messages": HELLO, "stream": True})
    assert_envelope(response, 502, "upstream_error")


def test_sdk_raises_typed_errors(gateway: GatewayServer) -> None:
    sdk = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="up-fail-429", messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="up-fail-500", messages=HELLO)  # type: ignore[arg-type]


async def test_client_disconnect_cancels_upstream(gateway: GatewayServer) -> None:
    """A client that leaves mid-stream: the gateway stops reading upstream and records it."""
    body = {
        "model": "up-slow-stream",
        "messages": [{"role": "user", "content": " ".join(["w"] * 200)}],
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream(
            "POST", gateway.url + "/v1/chat/completions", json=body, headers={"x-request-id": "gone-1"}
        ) as response:
            async for _ in response.aiter_lines():
                break
    await asyncio.sleep(0.5)
    row = {r.request_id: r for r in ledger_rows(gateway)}["gone-1"]
    assert row.outcome == "client_disconnected"
    assert row.input_tokens > 0


async def test_client_disconnect_cancels_non_streamed_call(start_gateway, fake_openai) -> None:
    """A client that gives up on a JSON call: the upstream request is cancelled at once,
    not left running until the upstream's read timeout."""
    from tests.conftest_gateway import fake_openai_models

    server = start_gateway(models=fake_openai_models(fake_openai.base_url, ["up-hang"], read_timeout_s=30.0))
    body = {"model": "up-hang", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=0.5) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(server.url + "/v1/chat/completions", json=body, headers={"x-request-id": "gone-json"})
    await asyncio.sleep(0.5)
    row = {r.request_id: r for r in ledger_rows(server)}["gone-json"]
    assert row.outcome == "client_disconnected" and row.status == 499
    assert row.duration_ms is not None and row.duration_ms < 5000


def test_cache_admin_routes_need_the_master_key(start_gateway: Callable[..., GatewayServer]) -> None:
    server = start_gateway(server={"master_key": "sk-master"})
    assert_envelope(post(server, {"all": True}, "/v1/cache/invalidate"), 401)
    assert_envelope(httpx.get(server.url + "/v1/cache/stats"), 401)
    assert_envelope(post(server, {"request_id": "x", "correct": False}, "/v1/feedback"), 401)
    ok = post(server, {"all": True}, "/v1/cache/invalidate", authorization="Bearer sk-master")
    assert ok.status_code == 200
    ok = httpx.get(server.url + "/v1/cache/stats", headers={"authorization": "Bearer sk-master"})
    assert ok.status_code == 200
