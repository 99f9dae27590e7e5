"""Multiwindow multi-burn-rate: hand-computed cases and Hypothesis invariants."""

from __future__ import annotations

import tracemalloc

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_slo.burn_rate import (
    DEFAULT_RULES,
    AlertRule,
    BurnRateAlert,
    BurnRateTracker,
    SloBook,
    SloObjective,
)
from llm_slo.sli import SliSample

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z, a multiple of the 10 s bucket
HOUR = 3600
TTFT = SloObjective(name="ttft-p99", sli_name="ttft_ms", target=0.99)
ERRORS = SloObjective(name="availability", sli_name="error_rate", target=0.999)


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


def tracker(objective: SloObjective = TTFT, rules=DEFAULT_RULES, **kw) -> BurnRateTracker:
    return BurnRateTracker("chat-api", objective, rules, **kw)


def feed(t: BurnRateTracker, start_s: float, end_s: float, good: int, bad: int) -> None:
    """good + bad events spread evenly over [start_s, end_s), bad ones evenly among them."""
    n = good + bad
    for i in range(n):
        is_bad = (i + 1) * bad // n > i * bad // n
        t.add(at(start_s + (end_s - start_s) * i / n), good=not is_bad)


class TestHandComputed:
    def test_thirty_bad_of_a_thousand(self):
        """1000 requests, 30 bad, target 0.99: error ratio 0.03, burn 0.03 / 0.01 = 3.0."""
        t = tracker()
        feed(t, 0, 3000, good=970, bad=30)
        assert t.counts(HOUR, at(3000)) == (1000, 30)
        assert t.burn_rate(HOUR, at(3000)) == 3.0

    def test_threshold_is_strict_and_exact(self):
        """Exactly 3.0 does not exceed the 2h/1d rule's 3; 31 of 1000 (3.1) does."""
        rule = AlertRule(long_window_s=86400, short_window_s=7200, threshold=3.0)
        t = tracker(rules=[rule])
        feed(t, 0, 3000, good=970, bad=30)
        assert t.alerts(at(3000)) == []
        t2 = tracker(rules=[rule])
        feed(t2, 0, 3000, good=969, bad=31)
        [alert] = t2.alerts(at(3000))
        assert alert == BurnRateAlert(
            service="chat-api", slo="ttft-p99", sli_name="ttft_ms", long_window_s=86400,
            short_window_s=7200, threshold=3.0, burn_rate_long=pytest.approx(3.1),
            burn_rate_short=pytest.approx(3.1), ts_unix_nano=at(3000))

    def test_no_events_is_none(self):
        t = tracker()
        assert t.burn_rate(300, at(0)) is None
        t.add(at(0), good=False)
        assert t.burn_rate(300, at(1000)) is None  # the event slid out of 5 min
        assert t.burn_rate(HOUR, at(1000)) == 100.0

    def test_old_events_slide_out(self):
        """10 bad at 0 s, 10 good at 2 h: the 1 h window sees only the good ones."""
        t = tracker()
        for _ in range(10):
            t.add(at(0), good=False)
        for _ in range(10):
            t.add(at(2 * HOUR), good=True)
        assert t.burn_rate(HOUR, at(2 * HOUR)) == 0.0
        assert t.burn_rate(6 * HOUR, at(2 * HOUR)) == 50.0  # 10/20 bad / 0.01
        # A bucket leaves a window exactly window_s after it started.
        assert t.burn_rate(6 * HOUR, at(6 * HOUR - 10)) == 50.0
        assert t.burn_rate(6 * HOUR, at(6 * HOUR)) == 0.0

    def test_events_after_now_not_counted(self):
        t = tracker()
        t.add(at(100), good=False)
        t.add(at(200), good=True)
        assert t.counts(HOUR, at(150)) == (1, 1)

    def test_quiet_short_window_stops_the_page(self):
        """Bad burst 55-40 min ago, all good for the last 5 min: the long 1 h window burns
        at 66.7 but the 5 min and 30 min windows do not, so neither page rule fires;
        the ticket rules (2h/1d, 6h/3d) still see the burst and fire."""
        t = tracker()
        feed(t, HOUR - 55 * 60, HOUR - 40 * 60, good=0, bad=100)
        feed(t, HOUR - 290, HOUR, good=50, bad=0)
        now = at(HOUR)
        assert t.burn_rate(HOUR, now) == pytest.approx(100 / 150 / 0.01)
        assert t.burn_rate(300, now) == 0.0
        assert t.burn_rate(1800, now) == 0.0
        fired = [(a.long_window_s, a.short_window_s) for a in t.alerts(now)]
        assert fired == [(86400, 7200), (3 * 86400, 6 * 3600)]

    def test_fast_burn_pages(self):
        """A steady 20 % failure for an hour: burn 20 everywhere, every rule fires."""
        t = tracker()
        feed(t, 0, HOUR, good=800, bad=200)
        alerts = t.alerts(at(HOUR - 1))
        assert [a.threshold for a in alerts] == [14.4, 6.0, 3.0, 1.0]
        assert all(a.burn_rate_long == pytest.approx(20.0) for a in alerts)

    def test_error_rate_objective(self):
        """target 0.999: 2 errors in 1000 requests burn 0.002 / 0.001 = 2."""
        t = tracker(ERRORS)
        feed(t, 0, 600, good=998, bad=2)
        assert t.burn_rate(HOUR, at(600)) == 2.0

    def test_late_events_and_retention(self):
        rules = [AlertRule(long_window_s=600, short_window_s=60, threshold=2.0)]
        t = tracker(rules=rules)
        t.add(at(500), good=True)
        t.add(at(100), good=False)  # late but retained: shifts later cumulative counts
        t.add(at(500), good=True)
        assert t.counts(600, at(500)) == (3, 1)
        assert t.counts(60, at(500)) == (2, 0)
        t.add(at(800), good=True)  # 100 s is now older than the 600 s retention
        assert t.counts(600, at(800)) == (3, 0)
        t.add(at(150), good=False)
        assert t.dropped == 1 and t.counts(600, at(800)) == (3, 0)

    @pytest.mark.parametrize("window", [0, 15, 3 * 86400 + 10])
    def test_bad_windows(self, window):
        with pytest.raises(ValueError):
            tracker().burn_rate(window, at(0))


