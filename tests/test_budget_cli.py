"""``tokenomy keys`` and ``tokenomy budgets`` against a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from tokenomy.cli import app


def run(config: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_and_budgets_commands(tmp_path: Path) -> None:
    config = tmp_path / "tokenomy.yaml"
    config.write_text(
        yaml.safe_dump({"ledger": {"url": f"sqlite:///{tmp_path}/db.sqlite"}, "keys": {"pepper_file": str(tmp_path / "p")}})
    )
    created = json.loads(
        run(config, "keys", "create", "--team", "growth", "--budget", "200/month", "--models", "sim-mini,sim-haiku", "--format", "json")
    )
    secret = created["key"]
    assert secret.startswith("tk-") and created["budget"]["amount_usd"] == 200 and created["budget"]["period"] == "monthly"
    assert created["allowed_models"] == ["sim-mini", "sim-haiku"]
    listed = json.loads(run(config, "keys", "list", "--format", "json"))
    assert [k["id"] for k in listed] == [created["id"]] and secret not in json.dumps(listed)
    assert "revoked" in run(config, "keys", "revoke", created["id"])
    assert json.loads(run(config, "keys", "list", "--format", "json")) == []

    out = run(config, "budgets", "create", "50/24h", "--scope", "team", "--value", "growth", "--id", "growth-rolling")
    assert "growth-rolling" in out
    budgets = {b["id"]: b for b in json.loads(run(config, "budgets", "list", "--format", "json"))}
    assert budgets["growth-rolling"]["period"] == "rolling" and budgets["growth-rolling"]["window_s"] == 86400
    run(config, "budgets", "delete", "growth-rolling")
    assert "growth-rolling" not in run(config, "budgets", "list", "--format", "json")
    assert secret.encode() not in (tmp_path / "db.sqlite").read_bytes()


def test_bad_budget_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "tokenomy.yaml"
    config.write_text(yaml.safe_dump({"ledger": {"url": f"sqlite:///{tmp_path}/db.sqlite"}}))
    result = CliRunner().invoke(app, ["budgets", "create", "lots/month", "--config", str(config)])
    assert result.exit_code == 2 and "amount must be a number" in result.output


def test_serve_refuses_several_workers_on_the_memory_backend(tmp_path: Path) -> None:
    config = tmp_path / "tokenomy.yaml"
    config.write_text(yaml.safe_dump({"budgets": {"budgets": [{"id": "g", "amount_usd": 10}]}}))
    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--config", str(config)])
    assert result.exit_code == 2 and "budgets.backend" in result.output
