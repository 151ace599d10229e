"""Gateway fixtures: a fake OpenAI upstream and real gateway servers (imported by conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.harness import GatewayServer, settings_for


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    server = FakeAnthropic().start()
    yield server
    server.stop()


def fake_openai_models(base_url: str, names: list[str], **deployment: Any) -> list[dict[str, Any]]:
    """Model entries served by the fake OpenAI upstream, priced as gpt-4o-mini."""
    return [
        {
            "name": name,
            "deployments": [
                {
                    "provider": "openai",
                    "model": name.removeprefix("up-"),
                    "base_url": base_url,
                    "api_key_env": "FAKE_OPENAI_KEY",
                    "price_model": "gpt-4o-mini",
                    **deployment,
                }
            ],
        }
        for name in names
    ]


UPSTREAM_MODELS = [
    "up-gpt",
    "up-fail-500",
    "up-fail-503",
    "up-fail-429",
    "up-fail-400",
    "up-fail-401",
    "up-hang",
    "up-malformed",
    "up-cut-stream",
    "up-slow-stream",
]


@pytest.fixture
def start_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., GatewayServer]]:
    """Start gateways with settings overrides; all are stopped after the test."""
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-fake")
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", "sk-ant-fake")
    servers: list[GatewayServer] = []

    def start(**overrides: Any) -> GatewayServer:
        server = GatewayServer(settings_for(tmp_path, **overrides)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(
    start_gateway: Callable[..., GatewayServer], fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic
) -> GatewayServer:
    """A gateway with the built-in simulated models and models served by the fake OpenAI upstream."""
    models = fake_openai_models(fake_openai.base_url, UPSTREAM_MODELS, read_timeout_s=1.0)
    models += [
        {
            "name": "up-refused",
            "deployments": [
                {"provider": "openai", "model": "gpt", "base_url": "http://127.0.0.1:9/v1", "price_model": "gpt-4o-mini"}
            ],
        },
        {
            "name": "up-embed",
            "kind": "embeddings",
            "deployments": [
                {
                    "provider": "openai",
                    "model": "text-embedding-3-small",
                    "base_url": fake_openai.base_url,
                    "api_key_env": "FAKE_OPENAI_KEY",
                }
            ],
        },
    ]
    models.append(
        {
            "name": "claude",
            "deployments": [
                {
                    "provider": "anthropic",
                    "model": "claude-haiku-4-5",
                    "base_url": fake_anthropic.base_url,
                    "api_key_env": "FAKE_ANTHROPIC_KEY",
                    "read_timeout_s": 5.0,
                }
            ],
        }
    )
    return start_gateway(models=models)
