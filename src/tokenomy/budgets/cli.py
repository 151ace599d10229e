"""``tokenomy keys …`` and ``tokenomy budgets …``: manage keys and budgets in the gateway's database.

They talk to the database directly (the same one the gateway reads), so they
work whether or not a gateway is running; running gateways pick changes up
within ``budgets.refresh_s`` (rules) and ``keys.cache_ttl_s`` (revocations).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer

from tokenomy.config import Settings
from tokenomy.errors import GatewayError

T = TypeVar("T")

keys_app = typer.Typer(help="Create, list and revoke virtual API keys.", no_args_is_help=True)
budgets_app = typer.Typer(help="Create, list and delete budgets.", no_args_is_help=True)


def _settings(config: Optional[Path]) -> Settings:
    from tokenomy.cli import settings_or_exit

    return settings_or_exit(config)


def _run(settings: Settings, work: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Open the access store (and key service), run ``work(access, keys)``, close."""
    from tokenomy.budgets.factory import make_access_store
    from tokenomy.budgets.keys import KeyService, resolve_pepper

    async def main() -> T:
        access = make_access_store(settings)
        await access.start()
        try:
            return await work(access, KeyService(access, resolve_pepper(settings)))
        finally:
            await access.aclose()

    try:
        return asyncio.run(main())
    except GatewayError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(2) from None




@keys_app.command("create")
def keys_create(
    team: Optional[str] = typer.Option(None, help="Team the key belongs to (created if new)."),
    org: Optional[str] = typer.Option(None, help="Org (defaults to the team's)."),
    name: Optional[str] = typer.Option(None, help="A label for listings."),
    budget: Optional[str] = typer.Option(None, help="The key's own budget, e.g. 200/month, 5/day, 50/24h."),
    models: Optional[str] = typer.Option(None, help="Allowed models, comma-separated (default: any)."),
    feature: Optional[str] = typer.Option(None, help="Bind every call of this key to a feature."),
    customer: Optional[str] = typer.Option(None, help="Bind every call of this key to a customer."),
    rpm: Optional[int] = typer.Option(None, help="Requests per minute."),
    tpm: Optional[int] = typer.Option(None, help="Tokens per minute."),
    concurrent: Optional[int] = typer.Option(None, help="Concurrent requests."),
    expires_in_days: Optional[float] = typer.Option(None, "--expires-in-days", help="Expire after this many days."),
    fmt: str = typer.Option("text", "--format", help="text or json."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """Create a key. Its secret is printed once: store it now."""
    from tokenomy.budgets.manage import create_key

    payload = {
        "team": team, "org": org, "name": name, "budget": budget, "models": models, "feature": feature,
        "customer": customer, "rpm": rpm, "tpm": tpm, "concurrent": concurrent, "expires_in_days": expires_in_days,
    }
    payload = {k: v for k, v in payload.items() if v is not None}
    secret, record, extras = _run(_settings(config), lambda access, keys: create_key(keys, access, payload))
    if fmt == "json":
        typer.echo(json.dumps({"key": secret, **record.as_dict(), **extras}, indent=2))
        return
    typer.echo(f"key id:  {record.id}")
    typer.echo(f"team:    {record.team or '-'}   org: {record.org or '-'}")
    if "budget" in extras:
        b = extras["budget"]
        typer.echo(f"budget:  ${b['amount_usd']:g} {b['period']} (id {b['id']})")
    typer.echo(f"secret:  {secret}")
    typer.echo("This is the only time the secret is shown.", err=True)


@keys_app.command("list")
def keys_list(
    team: Optional[str] = typer.Option(None, help="Only this team's keys."),
    include_revoked: bool = typer.Option(False, "--include-revoked"),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """List keys (ids and hints, never secrets)."""
    records = _run(_settings(config), lambda access, keys: access.list_keys(team, include_revoked))
    if fmt == "json":
        typer.echo(json.dumps([r.as_dict() for r in records], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "hint", "name", "team", "org", "models", "state")
    for r in records:
        state = "revoked" if r.revoked_at else "active"
        table.add_row(r.id, r.hint, r.name or "", r.team or "", r.org or "", ",".join(r.allowed_models or ()) or "any", state)
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key's id (key_…), as shown by `tokenomy keys list`."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """Revoke a key (gateways stop accepting it within keys.cache_ttl_s)."""
    record = _run(_settings(config), lambda access, keys: access.revoke_key(key_id))
    typer.echo(f"revoked {record.id} ({record.hint})")


@budgets_app.command("create")
def budgets_create(
    amount: str = typer.Argument(..., help="Amount and period: 200/month, 5/day, 50/24h, 1000 (lifetime)."),
    scope: str = typer.Option("global", help="global, org, team, key, feature, customer, model, provider."),
    value: str = typer.Option("*", help="The scope's value (e.g. growth); * gives each value its own budget."),
    mode: str = typer.Option("hard", help="hard (block), soft (alert only), downgrade."),
    downgrade_to: Optional[str] = typer.Option(None, "--downgrade-to", help="Cheaper model for downgrade mode."),
    timezone: Optional[str] = typer.Option(None, help="Time zone of calendar periods (default budgets.timezone)."),
    thresholds: str = typer.Option("0.5,0.8,1.0", help="Alert thresholds as fractions."),
    budget_id: Optional[str] = typer.Option(None, "--id", help="Identifier (default: generated)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """Create a budget."""
    from tokenomy.budgets.manage import budget_from

    try:
        levels = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        typer.echo("error: thresholds must be numbers like 0.5,0.8,1.0", err=True)
        raise typer.Exit(2) from None
    spec = {"amount": amount, "scope": scope, "value": value, "mode": mode, "downgrade_to": downgrade_to,
            "timezone": timezone, "thresholds": levels, "id": budget_id}
    spec = {k: v for k, v in spec.items() if v is not None}

    async def work(access: Any, keys: Any) -> Any:
        return await access.create_budget(budget_from(spec))

    rule = _run(_settings(config), work)
    typer.echo(f"created budget {rule.id}: ${rule.amount_usd:g} {rule.period_label()} for {rule.scope} {rule.value} ({rule.mode})")


@budgets_app.command("list")
def budgets_list(
    fmt: str = typer.Option("table", "--format", help="table or json."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """List budgets: those in the config file and those in the database."""
    from tokenomy.budgets.book import rules_from_settings
    from tokenomy.budgets.manage import budget_dict

    settings = _settings(config)
    stored = _run(settings, lambda access, keys: access.list_budgets())
    rows = [(budget_dict(r), "config") for r in rules_from_settings(settings.budgets)[0]]
    rows += [(budget_dict(r), "database") for r in stored]
    if fmt == "json":
        typer.echo(json.dumps([{**row, "source": source} for row, source in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "scope", "value", "amount", "period", "mode", "source")
    for row, source in rows:
        period = f"rolling {row['window_s']}s" if row["period"] == "rolling" else row["period"]
        table.add_row(row["id"], row["scope"], row["value"] or "*", f"${row['amount_usd']:g}", period, row["mode"], source)
    Console().print(table)


@budgets_app.command("delete")
def budgets_delete(
    budget_id: str = typer.Argument(..., help="The budget's id."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", envvar="TOKENOMY_CONFIG", help="Config file."),
) -> None:
    """Delete a budget from the database (config-file budgets are edited in the file)."""
    _run(_settings(config), lambda access, keys: access.delete_budget(budget_id))
    typer.echo(f"deleted budget {budget_id}")
