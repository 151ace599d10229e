"""Reserve → settle: the budget and rate-limit logic behind ``BudgetStage``.

``admit`` finds every rule that applies to a call, turns them into counter
charges (worst-case dollars for budgets, one request and worst-case tokens for
rate limits, one slot for concurrency, a zero-cost meter for runaway
detection) and reserves them all in one atomic store call. ``settle`` replaces
the reservation by what the call actually cost, then checks alert thresholds
and spend rates. Calls no rule applies to cost nothing but a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from tokenomy.budgets import metrics
from tokenomy.budgets.alerts import AlertDispatcher
from tokenomy.budgets.charges import ChargeTemplates
from tokenomy.budgets.counters import NANO, Charge, CounterStore, CounterStoreUnavailable, from_nano, to_nano
from tokenomy.budgets.estimate import estimate
from tokenomy.budgets.periods import Window, format_reset
from tokenomy.budgets.policy import BudgetRule, PolicySet, RateLimitRule
from tokenomy.budgets.runaway import RunawayDetector
from tokenomy.budgets.thresholds import ThresholdAlerts
from tokenomy.budgets.ticket import ChargeInfo, Ticket
from tokenomy.config import BudgetSettings
from tokenomy.errors import (
    BudgetExceeded,
    BudgetStoreUnavailable,
    GatewayError,
    ModelNotAllowed,
    PermissionDenied,
    RateLimited,
    RateLimitExceeded,
)
from tokenomy.models import ModelRegistry
from tokenomy.pipeline.call import Call
from tokenomy.routing.attempts import AttemptPlanner

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class BudgetEnforcer:
    """Admits calls against budgets and rate limits and settles them to their actual cost."""

    def __init__(
        self,
        settings: BudgetSettings,
        store: CounterStore,
        policies: Callable[[], PolicySet],
        *,
        registry: ModelRegistry | None = None,
        alerts: AlertDispatcher | None = None,
        runaway: RunawayDetector | None = None,
        planner: AttemptPlanner | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.policies = policies
        self.registry = registry
        #: what a call may pay for (fallbacks, cascade levels, judges); ``None``: one answer from its targets
        self.planner = planner
        self.alerts = alerts
        self.runaway = runaway
        self.clock = clock
        #: counter keys start with the store's own prefix (Redis) or nothing (memory)
        self.prefix: str = getattr(store, "prefix", "")
        self.store_failures = 0
        self.templates = ChargeTemplates(self.prefix, concurrency_ttl_s=int(settings.reservation_ttl_s) + 3600)
        self._id_base = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        self._pending: set[asyncio.Future[Any]] = set()  # background settles, alerts and checks
        self.thresholds = ThresholdAlerts(store, alerts, prefix=self.prefix, clock=clock) if alerts is not None else None

    # admission --------------------------------------------------------------

    async def admit(self, call: Call) -> Ticket | None:
        """Reserve the call's worst case in every scope; raise if any would be exceeded."""
        check_model_allowed(call)
        policies = self.policies()
        budgets = policies.budgets_for(call) if policies else []
        limits = policies.limits_for(call) if policies else []
        meters = self.runaway.subjects(call) if self.runaway is not None else []
        if not budgets and not limits and not meters:
            return None
        return await self._admit(call, budgets, limits, meters, downgraded=False)

    async def _admit(
        self,
        call: Call,
        budgets: list[tuple[BudgetRule, str]],
        limits: list[tuple[RateLimitRule, str]],
        meters: list[tuple[str, str]],
        *,
        downgraded: bool,
    ) -> Ticket | None:
        est = estimate(
            call, self.settings.output_cap_tokens, enforce_cap=self.settings.enforce_output_cap, planner=self.planner
        )
        if est.usd is None and budgets and self.settings.unpriced == "deny":
            raise PermissionDenied(
                f"model {call.model_asked!r} has no known price, so its budget cannot be enforced",
                code="unpriced_model",
            )
        now = self.clock()
        reserve_nano = to_nano(est.usd) if est.usd is not None else 0
        templates = self.templates
        charges: list[Charge] = []
        infos: list[ChargeInfo] = []
        for rule, subject in budgets:
            template = templates.budget(rule, subject, now)
            charges.append(template.charge(reserve_nano))
            infos.append(template.info)
        for limit_rule, subject in limits:
            for template in templates.rate_limit(limit_rule, subject, now):
                charges.append(template.fixed or template.charge(est.tokens))
                infos.append(template.info)
        if self.runaway is not None:
            for template in self.runaway.templates(meters, now):
                charges.append(template.fixed or template.charge(0))
                infos.append(template.info)
        ticket = Ticket(self._reservation_id(), charges, infos, est)
        try:
            admission = await self.store.reserve(ticket.reservation_id, charges, self.settings.reservation_ttl_s)
        except CounterStoreUnavailable as exc:
            return self.store_down(exc, call)
        if not admission.admitted:
            assert admission.refused is not None
            info = infos[admission.refused]
            total = admission.totals[admission.refused]
            charge = charges[admission.refused]
            if info.kind == "budget" and info.rule.mode == "downgrade" and not downgraded:
                if self._downgrade(call, info.rule):
                    metrics.DOWNGRADED.labels(info.scope).inc()
                    return await self._admit(call, budgets, limits, meters, downgraded=True)
            raise self.refusal(call, info, charge, total, now)
        ticket.headers = self._headers(charges, infos, admission.totals, now)
        ticket.totals = admission.totals
        return ticket

    def _reservation_id(self) -> str:
        """Unique across replicas (a random process part) and within the process (a counter)."""
        return f"rsv_{self._id_base}{next(self._ids):x}"

    def budget_charges(
        self, budgets: list[tuple[BudgetRule, str]], amount_nano: int, now: float
    ) -> tuple[list[Charge], list[ChargeInfo]]:
        """One charge of ``amount_nano`` per budget, on the counters of its current window."""
        charges: list[Charge] = []
        infos: list[ChargeInfo] = []
        for rule, subject in budgets:
            template = self.templates.budget(rule, subject, now)
            charges.append(template.charge(amount_nano))
            infos.append(template.info)
        return charges, infos

    def _settled_charges(self, ticket: Ticket) -> list[Charge]:
        """The ticket's charges as the settle sends them: a budget's new total is asked for only if it
        may have crossed an alert threshold.

        The total at reservation already counts this call's worst case, and a
        settle only lowers it (actual ≤ reserved), so below the lowest threshold
        there is nothing to alert on — and the store need not sum the window again.
        Tickets without reservation totals (batches) report every budget.
        """
        charges, totals = ticket.charges, ticket.totals
        if not totals:
            return charges
        out = charges
        for index, (charge, info, total) in enumerate(zip(charges, ticket.infos, totals)):
            if info.kind != "budget" or not charge.report:
                continue
            rule: BudgetRule = info.rule
            if self.thresholds is not None and rule.thresholds and total >= min(rule.thresholds) * rule.amount_usd * NANO:
                continue
            if out is charges:
                out = list(charges)
            out[index] = Charge(charge.key, charge.amount, charge.limit, charge.window, charge.ttl_s, False)
        return out

    def store_down(self, exc: CounterStoreUnavailable, call: Call) -> None:
        """The counter store failed: let the call through uncounted (fail open) or raise (closed)."""
        self.store_failures += 1
        mode = self.settings.fail_mode
        metrics.STORE_UNAVAILABLE.labels(mode).inc()
        if mode == "open":
            log.warning("budget store unreachable, failing OPEN for %s (not counted): %s", call.request_id, exc)
            call.annotations["budget"] = "unenforced"
            return None
        log.error("budget store unreachable, failing CLOSED for %s: %s", call.request_id, exc)
        raise BudgetStoreUnavailable(
            "Budgets cannot be checked right now (the counter store is unreachable); try again shortly."
        ) from exc

    def _downgrade(self, call: Call, rule: BudgetRule) -> bool:
        if self.registry is None or not rule.downgrade_to:
            return False
        try:
            entry = self.registry.resolve(rule.downgrade_to, call.kind)
        except GatewayError:
            log.error("budget %s: downgrade model %r is not available", rule.id, rule.downgrade_to)
            return False
        cascade = call.annotations.get("cascade")
        if cascade is None and call.targets and call.targets[0].deployment.name == entry.name:
            return False
        call.annotations["budget_downgraded_from"] = call.targets[0].deployment.name if call.targets else None
        call.targets = entry.targets
        # the downgrade model answers alone: no escalation to the cascade's dearer levels
        call.annotations.pop("cascade", None)
        return True

    def refusal(self, call: Call, info: ChargeInfo, charge: Charge, total: int, now: float) -> GatewayError:
        metrics.REJECTED.labels(info.kind, info.scope or "runaway").inc()
        if info.kind == "budget":
            rule: BudgetRule = info.rule
            assert info.window is not None and charge.limit is not None
            remaining = max(0, charge.limit - total)
            reset = info.window.reset_at
            headers = {
                "x-tokenomy-budget-remaining-usd": _usd(remaining),
                "x-tokenomy-budget-scope": f"{rule.scope}:{info.subject}",
            }
            if reset is not None:
                headers["retry-after"] = str(max(1, math.ceil(reset - now)))
            if self.thresholds is not None:
                self._background(self.thresholds.exhausted(info, total))
            return BudgetExceeded(
                f"Budget exceeded for {rule.describe(info.subject)} ({rule.period_label()} budget "
                f"${rule.amount_usd:.2f}, id {rule.id}): ${from_nano(remaining):.6f} remaining, this request "
                f"needs up to ${from_nano(charge.amount):.6f}; resets at {format_reset(reset)}.",
                headers=headers,
            )
        if info.kind == "block":
            return RateLimited(
                f"Spending by {info.scope} {info.subject!r} is running far above its usual rate; "
                "its calls are paused for a while. Ask an administrator to review it.",
                code="runaway_throttled",
                headers={"retry-after": str(self.runaway.settings.throttle_s if self.runaway else 60)},
            )
        rule_l: RateLimitRule = info.rule
        what = {
            "requests": f"{rule_l.rpm} requests per minute",
            "tokens": f"{rule_l.tpm} tokens per minute (this request may use {charge.amount})",
            "concurrent": f"{rule_l.concurrent} concurrent requests",
        }[info.kind]
        retry = 1 if info.kind == "concurrent" else _seconds_until(info.window, now)
        return RateLimitExceeded(
            f"Rate limit reached for {info.scope} {info.subject!r}: {what}. Try again in {retry}s.",
            headers={"retry-after": str(retry)},
        )

    def _headers(self, charges: list[Charge], infos: list[ChargeInfo], totals: tuple[int, ...], now: float) -> dict[str, str]:
        headers: dict[str, str] = {}
        budget_left: int | None = None
        best: dict[str, tuple[int, int, ChargeInfo]] = {}
        for charge, info, total in zip(charges, infos, totals):
            if charge.limit is None:
                continue
            left = max(0, charge.limit - total)
            if info.kind == "budget":
                budget_left = left if budget_left is None else min(budget_left, left)
            elif info.kind in ("requests", "tokens"):
                seen = best.get(info.kind)
                if seen is None or left < seen[1]:
                    best[info.kind] = (charge.limit, left, info)
        if budget_left is not None:
            headers["x-tokenomy-budget-remaining-usd"] = _usd(budget_left)
        for kind, (limit, left, info) in best.items():
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(left)
            headers[f"x-ratelimit-reset-{kind}"] = f"{_seconds_until(info.window, now)}s"
        return headers

    # settlement ---------------------------------------------------------------

    def settle_later(self, ticket: Ticket | None, call: Call, exc: BaseException | None = None) -> None:
        """Settle off the request's path: the answer does not wait for the store.

        The store queues the settle and does its work after the answer has gone
        (the Redis store sends the settles of a few milliseconds together).
        Alert and runaway checks follow only when a total calls for them, so a
        plain call schedules no task at all.
        """
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        usd, tokens = self._spent(ticket, call, exc)
        future = self.store.settle_soon(
            ticket.reservation_id, self._settled_charges(ticket), self._actual(ticket, usd, tokens)
        )
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._settled, ticket, call.request_id))

    def _settled(self, ticket: Ticket, request_id: str, done: asyncio.Future[tuple[int, ...]]) -> None:
        self._pending.discard(done)
        if done.cancelled():
            log.error("settling %s was cancelled; its reservation will expire", request_id or ticket.reservation_id)
            return
        exc = done.exception()
        if exc is not None:
            # the reservation expires on its own; the ledger still has the cost for reconciliation
            log.error("settling %s failed (%s); its reservation will expire", request_id or ticket.reservation_id, exc)
            return
        totals = done.result()
        if self._follow_up_due(ticket, totals):
            self._background(self._after_settle(ticket, totals))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self, ticket: Ticket | None, call: Call, exc: BaseException | None = None) -> None:
        """Replace the reservation with the actual cost (at least the input if the client left)."""
        if ticket is None or ticket.settled:
            return
        usd, tokens = self._spent(ticket, call, exc)
        await self.settle_spend(ticket, usd, tokens, request_id=call.request_id)

    @staticmethod
    def _spent(ticket: Ticket, call: Call, exc: BaseException | None) -> tuple[float, int]:
        """What the call cost: its trace, or at least its input if it reached upstream and the client left."""
        usd = call.trace.total_usd or 0.0
        tokens = call.trace.usage().total_tokens
        if not call.trace.items and exc is not None and _client_left(exc) and call.provider is not None:
            usd = ticket.estimate.input_usd or 0.0
            tokens = ticket.estimate.input_tokens
        return usd, tokens

    @staticmethod
    def _actual(ticket: Ticket, usd: float, tokens: int) -> list[int]:
        """Each charge's actual amount, in the ticket's order."""
        spent = to_nano(usd)
        actual = []
        for info in ticket.infos:
            kind = info.kind
            if kind == "budget" or kind == "meter":
                actual.append(spent)
            elif kind == "requests":
                actual.append(1)
            elif kind == "tokens":
                actual.append(tokens)
            else:  # concurrent slots are given back; blocks cost nothing
                actual.append(0)
        return actual

    async def settle_spend(self, ticket: Ticket, usd: float, tokens: int, *, request_id: str = "") -> None:
        """Replace the reservation with ``usd`` spent and ``tokens`` used, once."""
        if ticket.settled:
            return
        ticket.settled = True
        try:
            totals = await self.store.settle(
                ticket.reservation_id, self._settled_charges(ticket), self._actual(ticket, usd, tokens)
            )
        except CounterStoreUnavailable as exc_store:
            # the reservation expires on its own; the ledger still has the cost for reconciliation
            log.error("settling %s failed (%s); its reservation will expire", request_id or ticket.reservation_id, exc_store)
            return
        await self._after_settle(ticket, totals)

    def _follow_up_due(self, ticket: Ticket, totals: tuple[int, ...]) -> bool:
        """Whether a threshold may have been crossed or a runaway check is due (``_after_settle`` has work)."""
        for info, total in zip(ticket.infos, totals):
            if info.kind == "budget":
                if self.thresholds is not None and info.rule is not None and self.thresholds.due(info, total):
                    return True
            elif info.kind == "meter":
                if self.runaway is not None and self.runaway.due(info.scope, info.subject):
                    return True
        return False

    async def _after_settle(self, ticket: Ticket, totals: tuple[int, ...]) -> None:
        for info, charge, total in zip(ticket.infos, ticket.charges, totals):
            if info.kind == "budget" and self.thresholds is not None and info.rule is not None:
                await self.thresholds.check(info, total)
            elif info.kind == "meter" and self.runaway is not None:
                await self.runaway.observe(info.scope, info.subject)

    async def drain(self) -> None:
        """Wait for background settles and alerts (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


def check_model_allowed(call: Call) -> None:
    allowed = call.identity.allowed_models
    if allowed is None:
        return
    names = {call.model_asked}
    if call.targets:
        names.add(call.targets[0].deployment.name)
    if not names & allowed:
        raise ModelNotAllowed(
            f"this API key may not use model {call.model_asked!r}; allowed: {', '.join(sorted(allowed)) or 'none'}",
            param="model",
        )


def _client_left(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError) or type(exc).__name__ == "ClientGone"


def _usd(nano: int) -> str:
    return f"{nano / NANO:.6f}"


def _seconds_until(win: Window | None, now: float) -> int:
    if win is None or win.reset_at is None:
        return 1
    return max(1, math.ceil(win.reset_at - now))
