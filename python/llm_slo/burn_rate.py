"""Multiwindow, multi-burn-rate SLO alerting over per-request good/bad events.

The SRE Workbook method (also Sloth's defaults): an SLO with target ``t`` has an error
budget ``1 - t``; the burn rate over a window is the window's bad-event ratio divided by
that budget (1.0 spends the budget exactly over the SLO period). A rule fires when both its
long and its short window burn faster than its threshold: the long window proves the burn
is significant, the short one that it is still happening.

Pure: no clock, every time is an argument. Events are counted in fixed buckets
(``bucket_s``, default 10 s), so window edges have that resolution.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable
from fractions import Fraction

import msgspec

from llm_slo.sli import SliSample
from llm_slo.slo_event import SliName, SloStatus

_NS = 1_000_000_000
#: SLIs whose per-request value is 1.0 for a bad request and 0.0 for a good one.
RATE_SLIS: frozenset[str] = frozenset({"error_rate", "provider_error_rate"})


def is_bad(sample: SliSample, status: SloStatus) -> bool:
    """A bad event for the error budget: a failed request for the rate SLIs, whatever
    their thresholds say; a breach for the others."""
    return sample.value != 0.0 if sample.sli_name in RATE_SLIS else status == "breach"


def _exact(x: float) -> Fraction:
    """The decimal a float was written as (0.99 -> 99/100, not its binary neighbour).

    Burn rates and threshold checks use exact rationals so that hand-computed boundary
    cases (30 bad of 1000 at 99 % is exactly 3.0) hold, instead of landing an ulp either
    side of the threshold.
    """
    return Fraction(repr(float(x)))


class SloObjective(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One SLO: ``target`` (0 < target < 1) of requests must be good on ``sli_name``.

    A request is good when its per-request status is not "breach"; for ``error_rate`` and
    ``provider_error_rate`` when its value is 0 (no error).
    """

    name: str
    sli_name: SliName
    target: float

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target must be in (0, 1), got {self.target}")

    def is_good(self, sample: SliSample, status: SloStatus) -> bool:
        """Whether one sample (of this objective's SLI) is a good event."""
        if sample.sli_name != self.sli_name:
            raise ValueError(f"{sample.sli_name} sample given to {self.sli_name} objective")
        return not is_bad(sample, status)


class AlertRule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fire when the burn rate exceeds ``threshold`` over both windows (seconds)."""

    long_window_s: int
    short_window_s: int
    threshold: float

    def __post_init__(self) -> None:
        if not 0 < self.short_window_s < self.long_window_s:
            raise ValueError("need 0 < short_window_s < long_window_s")
        if not self.threshold > 0:
            raise ValueError("threshold must be > 0")


#: Sloth's defaults for a 30-day SLO: 2 %, 5 %, 10 % and 10 % of the budget.
DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule(long_window_s=3600, short_window_s=300, threshold=14.4),
    AlertRule(long_window_s=6 * 3600, short_window_s=1800, threshold=6.0),
    AlertRule(long_window_s=86400, short_window_s=2 * 3600, threshold=3.0),
    AlertRule(long_window_s=3 * 86400, short_window_s=6 * 3600, threshold=1.0),
)


class BurnRateAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One firing rule of one (service, SLO) at ``ts_unix_nano``."""

    service: str
    slo: str
    sli_name: SliName
    long_window_s: int
    short_window_s: int
    threshold: float
    burn_rate_long: float
    burn_rate_short: float
    ts_unix_nano: int


