"""Alerts fire once per threshold with a valid signature; runaway detection fires on bursts only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.budget_fixtures import FakeClock
from tests.budget_helpers import chat_body, one_call_cost, run, start_gateway
from tests.harness import free_port
from tokenomy.budgets.alerts import SIGNATURE_HEADER, Alert, AlertDispatcher, WebhookChannel, sign, verify_signature
from tokenomy.pipeline.call import Identity

SECRET = "whsec-test"


class Receiver:
    """A local webhook endpoint recording what it gets; fails the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.fail_first = fail_first
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.received.append((await request.read(), dict(request.headers)))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    yield hook
    await runner.cleanup()


def test_signature_round_trip() -> None:
    body = b'{"a":1}'
    header = sign(SECRET, body, timestamp=1000)
    assert verify_signature(SECRET, header, body, now=1000)
    assert not verify_signature(SECRET, header, body + b" ", now=1000)
    assert not verify_signature("other", header, body, now=1000)
    assert not verify_signature(SECRET, header, body, now=1000 + 3600)  # replayed later
    assert not verify_signature(SECRET, "garbage", body)


async def test_thresholds_fire_once_each_with_valid_signatures(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    probe = await start_gateway(tmp_path / "probe")
    cost = one_call_cost(probe)
    await probe.stop()
    gateway = await start_gateway(
        tmp_path,
        budgets={"budgets": [{"id": "team-b", "scope": "team", "value": "growth", "amount_usd": cost * 10}]},
        alerts={"webhooks": [{"url": receiver.url, "secret_env": "HOOK_SECRET"}]},
        runaway={"enabled": False},
    )
    try:
        for _ in range(15):  # 10 fit; 5 more are refused
            await run(gateway, chat_body(), Identity(team="growth"))
            await gateway.enforcement.enforcer.drain()
        await gateway.enforcement.alerts.drain()
    finally:
        await gateway.stop()
    thresholds = []
    for body, headers in receiver.received:
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
        event = orjson.loads(body)
        assert event["type"] == "tokenomy.budget_threshold"
        assert event["alert"]["budget_id"] == "team-b" and event["alert"]["subject"] == "growth"
        thresholds.append(event["alert"]["threshold"])
    assert sorted(thresholds) == [0.5, 0.8, 1.0]


async def test_webhook_retries_with_backoff(receiver: Receiver) -> None:
    receiver.fail_first = 2
    dispatcher = AlertDispatcher([WebhookChannel(receiver.url, secret=SECRET)], attempts=4, backoff_s=0.01)
    dispatcher.start()
    dispatcher.publish(Alert(kind="runaway", scope="key", subject="k", message="m", at=0.0))
    await dispatcher.drain()
    await dispatcher.aclose()
    assert len(receiver.received) == 1


async def test_slack_format(receiver: Receiver) -> None:
    dispatcher = AlertDispatcher([WebhookChannel(receiver.url, fmt="slack")])
    dispatcher.start()
    dispatcher.publish(Alert(kind="runaway", scope="key", subject="k", message="too fast", at=0.0))
    await dispatcher.drain()
    await dispatcher.aclose()
    assert "too fast" in orjson.loads(receiver.received[0][0])["text"]


RUNAWAY = {"scopes": ["key"], "window_s": 60, "baseline_s": 1800, "factor": 5, "min_usd_per_min": 0.0001, "check_every_s": 10}


async def _traffic(gateway, clock: FakeClock, seconds: int, every_s: float, key: str = "key_a") -> None:
    elapsed = 0.0
    while elapsed < seconds:
        await run(gateway, chat_body(), Identity(key_id=key))
        await gateway.enforcement.enforcer.drain()
        clock.advance(every_s)
        elapsed += every_s


async def test_runaway_fires_on_burst_not_on_steady_traffic(tmp_path: Path, clock: FakeClock) -> None:
    gateway = await start_gateway(tmp_path, clock, runaway=RUNAWAY, alerts={"log": False})
    sent = gateway.enforcement.alerts.sent
    try:
        # one call ($0.0000132) every 5 s, for 40 minutes, from no history at all
        await _traffic(gateway, clock, 40 * 60, 5)
        assert [a for a in sent if a.kind == "runaway"] == []
        await _traffic(gateway, clock, 30, 0.25)  # then 120 calls in 30 s: 20x the usual rate
        runaway = [a for a in sent if a.kind == "runaway"]
        assert len(runaway) == 1 and runaway[0].subject == "key_a"
        assert runaway[0].rate_usd_per_min > 5 * runaway[0].baseline_usd_per_min
        await _traffic(gateway, clock, 20, 0.25)  # the same episode is reported once
        assert len([a for a in sent if a.kind == "runaway"]) == 1
    finally:
        await gateway.stop()


async def test_runaway_throttle_blocks_the_scope(tmp_path: Path, clock: FakeClock) -> None:
    settings = {**RUNAWAY, "throttle": True, "throttle_s": 120}
    gateway = await start_gateway(tmp_path, clock, runaway=settings, alerts={"log": False})
    try:
        await _traffic(gateway, clock, 10 * 60, 30)
        await _traffic(gateway, clock, 20, 0.2)
        blocked = await run(gateway, chat_body(), Identity(key_id="key_a"))
        assert blocked.annotations["error"].code == "runaway_throttled"
        assert "error" not in (await run(gateway, chat_body(), Identity(key_id="key_b"))).annotations
        clock.advance(121)
        # the memory store expires the block with the fake clock
        assert "error" not in (await run(gateway, chat_body(), Identity(key_id="key_a"))).annotations
    finally:
        await gateway.stop()