class TestConfig:
    def test_default_rules(self):
        assert [(r.long_window_s, r.short_window_s, r.threshold) for r in DEFAULT_RULES] == [
            (3600, 300, 14.4), (21600, 1800, 6.0), (86400, 7200, 3.0), (259200, 21600, 1.0)]

    @pytest.mark.parametrize("doc", [
        {"long_window_s": 300, "short_window_s": 3600, "threshold": 2},
        {"long_window_s": 3600, "short_window_s": 0, "threshold": 2},
        {"long_window_s": 3600, "short_window_s": 300, "threshold": 0},
    ])
    def test_bad_rules(self, doc):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(doc, AlertRule)

    @pytest.mark.parametrize("target", [0.0, 1.0, 1.5])
    def test_bad_target(self, target):
        with pytest.raises(ValueError):
            SloObjective(name="x", sli_name="ttft_ms", target=target)

    def test_windows_must_fit_buckets(self):
        with pytest.raises(ValueError):
            tracker(rules=[AlertRule(long_window_s=605, short_window_s=60, threshold=1)])
        with pytest.raises(ValueError):
            tracker(rules=[])


def sample(sli: str, value: float, service: str = "chat-api", ts: int = T0) -> SliSample:
    return SliSample(service=service, namespace="", workload="", cluster="", request_id="r",
                     trace_id="", span_id="s", sli_name=sli, value=value, unit="",
                     ts_unix_nano=ts, start_unix_nano=ts)


class TestGoodPredicate:
    @pytest.mark.parametrize(("status", "good"), [("ok", True), ("warning", True),
                                                  ("breach", False)])
    def test_latency_like(self, status, good):
        assert TTFT.is_good(sample("ttft_ms", 1.0), status) is good

    @pytest.mark.parametrize(("value", "good"), [(0.0, True), (1.0, False)])
    def test_rates_by_value(self, value, good):
        """An error sample is bad even where thresholds would only call it a warning."""
        assert ERRORS.is_good(sample("error_rate", value), "warning") is good

    def test_wrong_sli(self):
        with pytest.raises(ValueError):
            TTFT.is_good(sample("error_rate", 0.0), "ok")


def test_slo_book_routes_per_service_and_objective():
    book = SloBook([TTFT, ERRORS], [AlertRule(long_window_s=600, short_window_s=60,
                                              threshold=10.0)])
    for i in range(100):
        ts = at(i * 5)
        book.observe(sample("ttft_ms", 2000, "slow", ts), "breach" if i % 2 else "ok")
        book.observe(sample("ttft_ms", 100, "fast", ts), "ok")
        book.observe(sample("error_rate", 0.0, "fast", ts), "ok")
        book.observe(sample("request_latency_ms", 1.0, "fast", ts), "ok")  # no objective
    assert set(book.trackers) == {("slow", "ttft-p99"), ("fast", "ttft-p99"),
                                  ("fast", "availability")}
    [alert] = book.alerts(at(495))
    assert (alert.service, alert.slo, alert.burn_rate_long) == ("slow", "ttft-p99", 50.0)


