"""The counter store's contract: atomic, all-or-nothing reservations over many counters.

Budgets, rate limits and concurrency caps are all the same thing to the store:
a ``Charge`` adds an integer ``amount`` to one counter if, for every charge of
the call, the sum of its window's counters plus its amount stays within its
limit. Money is counted in nano-dollars (integers, so Redis ``INCRBY`` and Lua
stay exact), tokens in tokens, requests in requests.

A reservation is later settled to the actual amounts (the delta is applied to
the same counters) or, if its process died, expires after ``ttl_s`` and is
released by the store itself — so a crash never holds a budget forever.

Two implementations live side by side: ``MemoryCounterStore`` (one process,
persisted to SQLite) and ``RedisCounterStore`` (shared by replicas, atomic
through Lua scripts). Both pass the same tests (``tests/test_counters.py``).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

#: nano-dollars per dollar: counters hold integers
NANO = 1_000_000_000


def to_nano(usd: float) -> int:
    """Dollars to nano-dollars, rounded up so a counter never under-counts spend."""
    scaled = usd * NANO
    whole = int(scaled)
    return whole + 1 if scaled - whole > 1e-6 else whole


def from_nano(value: int) -> float:
    return value / NANO


class CounterStoreUnavailable(Exception):
    """The counter store could not be reached (the stage applies the fail-open/closed switch)."""


class Charge(NamedTuple):
    """Add ``amount`` to counter ``key`` if the window's total plus ``amount`` stays ≤ ``limit``.

    ``window`` lists the counters whose sum is checked (``(key,)`` except for
    rolling windows, where ``key`` is the newest slot). ``limit=None`` counts
    without checking (soft budgets, runaway meters). ``ttl_s`` is how long the
    counter must live (0: forever). ``report``: whether ``settle`` must return
    this charge's window total (budgets do, for alerts; rate limits need not,
    which spares the store summing their windows). A charge with no limit that
    reports nothing (a runaway meter) is only counted: the store need not read
    its window at reservation either (its total may come back as 0).

    A named tuple rather than a frozen dataclass: a call builds several, and
    a tuple is built in a third of the time.
    """

    key: str
    amount: int
    limit: int | None
    window: tuple[str, ...]
    ttl_s: int = 0
    report: bool = True


@dataclass(frozen=True, slots=True)
class Admission:
    """The store's answer to a reservation.

    Admitted: ``totals[i]`` is charge *i*'s window total *including* this
    reservation. Refused: ``refused`` is the index of the first charge that did
    not fit and ``totals[refused]`` the window total before this call.
    """

    admitted: bool
    totals: tuple[int, ...]
    refused: int | None = None


class CounterStore(abc.ABC):
    """Atomic multi-counter reservations (see the module docstring)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect / load persisted counters."""

    @abc.abstractmethod
    async def reserve(self, reservation_id: str, charges: Sequence[Charge], ttl_s: float) -> Admission:
        """Check every charge and apply all of them, or none; remember the reservation for ``ttl_s``.

        Raises ``CounterStoreUnavailable`` if the store cannot be reached.
        """

    @abc.abstractmethod
    async def settle(self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]) -> tuple[int, ...]:
        """Replace the reserved amounts by ``actual`` (same order as ``charges``).

        If the reservation already expired (and was released), ``actual`` is added
        in full. Returns each charge's window total after settling (0 where
        ``report`` is false). A charge whose actual equals its reserved amount
        and that reports nothing may be skipped by the store: after an expiry
        it is then not counted, which only request counts of long-dead calls risk.
        """

    def settle_soon(
        self, reservation_id: str, charges: Sequence[Charge], actual: Sequence[int]
    ) -> asyncio.Future[tuple[int, ...]]:
        """``settle`` off the caller's path: queued now, sent when the event loop next runs.

        The returned future resolves to what ``settle`` returns (or raises
        ``CounterStoreUnavailable``). A store may send many queued settles
        together; ``aclose`` still sends the ones queued.
        """
        return asyncio.ensure_future(self.settle(reservation_id, charges, actual))

    @abc.abstractmethod
    async def read(self, windows: Sequence[Sequence[str]]) -> list[int]:
        """The total of each window (sum of its counters; missing counters are 0)."""

    @abc.abstractmethod
    async def add(self, key: str, amount: int, ttl_s: int = 0) -> int:
        """Add to one counter without a reservation (rebuilds, meters); returns the new value."""

    @abc.abstractmethod
    async def claim(self, key: str, ttl_s: int) -> bool:
        """Set a marker once: ``True`` for the first caller until it expires (alert de-duplication)."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a marker set by ``claim`` is still alive."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Persist what must be and release connections."""
