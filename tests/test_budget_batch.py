"""A pass-through batch's reservation, on both counter stores: as many leading lines as fit,
held across scopes so that concurrent calls can never share the last dollar, then settled."""

from __future__ import annotations

import pytest

from tests.budget_fixtures import FakeClock
from tokenomy.budgets.batch import BatchReservation, reserve_batch, settle_batch
from tokenomy.budgets.counters import NANO, CounterStore
from tokenomy.budgets.enforcer import BudgetEnforcer
from tokenomy.budgets.policy import BudgetRule, PolicySet
from tokenomy.config import BudgetSettings
from tokenomy.pipeline.call import Call, Identity

LINE = 1000  # nano-dollars per line's worst case


def enforcer_for(counters: CounterStore, clock: FakeClock, *rules: BudgetRule) -> BudgetEnforcer:
    policies = PolicySet(rules)
    return BudgetEnforcer(BudgetSettings(), counters, lambda: policies, clock=clock)


def batch_call(key_id: str = "key_a", team: str = "growth") -> Call:
    return Call(kind="chat", body={}, model_asked="gpt-batch", identity=Identity(key_id=key_id, team=team))


async def spent(counters: CounterStore, rule_id: str, subject: str, enforcer: BudgetEnforcer) -> int:
    rule = next(r for r in enforcer.policies().budgets if r.id == rule_id)
    charges, _ = enforcer.budget_charges([(rule, subject)], 0, enforcer.clock())
    return (await counters.read([charges[0].window]))[0]


@pytest.mark.parametrize("room", [0.5, 1.5, 3.5, 6.5, 9.99, 10.0])
async def test_the_leading_lines_that_fit_are_reserved(counters: CounterStore, clock: FakeClock, room: float) -> None:
    rule = BudgetRule("k", "key", "key_a", amount_usd=room * LINE / NANO, period="daily")
    enforcer = enforcer_for(counters, clock, rule)
    reservation = await reserve_batch(enforcer, batch_call(), [LINE] * 10, ttl_s=3600)
    assert reservation.admitted == int(room)
    assert await spent(counters, "k", "key_a", enforcer) == int(room) * LINE  # held, not counted twice
    if reservation.admitted < 10:
        assert reservation.refusal is not None and reservation.refusal[1]["error"]["code"] == "budget_exceeded"
        assert "key 'key_a'" in reservation.refusal[1]["error"]["message"]
    else:
        assert reservation.refusal is None
    if not reservation.admitted:
        assert not reservation.held
        return
    restored = BatchReservation.from_json(reservation.as_json())  # as another worker finds it
    await settle_batch(enforcer, restored, usd=LINE / NANO)  # what the lines actually cost
    assert await spent(counters, "k", "key_a", enforcer) == LINE  # settled: the held worst case is gone


async def test_every_scope_must_hold_and_calls_see_the_held_reservation(
    counters: CounterStore, clock: FakeClock
) -> None:
    key = BudgetRule("k", "key", "key_a", amount_usd=10 * LINE / NANO, period="daily")
    team = BudgetRule("t", "team", "growth", amount_usd=4 * LINE / NANO, period="daily")
    enforcer = enforcer_for(counters, clock, key, team)
    first = await reserve_batch(enforcer, batch_call(), [LINE] * 6, ttl_s=3600)
    assert first.admitted == 4  # the team's budget is the tighter one
    assert "team 'growth'" in first.refusal[1]["error"]["message"]  # type: ignore[index]
    # another key of the same team finds the team budget fully held
    second = await reserve_batch(enforcer, batch_call("key_b"), [LINE] * 2, ttl_s=3600)
    assert second.admitted == 0 and not second.held
    await settle_batch(enforcer, first, usd=0.0)  # nothing ran: all released
    assert await spent(counters, "t", "growth", enforcer) == 0
    third = await reserve_batch(enforcer, batch_call("key_b"), [LINE] * 2, ttl_s=3600)
    assert third.admitted == 2


async def test_no_budget_no_reservation_and_allowed_models_apply(counters: CounterStore, clock: FakeClock) -> None:
    enforcer = enforcer_for(counters, clock)
    free = await reserve_batch(enforcer, batch_call(), [LINE] * 3, ttl_s=3600)
    assert (free.admitted, free.held, free.refusal) == (3, [], None)
    call = batch_call()
    call.identity.allowed_models = frozenset({"something-else"})
    refused = await reserve_batch(enforcer, call, [LINE] * 3, ttl_s=3600)
    assert refused.admitted == 0 and refused.refusal is not None
    assert refused.refusal[0] == 403 and refused.refusal[1]["error"]["code"] == "model_not_allowed"
