"""The budget reservation of a batch passed through to a provider's batch API.

Such a batch's lines never reach the pipeline's budget stage (the provider runs
them), so they are reserved here, before the batch is submitted, in every budget
that applies to the submitting key — key, team, org, feature, customer, model,
provider, global — exactly as a call's would be: each line's worst case (its
counted prompt and output cap, at the provider's batch prices), summed, in one
atomic reservation across all scopes. The leading lines that fit are submitted;
the others are answered ``budget_exceeded`` in the error file and never sent.
How many fit is found by bisection: O(log n) reservations, each all-or-nothing,
so concurrent calls and batches can never both take the last dollar.

The reservation lives until the results are collected (up to the batch's
completion window) and is stored with the batch (``batches.reservation``), so
whichever worker collects the results settles it to what the lines cost.

Rate limits (requests and tokens per minute, concurrency) do not apply to these
lines: they are not real-time traffic, and the provider's batch queue paces
them. A ``downgrade`` budget refuses like a hard one: an upstream batch cannot
switch models line by line.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenomy.budgets.counters import Charge, CounterStoreUnavailable
from tokenomy.budgets.enforcer import BudgetEnforcer, check_model_allowed
from tokenomy.budgets.estimate import Estimate
from tokenomy.budgets.periods import window
from tokenomy.budgets.policy import BudgetRule
from tokenomy.budgets.ticket import ChargeInfo, Ticket
from tokenomy.errors import BudgetExceeded, GatewayError, PermissionDenied
from tokenomy.pipeline.call import Call


@dataclass(frozen=True, slots=True)
class HeldReservation:
    """One reservation in the counter store: its id and charges (one per budget)."""

    reservation_id: str
    charges: tuple[Charge, ...]


@dataclass(slots=True)
class BatchReservation:
    """What was reserved for a pass-through batch, and for how many of its leading lines.

    The search for how many lines fit reserves in steps, each step on top of the
    previous ones, so the batch holds a few reservations (``held``) that add up to
    the admitted lines' worst case.
    """

    at: float
    admitted: int
    held: list[HeldReservation] = field(default_factory=list)
    #: (budget id, scope value) of each charge, to find its rule again for alerts
    subjects: list[tuple[str, str]] = field(default_factory=list)
    #: the error (status, OpenAI envelope) of the lines not admitted
    refusal: tuple[int, dict[str, Any]] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "admitted": self.admitted,
            "held": [
                {"id": h.reservation_id, "charges": [_charge_json(c) for c in h.charges]} for h in self.held
            ],
            "subjects": [list(s) for s in self.subjects],
            "refusal": {"status": self.refusal[0], "body": self.refusal[1]} if self.refusal else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchReservation:
        refusal = data.get("refusal")
        return cls(
            at=float(data.get("at") or 0.0),
            admitted=int(data.get("admitted") or 0),
            held=[
                HeldReservation(h["id"], tuple(_charge_from(c) for c in h["charges"])) for h in data.get("held") or ()
            ],
            subjects=[(s[0], s[1]) for s in data.get("subjects") or ()],
            refusal=(int(refusal["status"]), refusal["body"]) if refusal else None,
        )


def _charge_json(charge: Charge) -> dict[str, Any]:
    return {"key": charge.key, "amount": charge.amount, "limit": charge.limit, "window": list(charge.window),
            "ttl_s": charge.ttl_s}  # fmt: skip


def _charge_from(data: dict[str, Any]) -> Charge:
    return Charge(data["key"], int(data["amount"]), data["limit"], tuple(data["window"]), int(data["ttl_s"]))


async def reserve_batch(
    enforcer: BudgetEnforcer, call: Call, line_costs: Sequence[int], ttl_s: float, *, unpriced: bool = False
) -> BatchReservation:
    """Reserve the worst cases (nano-dollars, in file order) of as many leading lines as fit.

    ``call`` stands for every line: who submitted the batch and the deployment
    that runs it. ``unpriced``: the model's price is unknown (refused when a
    budget applies and ``budgets.unpriced`` is ``deny``, as calls are). Raises
    ``BudgetStoreUnavailable`` when the store is down and ``budgets.fail_mode``
    is closed (the batch is retried later).
    """
    now = enforcer.clock()
    total = len(line_costs)
    try:
        check_model_allowed(call)
    except GatewayError as err:
        return BatchReservation(now, 0, refusal=(err.status, err.envelope()))
    policies = enforcer.policies()
    budgets: list[tuple[BudgetRule, str]] = policies.budgets_for(call) if policies else []
    if not budgets:
        return BatchReservation(now, total)
    if unpriced and enforcer.settings.unpriced == "deny":
        err = PermissionDenied(
            f"model {call.model_asked!r} has no known price, so its budget cannot be enforced", code="unpriced_model"
        )
        return BatchReservation(now, 0, refusal=(err.status, err.envelope()))
    prefix = [0]
    for cost in line_costs:
        prefix.append(prefix[-1] + cost)
    search = _Bisection(enforcer, call, budgets, prefix, now, ttl_s)
    try:
        return await search.run()
    except CounterStoreUnavailable as exc:
        await search.release()
        enforcer.store_down(exc, call)  # raises when failing closed
        return BatchReservation(now, total)
    except BaseException:
        await search.release()
        raise


async def settle_batch(enforcer: BudgetEnforcer, reservation: BatchReservation, usd: float) -> None:
    """Replace the batch's reservations by what its lines cost (0 if none ran); alerts as for a call."""
    if not reservation.held:
        return
    rules = {rule.id: rule for rule in (enforcer.policies().budgets if enforcer.policies() else ())}
    infos = []
    for rule_id, subject in reservation.subjects:
        rule = rules.get(rule_id)  # a budget deleted meanwhile is still settled, without alerts
        win = window(rule.period, reservation.at, rule.timezone, rule.window_s) if rule is not None else None
        infos.append(ChargeInfo("budget", rule, subject, win, rule.scope if rule is not None else ""))
    for index, held in enumerate(reservation.held):
        ticket = Ticket(held.reservation_id, list(held.charges), infos, Estimate(0, 0, None, None))
        # the cost is settled on the first step; the others are released
        await enforcer.settle_spend(ticket, usd if index == 0 else 0.0, 0, request_id=held.reservation_id)