class BurnRateTracker:
    """Good/bad event counts of one (service, SLO), and the burn rates they give.

    Buckets are kept as parallel arrays of bucket index and *cumulative* totals, so any
    window's counts are two binary searches and a subtraction. Buckets older than the
    longest rule window (counted back from the newest event) are dropped, so memory is at
    most ``longest_window / bucket_s + 1`` buckets whatever the stream length: with the
    default rules three days, 25,920 buckets of 24 bytes (machine integers; lists of
    Python ints held 2.9 MB per tracker after three days of 20 requests a second). An
    in-order add is O(1) amortised; a late event costs O(buckets after it). Events older
    than the retained range are counted in :attr:`dropped` and ignored.
    """

    def __init__(self, service: str, objective: SloObjective,
                 rules: Iterable[AlertRule] = DEFAULT_RULES, *, bucket_s: int = 10) -> None:
        self.service = service
        self.objective = objective
        self.rules = tuple(rules)
        if bucket_s <= 0 or not self.rules:
            raise ValueError("need bucket_s > 0 and at least one rule")
        for rule in self.rules:
            if rule.long_window_s % bucket_s or rule.short_window_s % bucket_s:
                raise ValueError(f"windows of {rule} are not multiples of {bucket_s} s")
        self.bucket_s = bucket_s
        self.retention_s = max(r.long_window_s for r in self.rules)
        self._retain = self.retention_s // bucket_s
        self._budget = 1 - _exact(objective.target)
        self._limits = [_exact(r.threshold) for r in self.rules]
        self._idx = array("q")  # bucket index = ts // bucket, ascending
        self._cum_total = array("q")  # events in all buckets up to and including this one
        self._cum_bad = array("q")
        self._base = (0, 0)  # cumulative (total, bad) of everything already dropped
        self.dropped = 0

    def __len__(self) -> int:
        """Buckets held (the memory bound is on this)."""
        return len(self._idx)

    def add(self, ts_unix_nano: int, good: bool) -> None:
        """Count one event at ``ts_unix_nano``."""
        b = ts_unix_nano // (self.bucket_s * _NS)
        idx = self._idx
        if idx and b <= idx[-1] - self._retain:
            self.dropped += 1
            return
        bad = 0 if good else 1
        if idx and b == idx[-1]:  # the common case: same bucket as the last event
            self._cum_total[-1] += 1
            self._cum_bad[-1] += bad
            return
        pos = bisect_right(idx, b)
        if pos and idx[pos - 1] == b:
            pos -= 1
        else:
            prev_total, prev_bad = self._at(pos)
            idx.insert(pos, b)
            self._cum_total.insert(pos, prev_total)
            self._cum_bad.insert(pos, prev_bad)
        for i in range(pos, len(idx)):  # a late event shifts every later cumulative count
            self._cum_total[i] += 1
            self._cum_bad[i] += bad
        self._expire()

    def _at(self, pos: int) -> tuple[int, int]:
        """Cumulative (total, bad) of the buckets before array position ``pos``."""
        if pos == 0:
            return self._base
        return self._cum_total[pos - 1], self._cum_bad[pos - 1]

    def _expire(self) -> None:
        cut = bisect_right(self._idx, self._idx[-1] - self._retain)
        if cut:
            self._base = (self._cum_total[cut - 1], self._cum_bad[cut - 1])
            del self._idx[:cut], self._cum_total[:cut], self._cum_bad[:cut]

    def counts(self, window_s: int, now_unix_nano: int) -> tuple[int, int]:
        """(total, bad) events in the ``window_s`` ending with the bucket holding ``now``.

        The window is the ``window_s / bucket_s`` buckets up to and including now's; events
        stamped after now's bucket are not counted. Exact for any ``now`` at or after the
        newest event; an earlier ``now`` may miss buckets already dropped.
        """
        if window_s <= 0 or window_s % self.bucket_s or window_s > self.retention_s:
            raise ValueError(f"window must be a multiple of {self.bucket_s} s "
                             f"in (0, {self.retention_s}]")
        hi = now_unix_nano // (self.bucket_s * _NS)
        lo = hi - window_s // self.bucket_s
        total_hi, bad_hi = self._at(bisect_right(self._idx, hi))
        total_lo, bad_lo = self._at(bisect_right(self._idx, lo))
        return total_hi - total_lo, bad_hi - bad_lo

    def _burn(self, window_s: int, now_unix_nano: int) -> Fraction | None:
        total, bad = self.counts(window_s, now_unix_nano)
        return None if total == 0 else Fraction(bad, total) / self._budget

    def burn_rate(self, window_s: int, now_unix_nano: int) -> float | None:
        """Bad ratio over the window divided by the error budget; None with no events."""
        burn = self._burn(window_s, now_unix_nano)
        return None if burn is None else float(burn)

    def alerts(self, now_unix_nano: int) -> list[BurnRateAlert]:
        """The rules firing at ``now``: burn rate strictly above threshold in both windows."""
        fired = []
        for rule, limit in zip(self.rules, self._limits, strict=True):
            long = self._burn(rule.long_window_s, now_unix_nano)
            if long is None or long <= limit:
                continue
            short = self._burn(rule.short_window_s, now_unix_nano)
            if short is None or short <= limit:
                continue
            fired.append(BurnRateAlert(
                service=self.service, slo=self.objective.name,
                sli_name=self.objective.sli_name, long_window_s=rule.long_window_s,
                short_window_s=rule.short_window_s, threshold=rule.threshold,
                burn_rate_long=float(long), burn_rate_short=float(short),
                ts_unix_nano=now_unix_nano))
        return fired


class SloBook:
    """Routes samples to one :class:`BurnRateTracker` per (service, objective).

    Trackers are created on a service's first sample of the objective's SLI.
    """

    def __init__(self, objectives: Iterable[SloObjective],
                 rules: Iterable[AlertRule] = DEFAULT_RULES, *, bucket_s: int = 10) -> None:
        self.objectives = tuple(objectives)
        self.rules = tuple(rules)
        self.bucket_s = bucket_s
        self.trackers: dict[tuple[str, str], BurnRateTracker] = {}

    def observe(self, sample: SliSample, status: SloStatus) -> None:
        """Count one evaluated sample against every objective on its SLI."""
        for obj in self.objectives:
            if obj.sli_name != sample.sli_name:
                continue
            key = (sample.service, obj.name)
            tracker = self.trackers.get(key)
            if tracker is None:
                tracker = BurnRateTracker(sample.service, obj, self.rules,
                                          bucket_s=self.bucket_s)
                self.trackers[key] = tracker
            tracker.add(sample.ts_unix_nano, obj.is_good(sample, status))

    def burn_rate(self, service: str, sli_name: str, window_s: int,
                  now_unix_nano: int) -> float | None:
        """Burn rate over ``window_s`` of the first objective on ``sli_name`` for
        ``service``; None if there is no such objective or no event in the window."""
        for obj in self.objectives:
            tracker = self.trackers.get((service, obj.name))
            if obj.sli_name == sli_name and tracker is not None:
                return tracker.burn_rate(window_s, now_unix_nano)
        return None

    def alerts(self, now_unix_nano: int) -> list[BurnRateAlert]:
        """Every firing rule of every tracker, in tracker creation order."""
        return [a for t in self.trackers.values() for a in t.alerts(now_unix_nano)]
