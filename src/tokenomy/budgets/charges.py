"""Charge templates: what a rule's charge is made of, built once per window and reused by every call.

Two calls of the same key a second apart differ only in their amounts: the
counter keys (twelve slot keys for a rolling budget, six for a rate limit's
minute), the limit in nano-dollars, the counters' lifetime and what the charge
stands for are the same until the window moves on — a day for a daily budget,
ten seconds for a rate limit's slot. ``ChargeTemplates`` builds them once per
(rule, subject, window) and hands out the same objects after that; charges
whose amount never varies (one request, one concurrency slot, a zero meter)
are themselves reused. A template is rebuilt when its window moves on or its
rule is replaced (rules re-read from the database are new objects).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenomy.budgets.counters import Charge, to_nano
from tokenomy.budgets.periods import Window, window
from tokenomy.budgets.policy import BudgetRule, RateLimitRule
from tokenomy.budgets.ticket import ChargeInfo

#: Rate limits count over a rolling minute, in six ten-second slots.
MINUTE = 60
MINUTE_SLOTS = 6

#: Templates kept before the cache is cleared (one per rule and subject in force: keys, customers…).
TEMPLATE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class ChargeTemplate:
    """One rule's charge in one window, all but its amount."""

    key: str
    limit: int | None
    window: tuple[str, ...]
    ttl_s: int
    report: bool
    info: ChargeInfo
    #: the charge itself, for kinds whose amount is fixed (requests, concurrency, meters, blocks)
    fixed: Charge | None = None

    def charge(self, amount: int) -> Charge:
        return Charge(self.key, amount, self.limit, self.window, self.ttl_s, self.report)


class ChargeTemplates:
    """Templates by rule and subject, for the enforcer's counters under ``prefix``."""

    def __init__(self, prefix: str = "", *, concurrency_ttl_s: int = 3600, limit: int = TEMPLATE_LIMIT) -> None:
        self.prefix = prefix
        self.concurrency_ttl_s = concurrency_ttl_s
        self.limit = limit
        self._budgets: dict[tuple[str, str], tuple[BudgetRule, Window, ChargeTemplate]] = {}
        self._limits: dict[tuple[str, str], tuple[RateLimitRule, Window, tuple[ChargeTemplate, ...]]] = {}
        self._meters: dict[tuple[str, str], tuple[int, tuple[ChargeTemplate, ...]]] = {}

    def budget(self, rule: BudgetRule, subject: str, now: float) -> ChargeTemplate:
        """The charge of budget ``rule`` for ``subject`` on the counters of the window containing ``now``."""
        win = window(rule.period, now, rule.timezone, rule.window_s)
        found = self._budgets.get((rule.id, subject))
        if found is not None and found[0] is rule and found[1] is win:
            return found[2]
        keys = tuple(f"{self.prefix}b:{rule.id}:{subject}:{bucket}" for bucket in win.buckets)
        limit = None if rule.mode == "soft" else to_nano(rule.amount_usd)
        template = ChargeTemplate(keys[0], limit, keys, win.ttl_s, True, ChargeInfo("budget", rule, subject, win, rule.scope))
        self._remember(self._budgets, (rule.id, subject), (rule, win, template))
        return template

    def rate_limit(self, rule: RateLimitRule, subject: str, now: float) -> tuple[ChargeTemplate, ...]:
        """Requests, tokens and concurrency charges of ``rule`` for ``subject`` (those it limits).

        The tokens template has no fixed charge: its amount is the call's worst case.
        """
        minute = window("rolling", now, seconds=MINUTE, slots=MINUTE_SLOTS)
        found = self._limits.get((rule.id, subject))
        if found is not None and found[0] is rule and found[1] is minute:
            return found[2]
        base = f"{self.prefix}rl:{rule.id}:{subject}"
        templates: list[ChargeTemplate] = []
        if rule.rpm is not None:
            keys = tuple(f"{base}:rq:{bucket}" for bucket in minute.buckets)
            info = ChargeInfo("requests", rule, subject, minute, rule.scope)
            fixed = Charge(keys[0], 1, rule.rpm, keys, minute.ttl_s, report=False)
            templates.append(ChargeTemplate(keys[0], rule.rpm, keys, minute.ttl_s, False, info, fixed))
        if rule.tpm is not None:
            keys = tuple(f"{base}:tk:{bucket}" for bucket in minute.buckets)
            info = ChargeInfo("tokens", rule, subject, minute, rule.scope)
            templates.append(ChargeTemplate(keys[0], rule.tpm, keys, minute.ttl_s, False, info))
        if rule.concurrent is not None:
            key = f"{base}:cc"
            ttl = self.concurrency_ttl_s
            info = ChargeInfo("concurrent", rule, subject, None, rule.scope)
            fixed = Charge(key, 1, rule.concurrent, (key,), ttl, report=False)
            templates.append(ChargeTemplate(key, rule.concurrent, (key,), ttl, False, info, fixed))
        out = tuple(templates)
        self._remember(self._limits, (rule.id, subject), (rule, minute, out))
        return out

    def meter(self, scope: str, subject: str, slot: int, ttl_s: int, throttle: bool) -> tuple[ChargeTemplate, ...]:
        """The runaway meter of a scope value in ``slot`` (a zero reservation), plus its throttle block."""
        found = self._meters.get((scope, subject))
        if found is not None and found[0] == slot and len(found[1]) == (2 if throttle else 1):
            return found[1]
        key = f"{self.prefix}rw:{scope}:{subject}:{slot}"
        meter = Charge(key, 0, None, (key,), ttl_s, report=False)
        templates = [ChargeTemplate(key, None, (key,), ttl_s, False, ChargeInfo("meter", None, subject, None, scope), meter)]
        if throttle:
            block = f"{self.prefix}blk:{scope}:{subject}"
            fixed = Charge(block, 0, 0, (block,), 0, report=False)
            templates.append(ChargeTemplate(block, 0, (block,), 0, False, ChargeInfo("block", None, subject, None, scope), fixed))
        out = tuple(templates)
        self._remember(self._meters, (scope, subject), (slot, out))
        return out

    def _remember(self, cache: dict, key: tuple[str, str], value: object) -> None:
        if len(cache) >= self.limit:
            cache.clear()  # windows move on: old subjects' templates are rebuilt when next used
        cache[key] = value
