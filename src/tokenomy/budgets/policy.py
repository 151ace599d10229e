"""Budget and rate-limit rules, and which of them apply to a call.

A rule names a scope (``global``, ``org``, ``team``, ``key``, ``feature``,
``customer``, ``model``, ``provider``) and a value in it (``growth``), or ``*``
for "each value separately" (``customer: *`` gives every end user their own
budget). Several rules may apply to one call; all must hold.

Rules come from the configuration file and from the database (admin API,
CLI); ``PolicySet`` indexes them so matching a call is a few dictionary
lookups, whatever the number of rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenomy.pipeline.call import Call

SCOPES = ("global", "org", "team", "key", "feature", "customer", "model", "provider")
MODES = ("hard", "soft", "downgrade")
EACH = "*"
DEFAULT_THRESHOLDS = (0.5, 0.8, 1.0)


@dataclass(frozen=True, slots=True)
class BudgetRule:
    """Spend at most ``amount_usd`` per ``period`` in one scope value.

    ``mode``: ``hard`` blocks calls that would exceed it, ``soft`` only alerts,
    ``downgrade`` sends them to ``downgrade_to`` (a cheaper model) instead and
    blocks only if even that does not fit.
    """

    id: str
    scope: str
    value: str | None
    amount_usd: float
    period: str = "monthly"
    window_s: int | None = None  # rolling windows only
    timezone: str = "UTC"
    mode: str = "hard"
    downgrade_to: str | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    name: str | None = None

    def describe(self, subject: str) -> str:
        """``team 'growth'`` or ``global`` for messages."""
        if self.scope == "global":
            return "global"
        return f"{self.scope} {subject!r}"

    def period_label(self) -> str:
        if self.period == "rolling":
            return f"rolling {self.window_s}s"
        return self.period


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    """Requests per minute, tokens per minute and concurrent requests in one scope value."""

    id: str
    scope: str
    value: str | None
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None


def subject_of(scope: str, call: Call) -> str | None:
    """The value of ``scope`` for this call (``None``: the call is not in that scope).

    NUL characters are dropped: values become parts of counter keys, and the
    Redis store uses NUL as its field separator (a customer id comes from the
    request body, so it is the client's to choose).
    """
    value = _subject(scope, call)
    if value is not None and "\0" in value:
        value = value.replace("\0", "") or None
    return value


def _subject(scope: str, call: Call) -> str | None:
    identity = call.identity
    if scope == "global":
        return EACH
    if scope == "team":
        return identity.team
    if scope == "key":
        return identity.key_id
    if scope == "customer":
        return identity.customer
    if scope == "feature":
        return identity.feature
    if scope == "org":
        return identity.org
    if scope == "model":
        return call.targets[0].deployment.name if call.targets else call.model_asked
    if scope == "provider":
        return call.targets[0].deployment.provider if call.targets else None
    return None


@dataclass(slots=True)
class _Index:
    by_value: dict[str, dict[str, list]] = field(default_factory=dict)  # scope -> value -> rules

    def add(self, scope: str, value: str | None, rule: object) -> None:
        key = EACH if value is None or scope == "global" else value
        self.by_value.setdefault(scope, {}).setdefault(key, []).append(rule)

    def match(self, call: Call) -> list[tuple[object, str]]:
        found: list[tuple[object, str]] = []
        for scope, values in self.by_value.items():
            subject = subject_of(scope, call)
            if subject is None:
                continue
            for rule in values.get(subject, ()):
                found.append((rule, subject))
            if subject != EACH:
                for rule in values.get(EACH, ()):
                    found.append((rule, subject))
        return found


class PolicySet:
    """The rules in force, indexed for matching."""

    def __init__(self, budgets: Iterable[BudgetRule] = (), limits: Iterable[RateLimitRule] = ()) -> None:
        self.budgets = list(budgets)
        self.limits = list(limits)
        self._budgets = _Index()
        self._limits = _Index()
        for rule in self.budgets:
            self._budgets.add(rule.scope, rule.value, rule)
        for limit in self.limits:
            self._limits.add(limit.scope, limit.value, limit)

    def __bool__(self) -> bool:
        return bool(self.budgets or self.limits)

    def budgets_for(self, call: Call) -> list[tuple[BudgetRule, str]]:
        """Every budget that applies to the call, with the scope value it is counted under."""
        return self._budgets.match(call)  # type: ignore[return-value]

    def limits_for(self, call: Call) -> list[tuple[RateLimitRule, str]]:
        return self._limits.match(call)  # type: ignore[return-value]
