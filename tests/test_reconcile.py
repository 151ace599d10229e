"""Counters are rebuilt from the ledger: a crash that lost counter state does not reset a budget."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from tests.budget_helpers import chat_body, run, start_gateway
from tests.conftest import ledger_row
from tokenomy.budgets.counters import NANO
from tokenomy.pipeline.call import Identity
from tokenomy.store.sql_ledger import SQLLedger


async def test_start_up_rebuilds_lost_spend_from_the_ledger(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = SQLLedger(url)
    await ledger.start()
    now = dt.datetime.now(dt.timezone.utc)
    await ledger.write_many(
        [ledger_row(team="growth", cost_usd=0.004, created_at=now) for _ in range(5)]
        + [ledger_row(team="growth", cost_usd=1.0, created_at=now - dt.timedelta(days=40))]  # an earlier month
        + [ledger_row(team="search", cost_usd=0.5, created_at=now)]
    )
    await ledger.aclose()
    caplog.set_level(logging.WARNING)
    rule = {"id": "growth-monthly", "scope": "team", "value": "growth", "amount_usd": 0.02, "period": "monthly"}
    gateway = await start_gateway(tmp_path, ledger={"url": url, "enabled": True}, budgets={"budgets": [rule]})
    try:
        assert "rebuilt" in caplog.text
        keys = [k for k in gateway.enforcement.counters._settled if k.startswith("b:growth-monthly:growth:")]
        assert gateway.enforcement.counters._settled[keys[0]] == pytest.approx(0.02 * NANO, abs=2)
        # the budget is already used up by the ledger's spend
        refused = await run(gateway, chat_body(), Identity(team="growth"))
        assert refused.annotations["error"].code == "budget_exceeded"
        drifts = await gateway.enforcement.reconcile()
        assert drifts == []  # in agreement now
    finally:
        await gateway.stop()
