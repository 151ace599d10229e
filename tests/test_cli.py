"""The ``tokenomy`` command as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenomy.cli import app
from tokenomy.config import ConfigError, load_settings

runner = CliRunner()


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    target = tmp_path / "tokenomy.yaml"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    settings = load_settings(target)
    names = {model.name for model in settings.models}
    assert {"gpt-4o-mini", "claude-haiku", "sim-flaky"} <= names
    assert runner.invoke(app, ["init", str(target)]).exit_code == 1  # no silent overwrite


def test_example_config_builds_a_gateway(tmp_path: Path) -> None:
    from tokenomy.app import build_gateway

    target = tmp_path / "tokenomy.yaml"
    runner.invoke(app, ["init", str(target)])
    settings = load_settings(target, ledger={"url": f"sqlite:///{tmp_path / 'l.db'}"})
    gateway = build_gateway(settings)
    assert "mini" in gateway.registry and "sim-mini" in gateway.registry
    assert gateway.registry.resolve("mini").name == "gpt-4o-mini"
    assert gateway.catalog.get("my-finetune") is not None  # config price additions reach the catalog


def test_serve_refuses_public_bind_without_master_key() -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "master_key" in result.output


def test_bad_config_is_explained(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: not-a-port\n  colour: blue\n")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(bad)
    message = str(excinfo.value)
    assert "server.port" in message and "server.colour" in message
    result = runner.invoke(app, ["prices", "--config", str(bad)])
    assert result.exit_code == 2


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("server:\n  port: 9000\n  host: 127.0.0.1\n")
    monkeypatch.setenv("TOKENOMY_SERVER__PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100 and settings.server.host == "127.0.0.1"


def test_prices_json() -> None:
    result = runner.invoke(app, ["prices", "gpt-4o-mini", "--format", "json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert rows[0]["model"] == "gpt-4o-mini" and rows[0]["input"] > 0


def test_spend_reads_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from tests.conftest import ledger_row
    from tokenomy.store.sql_ledger import SQLLedger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def seed() -> None:
        ledger = SQLLedger(url)
        await ledger.start()
        await ledger.write_many([ledger_row(team="a", cost_usd=1.0, baseline_usd=3.0), ledger_row(team="b")])
        await ledger.aclose()

    asyncio.run(seed())
    monkeypatch.setenv("TOKENOMY_LEDGER__URL", url)
    result = runner.invoke(app, ["spend", "--by", "team", "--format", "json"])
    assert result.exit_code == 0, result.output
    groups = {g["group"]: g for g in json.loads(result.output)["groups"]}
    assert groups["a"]["cost_usd"] == 1.0 and groups["a"]["savings_usd"] == 2.0


def test_every_setting_is_documented() -> None:
    """docs/configuration.md names every key of every settings section."""
    from pydantic import BaseModel

    from tokenomy.config import Settings, SimulatedOptions

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    missing = []

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            if f"`{key}`" not in doc:
                missing.append(f"{model.__name__}.{key}")
            annotation = field.annotation
            for candidate in getattr(annotation, "__args__", (annotation,)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    walk(candidate)

    walk(Settings)
    walk(SimulatedOptions)
    assert not missing, f"undocumented settings: {missing}"


def test_bad_price_override_stops_serve(tmp_path: Path) -> None:
    config = tmp_path / "t.yaml"
    config.write_text("prices:\n  gpt-4o:\n    input: -3\n")
    result = runner.invoke(app, ["serve", "--config", str(config)])
    assert result.exit_code == 2
    assert "gpt-4o" in result.output and "input" in result.output
