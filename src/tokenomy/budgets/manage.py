"""Managing keys, budgets and rate limits: the operations the admin API and the CLI share.

Inputs are checked here (once, for both front ends) and turned into records;
the HTTP and CLI layers only parse and print.
"""

from __future__ import annotations

import time
from typing import Any

from tokenomy.budgets.keys import KeyService
from tokenomy.budgets.periods import PERIODS, parse_amount_period, zone
from tokenomy.budgets.policy import DEFAULT_THRESHOLDS, MODES, SCOPES, BudgetRule, RateLimitRule
from tokenomy.errors import InvalidRequest
from tokenomy.store.access import AccessStore, KeyRecord, new_id


def _opt_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{name} must be a non-empty string", param=name)
    return value.strip()


def _opt_int(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative integer", param=name)
    return value


def _models(data: dict[str, Any], name: str = "models") -> list[str] | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",") if m.strip()]
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise InvalidRequest(f"{name} must be a list of model names", param=name)
    return value


def budget_from(data: dict[str, Any], *, scope: str | None = None, value: str | None = None) -> BudgetRule:
    """A budget rule from an API/CLI payload; ``amount`` may be ``"200/month"``."""
    window_s = _opt_int(data, "window_s")
    if isinstance(data.get("amount"), str):
        try:
            amount, period, rolling = parse_amount_period(data["amount"])
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="amount") from None
        window_s = rolling or window_s
    else:
        raw = data.get("amount_usd", data.get("amount"))
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
            raise InvalidRequest("amount_usd must be a non-negative number (or amount like '200/month')", param="amount_usd")
        amount = float(raw)
        period = data.get("period", "monthly")
    if period not in PERIODS:
        raise InvalidRequest(f"period must be one of {', '.join(PERIODS)}", param="period")
    if period == "rolling" and not window_s:
        raise InvalidRequest("a rolling budget needs window_s (or amount like '50/24h')", param="window_s")
    scope = scope or data.get("scope", "global")
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    value = value or _opt_str(data, "value") or "*"
    mode = data.get("mode", "hard")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", param="mode")
    downgrade_to = _opt_str(data, "downgrade_to")
    if mode == "downgrade" and not downgrade_to:
        raise InvalidRequest("a downgrade budget needs downgrade_to", param="downgrade_to")
    tz = _opt_str(data, "timezone") or ""
    if tz:
        try:
            zone(tz)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="timezone") from None
    thresholds = data.get("thresholds", list(DEFAULT_THRESHOLDS))
    if not isinstance(thresholds, list) or not all(isinstance(t, (int, float)) and 0 < t <= 10 for t in thresholds):
        raise InvalidRequest("thresholds must be a list of fractions such as [0.5, 0.8, 1.0]", param="thresholds")
    return BudgetRule(
        id=_opt_str(data, "id") or new_id("bud"),
        scope=scope,
        value=value,
        amount_usd=amount,
        period=period,
        window_s=window_s,
        timezone=tz,
        mode=mode,
        downgrade_to=downgrade_to,
        thresholds=tuple(sorted(float(t) for t in thresholds)),
    )


def rate_limit_from(data: dict[str, Any], *, scope: str | None = None, value: str | None = None) -> RateLimitRule | None:
    """A rate-limit rule, or ``None`` if the payload sets no limit."""
    rpm, tpm, concurrent = _opt_int(data, "rpm"), _opt_int(data, "tpm"), _opt_int(data, "concurrent")
    if rpm is None and tpm is None and concurrent is None:
        return None
    scope = scope or data.get("scope", "global")
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    return RateLimitRule(_opt_str(data, "id") or new_id("rl"), scope, value or _opt_str(data, "value") or "*", rpm, tpm, concurrent)


async def create_key(keys: KeyService, access: AccessStore, data: dict[str, Any]) -> tuple[str, KeyRecord, dict[str, Any]]:
    """Create a key (and its own budget / rate limit if asked): ``(secret, record, extras)``."""
    expires_at = data.get("expires_at")
    days = data.get("expires_in_days")
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
            raise InvalidRequest("expires_in_days must be a positive number", param="expires_in_days")
        expires_at = time.time() + float(days) * 86400
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, (int, float))):
        raise InvalidRequest("expires_at must be epoch seconds", param="expires_at")
    budget_spec = data.get("budget")
    rate_spec = {k: data[k] for k in ("rpm", "tpm", "concurrent") if data.get(k) is not None}
    # validate everything before writing anything
    probe_budget = budget_from({"amount": budget_spec} if isinstance(budget_spec, str) else budget_spec or {}, scope="key", value="x") if budget_spec else None
    rate_limit_from(rate_spec, scope="key", value="x")
    secret, record = await keys.create(
        name=_opt_str(data, "name"),
        team=_opt_str(data, "team"),
        org=_opt_str(data, "org"),
        feature=_opt_str(data, "feature"),
        customer=_opt_str(data, "customer"),
        allowed_models=_models(data),
        expires_at=expires_at,
    )
    extras: dict[str, Any] = {}
    if probe_budget is not None:
        spec = {"amount": budget_spec} if isinstance(budget_spec, str) else dict(budget_spec)
        rule = budget_from(spec, scope="key", value=record.id)
        await access.create_budget(rule)
        extras["budget"] = budget_dict(rule)
    limit = rate_limit_from(rate_spec, scope="key", value=record.id)
    if limit is not None:
        await access.create_rate_limit(limit)
        extras["rate_limit"] = rate_limit_dict(limit)
    return secret, record, extras


def budget_dict(rule: BudgetRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "scope": rule.scope,
        "value": rule.value,
        "amount_usd": rule.amount_usd,
        "period": rule.period,
        "window_s": rule.window_s,
        "timezone": rule.timezone or None,
        "mode": rule.mode,
        "downgrade_to": rule.downgrade_to,
        "thresholds": list(rule.thresholds),
    }


def rate_limit_dict(rule: RateLimitRule) -> dict[str, Any]:
    return {"id": rule.id, "scope": rule.scope, "value": rule.value, "rpm": rule.rpm, "tpm": rule.tpm, "concurrent": rule.concurrent}
