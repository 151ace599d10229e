"""Runaway detection: a scope whose spend rate over the last minute is far above its baseline.

Spend is metered per scope value in ``SLOT_S``-second counter slots (the meter
rides along in the same reserve/settle script, so it costs no extra round
trip). After a settle, at most every ``check_every_s`` per scope value, the
detector compares the recent window's rate with the trailing baseline's and
raises one alert per episode; optionally it sets a block marker that makes the
scope's next calls fail with 429 ``runaway_throttled`` for ``throttle_s``.

The baseline is floored at ``min_usd_per_min``: a scope with no history (a new
key) fires only above ``factor × min_usd_per_min``, so steady traffic that
starts from nothing is not a runaway, while a new key burning dollars a minute is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from tokenomy.budgets.alerts import Alert, AlertDispatcher
from tokenomy.budgets.charges import ChargeTemplate, ChargeTemplates
from tokenomy.budgets.counters import CounterStore, CounterStoreUnavailable, from_nano
from tokenomy.budgets.policy import subject_of
from tokenomy.config import RunawaySettings
from tokenomy.pipeline.call import Call

log = logging.getLogger(__name__)

SLOT_S = 10


class RunawayDetector:
    def __init__(
        self,
        settings: RunawaySettings,
        store: CounterStore,
        alerts: AlertDispatcher | None,
        *,
        prefix: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.alerts = alerts
        self.prefix = prefix
        self.clock = clock
        self._checked: dict[tuple[str, str], float] = {}
        self._templates = ChargeTemplates(prefix)
        self.recent_slots = max(1, settings.window_s // SLOT_S)
        self.baseline_slots = max(1, settings.baseline_s // SLOT_S)

    def subjects(self, call: Call) -> list[tuple[str, str]]:
        """The (scope, value) pairs whose spend this call is metered under."""
        found = []
        for scope in self.settings.scopes:
            subject = subject_of(scope, call)
            if subject:
                found.append((scope, subject))
        return found

    def _slot_key(self, scope: str, subject: str, slot: int) -> str:
        return f"{self.prefix}rw:{scope}:{subject}:{slot}"

    def templates(self, meters: list[tuple[str, str]], now: float) -> list[ChargeTemplate]:
        """A zero reservation on the current slot (settled to the call's cost), plus throttle blocks."""
        slot = int(now // SLOT_S)
        ttl = self.settings.window_s + self.settings.baseline_s + 2 * SLOT_S
        out: list[ChargeTemplate] = []
        for scope, subject in meters:
            out.extend(self._templates.meter(scope, subject, slot, ttl, self.settings.throttle))
        return out

    def due(self, scope: str, subject: str) -> bool:
        """Whether ``observe`` would look at this scope value now (not looked at for ``check_every_s``)."""
        last = self._checked.get((scope, subject))
        return last is None or self.clock() - last >= self.settings.check_every_s

    async def observe(self, scope: str, subject: str) -> None:
        """Re-evaluate one scope value if it has not been looked at for ``check_every_s``."""
        now = self.clock()
        last = self._checked.get((scope, subject))
        if last is not None and now - last < self.settings.check_every_s:
            return
        self._checked[(scope, subject)] = now
        if len(self._checked) > 100_000:
            self._checked.clear()
        try:
            await self.evaluate(scope, subject, now)
        except CounterStoreUnavailable as exc:
            log.error("runaway check of %s %r failed: %s", scope, subject, exc)

    async def evaluate(self, scope: str, subject: str, now: float) -> bool:
        """Compare the recent rate with the baseline; alert (once per episode). True if it fired."""
        current = int(now // SLOT_S)
        recent = [self._slot_key(scope, subject, current - i) for i in range(self.recent_slots)]
        baseline = [
            self._slot_key(scope, subject, current - self.recent_slots - i) for i in range(self.baseline_slots)
        ]
        recent_nano, baseline_nano = await self.store.read([recent, baseline])
        # the current slot is partly elapsed: measure the recent rate over the time actually covered
        covered = (self.recent_slots - 1) * SLOT_S + (now - current * SLOT_S) or 1.0
        recent_per_min = from_nano(recent_nano) / covered * 60.0
        baseline_per_min = from_nano(baseline_nano) / (self.baseline_slots * SLOT_S) * 60.0
        s = self.settings
        # the floor stands in for a baseline that is tiny or absent (a new key), so
        # steady traffic starting from nothing is not mistaken for a runaway
        reference = max(baseline_per_min, s.min_usd_per_min)
        if recent_per_min <= s.factor * reference:
            return False
        if not await self.store.claim(f"{self.prefix}rwa:{scope}:{subject}", max(s.window_s * 5, s.throttle_s)):
            return False  # this episode was already reported (by this or another replica)
        if s.throttle:
            await self.store.add(f"{self.prefix}blk:{scope}:{subject}", 1, s.throttle_s)
        message = (
            f"Runaway spend: {scope} {subject!r} is spending ${recent_per_min:.4f}/min over the last "
            f"{s.window_s}s, {'far above' if baseline_per_min else 'with no'} baseline "
            f"(${baseline_per_min:.4f}/min over the previous {s.baseline_s}s)"
            + (f"; throttled for {s.throttle_s}s." if s.throttle else ".")
        )
        if self.alerts is not None:
            self.alerts.publish(
                Alert(
                    kind="runaway",
                    scope=scope,
                    subject=subject,
                    message=message,
                    at=now,
                    rate_usd_per_min=recent_per_min,
                    baseline_usd_per_min=baseline_per_min,
                )
            )
        else:
            log.warning("%s", message)
        return True