# --- properties -------------------------------------------------------------------------

SMALL_RULES = (AlertRule(long_window_s=600, short_window_s=60, threshold=5.0),
               AlertRule(long_window_s=1800, short_window_s=300, threshold=2.0))
targets = st.sampled_from([0.9, 0.95, 0.99, 0.995, 0.999, 0.9999])
offsets = st.integers(0, 3600 * NS)
events = st.lists(st.tuples(offsets, st.booleans()), max_size=200)


def small(target: float = 0.99) -> BurnRateTracker:
    return tracker(SloObjective(name="p", sli_name="ttft_ms", target=target), SMALL_RULES)


@given(targets, events, st.sampled_from([60, 300, 600, 1800]))
def test_burn_rate_non_negative(target, evs, window):
    t = small(target)
    for ts, good in evs:
        t.add(T0 + ts, good)
    burn = t.burn_rate(window, T0 + 3600 * NS)
    assert burn is None or burn >= 0


@given(targets, st.lists(offsets, min_size=1, max_size=100), st.booleans())
def test_uniform_streams(target, stamps, good):
    """All good burns 0; all bad burns the whole budget, 1 / (1 - target)."""
    t = small(target)
    for ts in stamps:
        t.add(T0 + ts, good)
    burn = t.burn_rate(1800, T0 + max(stamps))
    expected = 0.0 if good else 1 / (1 - target)
    assert burn == pytest.approx(expected, rel=1e-9)


@given(targets, st.lists(offsets, min_size=1, max_size=100), st.data())
def test_monotone_in_bad_events(target, stamps, data):
    """Turning more of the same events bad never lowers the burn rate."""
    k1 = data.draw(st.integers(0, len(stamps)))
    k2 = data.draw(st.integers(k1, len(stamps)))
    burns = []
    for k in (k1, k2):
        t = small(target)
        for i, ts in enumerate(stamps):
            t.add(T0 + ts, good=i >= k)
        burns.append(t.burn_rate(1800, T0 + max(stamps)))
    assert burns[0] <= burns[1]


@given(targets, events, offsets)
def test_alert_implies_both_windows_above(target, evs, now):
    t = small(target)
    for ts, good in sorted(evs):
        t.add(T0 + ts, good)
    now_ns = T0 + max([now, *(ts for ts, _ in evs)])
    fired = {(a.long_window_s, a.short_window_s) for a in t.alerts(now_ns)}
    for rule in SMALL_RULES:
        long = t.burn_rate(rule.long_window_s, now_ns)
        short = t.burn_rate(rule.short_window_s, now_ns)
        above = (long is not None and short is not None
                 and long > rule.threshold and short > rule.threshold)
        assert ((rule.long_window_s, rule.short_window_s) in fired) == above


@given(events, offsets)
def test_counts_match_brute_force(evs, extra):
    """Any arrival order: counts equal a naive count over the events not dropped."""
    t = small()
    kept: list[tuple[int, bool]] = []
    newest = None
    for ts, good in evs:
        t.add(T0 + ts, good)
        b = ts // (10 * NS)
        if newest is not None and b <= newest - 1800 // 10:
            continue  # older than the retained range: the tracker must drop it too
        newest = b if newest is None else max(newest, b)
        kept.append((ts, good))
    assert t.dropped == len(evs) - len(kept)
    now = max([extra, *(ts for ts, _ in evs)])
    hi = now // (10 * NS)
    for window in (60, 300, 600, 1800):
        inside = [g for ts, g in kept if hi - window // 10 < ts // (10 * NS) <= hi]
        assert t.counts(window, T0 + now) == (len(inside), inside.count(False))


@settings(max_examples=20)
@given(st.integers(1, 50), st.integers(0, 2**32))
def test_memory_bounded_for_long_streams(step_s, seed):
    """A day of events never holds more than the longest window's buckets."""
    t = small()
    limit = 1800 // 10
    for i in range(0, 86400, step_s):
        t.add(at(i), good=(i * 2654435761 + seed) % 7 != 0)
        assert len(t) <= limit
    assert t.burn_rate(1800, at(86400)) is not None


def test_three_days_of_buckets_cost_little_memory():
    """The default rules keep three days of 10 s buckets per (service, objective): an
    agent on a node with many services keeps them all, for as long as it runs."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = tracker()
        for i in range(0, 3 * 86400 + 600, 10):
            t.add(at(i), good=i % 70 != 0)
            t.add(at(i + 5), good=True)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(t) == 3 * 86400 // 10
    assert held < 1 << 20, f"{held / 2**20:.2f} MiB for {len(t)} buckets"
