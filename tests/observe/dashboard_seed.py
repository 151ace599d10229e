"""A small, known ledger for dashboard tests: rows spread over the last days."""

from __future__ import annotations

import datetime as dt
import random

from tests.conftest import ledger_row
from tokenomy.store.ledger import LedgerRow


def dashboard_rows(n: int = 400, seed: int = 3) -> list[LedgerRow]:
    rnd = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in range(n):
        team = rnd.choice(["search", "support", "growth"])
        asked = rnd.choice(["gpt-4o", "claude-sonnet-4-5"])
        served = asked if rnd.random() < 0.6 else "gpt-4o-mini"
        cost = round(rnd.uniform(0.001, 0.2), 6)
        rows.append(ledger_row(
            request_id=f"seed-{i:05d}",
            created_at=now - dt.timedelta(minutes=rnd.randrange(10, 9 * 24 * 60)),
            team=team,
            feature={"search": "autocomplete", "support": "answer", "growth": "emails"}[team],
            customer=f"cust-{rnd.randrange(12)}",
            endpoint=rnd.choice(["/chat", "/summarize"]),
            tags=rnd.choice([["beta"], [], ["eu"]]),
            traffic_class=rnd.choice(["realtime", "realtime", "batch"]),
            model_asked=asked,
            model_served=served,
            cost_usd=cost,
            baseline_usd=cost * (1.0 if served == asked else 4.0),
            cache_status=rnd.choice(["miss", "miss", "hit-exact"]),
            input_tokens=rnd.randrange(100, 8000),
            output_tokens=rnd.randrange(10, 900),
            savings=rnd.choice([{}, {}, {"prune": {"tokens": 300, "usd": 0.002}}]),
            cost_items=[{"step": "generation", "model": served, "provider": "openai", "input_tokens": 1,
                         "output_tokens": 1, "cached_tokens": 0, "cache_write_tokens": 0, "usd": cost}],
        ))
    return rows