class _Bisection:
    """Finds the longest prefix of lines whose summed worst case fits every budget, holding its reservation.

    Each successful probe reserves only the lines beyond those already held, so what
    is held always adds up to the prefix that fits (never counted twice).
    """

    def __init__(
        self,
        enforcer: BudgetEnforcer,
        call: Call,
        budgets: list[tuple[BudgetRule, str]],
        prefix: list[int],
        now: float,
        ttl_s: float,
    ) -> None:
        self.enforcer = enforcer
        self.call = call
        self.budgets = budgets
        self.prefix = prefix
        self.now = now
        self.ttl_s = ttl_s
        self.fits = 0
        self.held: list[HeldReservation] = []

    async def run(self) -> BatchReservation:
        total = len(self.prefix) - 1
        if await self._extend(total):  # the common case: the whole batch fits, one round trip
            return self._result(None)
        refused = total
        while refused - self.fits > 1:
            middle = (self.fits + refused) // 2
            if not await self._extend(middle):
                refused = middle
        return self._result(await self._refusal(total))

    async def _extend(self, lines: int) -> bool:
        """Reserve lines ``fits+1 … lines`` on top of what is held; ``False`` if they do not fit."""
        amount = self.prefix[lines] - self.prefix[self.fits]
        charges, _ = self.enforcer.budget_charges(self.budgets, amount, self.now)
        reservation_id = "rsv_" + uuid.uuid4().hex
        admission = await self.enforcer.store.reserve(reservation_id, charges, self.ttl_s)
        if not admission.admitted:
            return False
        self.held.append(HeldReservation(reservation_id, tuple(charges)))
        self.fits = lines
        return True

    async def release(self) -> None:
        """Give back everything held (the search failed half-way)."""
        held, self.held = self.held, []
        for piece in held:
            await self.enforcer.store.settle(piece.reservation_id, piece.charges, [0] * len(piece.charges))

    async def _refusal(self, total: int) -> tuple[int, dict[str, Any]]:
        """The error of the first line that did not fit, as a call's refusal reads (scope, remaining, reset)."""
        fits = self.fits
        amount = self.prefix[fits + 1] - self.prefix[fits]
        charges, infos = self.enforcer.budget_charges(self.budgets, amount, self.now)
        probe = "rsv_" + uuid.uuid4().hex
        admission = await self.enforcer.store.reserve(probe, charges, self.ttl_s)
        err: GatewayError
        if admission.admitted:  # room came back meanwhile; the line still was not reserved
            await self.enforcer.store.settle(probe, charges, [0] * len(charges))
            err = BudgetExceeded(
                f"Budget exceeded: this batch's budgets had room for the worst case of {fits} of its {total} lines."
            )
        else:
            assert admission.refused is not None
            index = admission.refused
            err = self.enforcer.refusal(self.call, infos[index], charges[index], admission.totals[index], self.now)
        return err.status, err.envelope()

    def _result(self, refusal: tuple[int, dict[str, Any]] | None) -> BatchReservation:
        subjects = [(rule.id, subject) for rule, subject in self.budgets] if self.held else []
        return BatchReservation(self.now, self.fits, list(self.held), subjects, refusal)
