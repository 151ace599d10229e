"""What a reservation is made of: the charges of one call and what each stands for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenomy.budgets.counters import Charge
from tokenomy.budgets.estimate import Estimate
from tokenomy.budgets.periods import Window


@dataclass(frozen=True, slots=True)
class ChargeInfo:
    """What one charge of a ticket stands for."""

    kind: str  # budget | requests | tokens | concurrent | meter | block
    rule: Any  # BudgetRule | RateLimitRule | None
    subject: str
    window: Window | None = None
    scope: str = ""


@dataclass(slots=True)
class Ticket:
    """A call's reservation, settled exactly once."""

    reservation_id: str
    charges: list[Charge]
    infos: list[ChargeInfo]
    estimate: Estimate
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    #: each charge's window total at reservation (none for batches): which budgets the settle reports
    totals: tuple[int, ...] = ()
