"""The SLO engine: spans and kernel signals in; SLO events, enriched spans and
attributions out. Pure: no sockets, files or clocks (time comes in as arguments), so
the live agent and ``sloctl replay`` run exactly the same logic.

Per span: correlate with kernel signals, derive SLI samples, judge them against the
thresholds (SloEvents), feed the burn-rate book. Per tick: every breach or burn-rate
alert since the last tick becomes a Violation, explained by the attributor from the
violating workload's recent kernel signals against its own learned baseline; calm
windows teach that baseline.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import operator
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

import msgspec

from llm_slo.attributor import PAST_BURN, AttributionConfig, Violation, attribute_violation
from llm_slo.baseline import (
    AppEvidence,
    Baseline,
    BaselineConfig,
    WindowFeatures,
    features_from,
    workload_key,
)
from llm_slo.burn_rate import (
    DEFAULT_RULES,
    AlertRule,
    BurnRateAlert,
    SloBook,
    SloObjective,
    is_bad,
)
from llm_slo.correlator import CorrelationConfig, Correlator
from llm_slo.incident import IncidentAttribution
from llm_slo.probe_event import ProbeEvent, detail_values
from llm_slo.sli import (
    SliSample,
    SliThresholds,
    evaluate,
    is_request_span,
    slis_from_span,
    to_slo_event,
)
from llm_slo.slo_event import SliName, SloEvent
from llm_slo.spans import Span

NS = 1_000_000_000
BURN_BUCKET_S = 10  # burn-rate counts are bucketed; windows must be whole buckets
T = TypeVar("T")
V = TypeVar("V")
# A feature's deviation from the workload's baseline: (feature, value, trials, windows).
Deviation = Callable[[str, float, int | None, float | None], float | None]
_TS = operator.attrgetter("ts_unix_nano")  # of a ProbeEvent or a _Judged
# A streamed record's value, an aggregate's slowest bucket, says how long ago (ms) its
# operation began; what was lost or starved since then is its cause.
_LIFETIME_SIGNALS = frozenset({"connect_latency_ms", "tls_handshake_ms"})


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the engine decides with; defaults are the documented ones."""

    window_s: float = 10.0  # evaluation window: features, baseline updates, attribution
    cooldown_s: float = 30.0  # at most one attribution per (service, SLI) in this time
    abstain_retry_s: float = 5.0  # ... but after an abstention, try again this soon
    signal_retention_s: float = 120.0  # also the longest span whose start can be joined
    correlation_delay_s: float = 2.0  # wait after a span ends before joining it
    # Explaining a violation, evidence reaches back to when its bad requests began (and
    # the connects and handshakes in flight with them), but no further than this.
    evidence_lookback_s: float = 30.0
    # A burn-rate alert whose SLI had no bad event in this many windows (but good ones) is
    # a past burn: the attributor abstains. Two is the engine's calm; one more lets the
    # requests that ended just before it be explained (docs/attribution.md, "Abstain rule").
    past_burn_windows: int = 3
    thresholds: SliThresholds = msgspec.field(default_factory=SliThresholds)
    objectives: list[SloObjective] = msgspec.field(default_factory=lambda: [
        SloObjective(name="ttft", sli_name="ttft_ms", target=0.99),
        SloObjective(name="errors", sli_name="error_rate", target=0.99),
    ])
    rules: list[AlertRule] = msgspec.field(default_factory=lambda: list(DEFAULT_RULES))
    correlation: CorrelationConfig = msgspec.field(default_factory=CorrelationConfig)
    attribution: AttributionConfig = msgspec.field(default_factory=AttributionConfig)
    baseline: BaselineConfig = msgspec.field(default_factory=BaselineConfig)

    def __post_init__(self) -> None:
        # Checked at load, not at the first sample hours later (msgspec turns a
        # ValueError here into a validation error naming the config).
        for name in ("window_s", "cooldown_s", "abstain_retry_s", "signal_retention_s",
                     "correlation_delay_s", "evidence_lookback_s"):
            if getattr(self, name) < 0 or (name == "window_s" and self.window_s == 0):
                raise ValueError(f"engine.{name} must be positive")
        if self.past_burn_windows < 1:
            raise ValueError("engine.past_burn_windows must be at least 1")
        if self.past_burn_windows * self.window_s > self.signal_retention_s:
            # Older SLI samples are gone: bad events there would go uncounted.
            raise ValueError("engine.past_burn_windows * engine.window_s must not exceed "
                             "engine.signal_retention_s")
        if self.evidence_lookback_s > self.signal_retention_s:
            # Older signals are gone: sums over such an interval would read too low.
            raise ValueError("engine.evidence_lookback_s must not exceed "
                             "engine.signal_retention_s")
        for rule in self.rules:
            if rule.long_window_s % BURN_BUCKET_S or rule.short_window_s % BURN_BUCKET_S:
                raise ValueError(f"engine.rules: windows must be multiples of "
                                 f"{BURN_BUCKET_S} s, got {rule.long_window_s}/"
                                 f"{rule.short_window_s}")


class _Judged(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What the retention keeps of a judged SLI sample: what windows, lookbacks and
    application evidence read, and nothing that names the request. Two minutes of a
    busy service are tens of thousands of samples; a whole SliSample with its ids and
    identity strings costs about four times as much, and they made up most of the
    agent's growth to its steady RSS. No GC tracking: it holds no containers."""

    ts_unix_nano: int
    start_unix_nano: int
    sli_name: SliName
    value: float
    detail: str
    bad: bool  # a bad event for the error budget (burn_rate.is_bad)


def _judged(sample: SliSample, *, bad: bool) -> _Judged:
    return _Judged(ts_unix_nano=sample.ts_unix_nano, start_unix_nano=sample.start_unix_nano,
                   sli_name=sample.sli_name, value=sample.value, detail=sample.detail,
                   bad=bad)


class _Workload:
    """What the engine knows of one service: its cgroups and its recent evidence."""

    def __init__(self, cluster: str, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.cgroups: set[int] = set()
        self.pids: set[int] = set()
        self.samples: _Timeline[_Judged] = _Timeline(_TS)
        # Requests judged bad on TTFT from an earlier span, again at the end of a later
        # request span (`is_request_span`: SERVER, or an inference operation such as a
        # provider call; stamped with its end; value and detail are the repeat's, unread):
        # a service that judges TTFT on a short span at the first token still streams
        # the slow answer afterwards, and the request stays recent for a past burn until
        # it ends, as it would if the service reported TTFT on the request span alone.
        # Read by the past-burn lookback only: not a second sample of the SLI.
        self.bad_ttft_request_ends: _Timeline[_Judged] = _Timeline(_TS)
        self.violations: list[SliSample] = []  # breaches since the last tick
        self.last_violation_ns = 0  # last breach or alert, attributed or not


class SloEngine:
    """Stateful core; see the module docstring. Time is Unix nanoseconds throughout."""

    def __init__(self, config: EngineConfig | None = None, *,
                 cgroup_of_pid: dict[int, int] | None = None) -> None:
        self.config = config or EngineConfig()
        self.correlator = Correlator(self.config.correlation)
        self.active_signals: frozenset[str] = frozenset()
        self.book = SloBook(self.config.objectives, self.config.rules, bucket_s=BURN_BUCKET_S)
        self.baseline = Baseline(self.config.baseline)
        # pid -> cgroup id, filled by the shell (from /proc) or by replay input.
        self.cgroup_of_pid = cgroup_of_pid if cgroup_of_pid is not None else {}
        self._pending: list[Span] = []
        self._by_cgroup: dict[int, _Timeline[ProbeEvent]] = defaultdict(
            lambda: _Timeline(_TS))
        self._workloads: dict[str, _Workload] = {}
        self._quiet_until: dict[tuple[str, str], int] = {}  # (service, SLI) -> Unix ns
        self._last_window_ns = 0
        self._now_ns = 0  # the last tick's time: the engine's own clock
        # (service, trace id, request id) -> the tick time it was judged after. Stamped
        # with the engine's clock, not the span's, so insertion order is stamp order.
        self._ttft_judged: dict[tuple[str, str, str], int] = {}
        self._ttft_bad: set[tuple[str, str, str]] = set()  # those judged bad
        self.counters = {"spans": 0, "signals": 0, "slo_events": 0, "attributions": 0,
                         "abstained": 0, "ttft_repeats": 0}

    # ---- intake --------------------------------------------------------------------

    def set_active_signals(self, signals: Iterable[str]) -> None:
        """The signals whose probes run. A probe that ran and saw nothing for a workload
        then counts 0, so a baseline learns "no retransmits" before the first one
        happens; without this only signals already seen for the workload count."""
        self.active_signals = frozenset(signals)

    def add_signals(self, events: Iterable[ProbeEvent]) -> None:
        """Kernel signals (already identified): index for joins, keep per cgroup."""
        batch = list(events)
        self.correlator.add(batch)
        for ev in batch:
            self._by_cgroup[ev.cgroup_id].add(ev)
        self.counters["signals"] += len(batch)

    def add_spans(self, spans: Iterable[Span]) -> list[SloEvent]:
        """Judge every SLI of every span; returns the SloEvents (breaches included).

        A request has one TTFT: the first ``ttft_ms`` sample of a request (its trace and
        request id) counts and later ones are dropped (``ttft_repeats``). That lets a
        service end a short span at its first token, so a slow first token is judged when
        it happens rather than when the whole answer has streamed, and still carry the
        TTFT on its request span. A request is remembered for ``signal_retention_s``: an
        answer that streams for longer after its first token is counted twice. A
        dropped repeat on the request span of a request judged bad still marks when
        that request ended (see ``_Workload.bad_ttft_request_ends``).

        Correlation waits until ``correlation_delay_s`` after the span's end (see
        :meth:`tick`): kernel signals of the span's last moments may still be in a ring
        buffer or an aggregate interval that has not been read yet.
        """
        out = []
        judged = self._ttft_judged
        for span in spans:
            self.counters["spans"] += 1
            self._pending.append(span)
            work = self._workload(span)
            for sample in slis_from_span(span):
                ttft_key = None
                if sample.sli_name == "ttft_ms":
                    ttft_key = (sample.service, sample.trace_id, sample.request_id)
                    if ttft_key in judged:
                        self.counters["ttft_repeats"] += 1
                        if ttft_key in self._ttft_bad and is_request_span(span):
                            work.bad_ttft_request_ends.add(_judged(sample, bad=True))
                        continue
                    judged[ttft_key] = self._now_ns or sample.ts_unix_nano  # before a tick
                status = evaluate(sample, self.config.thresholds)
                self.book.observe(sample, status)
                judgement = _judged(sample, bad=is_bad(sample, status))
                work.samples.add(judgement)
                if ttft_key is not None and judgement.bad:
                    self._ttft_bad.add(ttft_key)
                if status == "breach":
                    work.violations.append(sample)
                out.append(to_slo_event(sample, status, event_id=_event_id(sample)))
        self.counters["slo_events"] += len(out)
        return out

    def breach_due(self, now_ns: int) -> bool:
        """Whether a tick at ``now_ns`` would explain a breach: one whose (service, SLI)
        is not held back by a cooldown. The agent ticks at once when it would."""
        quiet = self._quiet_until
        return any(now_ns >= quiet.get((service, s.sli_name), 0)
                   for service, work in self._workloads.items() for s in work.violations)

    def _workload(self, span: Span) -> _Workload:
        service = span.service
        work = self._workloads.get(service)
        if work is None:
            work = self._workloads[service] = _Workload(
                str(span.resource.get("k8s.cluster.name", "")),
                str(span.resource.get("k8s.namespace.name", "")))
        pid = span.attr("process.pid")
        if isinstance(pid, int) and pid > 0 and pid not in work.pids:
            work.pids.add(pid)
            cgroup = self.cgroup_of_pid.get(pid)
            if cgroup:
                work.cgroups.add(cgroup)
        return work

    # ---- evaluation ----------------------------------------------------------------

    def _correlate_due(self, now_ns: int) -> None:
        """Join spans that ended long enough ago; matched cgroups join their workload."""
        due_ns = now_ns - int(self.config.correlation_delay_s * NS)
        due = [span for span in self._pending if span.end_unix_nano <= due_ns]
        if not due:
            return
        self._pending = [span for span in self._pending if span.end_unix_nano > due_ns]
        for es in self.correlator.correlate_many(due):  # together: one pass per chunk
            self._workloads[es.span.service].cgroups.update(es.cgroup_ids)

    def tick(self, now_ns: int) -> list[IncidentAttribution]:
        """Explain violations since the last tick; learn baselines from calm windows."""
        window_ns = int(self.config.window_s * NS)
        window_done = now_ns - self._last_window_ns >= window_ns
        self._now_ns = max(self._now_ns, now_ns)
        self._correlate_due(now_ns)
        self._expire(now_ns)
        alerts: dict[tuple[str, str], BurnRateAlert] = {}
        for a in self.book.alerts(now_ns):  # rules run fastest first: keep the fastest
            alerts.setdefault((a.service, a.sli_name), a)
        out: list[IncidentAttribution] = []
        for service, work in self._workloads.items():
            triggers: dict[str, SliSample | None] = {s.sli_name: s for s in work.violations}
            began: dict[str, int] = {}  # per SLI, the earliest start of its breaches
            for s in work.violations:
                began[s.sli_name] = min(began.get(s.sli_name, s.start_unix_nano),
                                        s.start_unix_nano)
            work.violations.clear()
            for svc, sli in alerts:
                if svc == service:
                    triggers.setdefault(sli, None)
            if triggers:
                # Any breach or alert marks the workload as unwell, attributed or not
                # (cooldown): such windows must not teach the baseline.
                work.last_violation_ns = now_ns
            due = [(sli, sample) for sli, sample in triggers.items()
                   if now_ns >= self._quiet_until.get((service, sli), 0)]
            calm = now_ns - work.last_violation_ns > 2 * window_ns
            if not due and not (window_done and calm):
                continue
            start_ns = now_ns - window_ns
            samples = work.samples.window(start_ns, now_ns)
            signals = self._signals(work, start_ns, now_ns)
            features = self._features(work, signals, samples, window_ns)
            # The SLI's recent events: whether the bad requests an alert is about are
            # recent enough to explain (else a past burn), and where their evidence starts.
            lookback_ns = now_ns - self.config.past_burn_windows * window_ns
            lookback = (work.samples.window(lookback_ns, now_ns)
                        + self._bad_ttft_request_ends(work, lookback_ns, start_ns, now_ns)
                        ) if due else []
            if due:
                slis = {sli for sli, _ in due}
                since, earlier = self._evidence_start(
                    work, signals, lookback, slis, [began[s] for s in slis if s in began],
                    start_ns, now_ns)
                if since < start_ns:
                    # Each feature at its stronger reading: the window keeps a fault that
                    # has just begun at full strength (the lifetime reaches back into
                    # calm and dilutes it), the lifetime keeps one that has just ended.
                    features = _stronger(features, self._features(
                        work, earlier + signals,
                        work.samples.window(since, start_ns - 1) + samples, now_ns - since),
                        functools.partial(self.baseline.score, self._key(service, work)))
            for sli, sample in due:
                bad = good = 0
                for j in lookback:
                    if j.sli_name == sli:
                        if j.bad:
                            bad += 1
                        else:
                            good += 1
                att = attribute_violation(
                    self._violation(service, work, sli, sample, alerts.get((service, sli)),
                                    now_ns, bad, good),
                    features, self.baseline, self.config.attribution)
                # An abstention is retried soon: the first window of a fault is mostly
                # pre-fault, and a full cooldown would hide the answer for that long. Not
                # a past burn: the window will not show more while the alert fires.
                retry = att.abstain and not (att.abstain_reason or "").startswith(PAST_BURN)
                quiet = self.config.abstain_retry_s if retry else self.config.cooldown_s
                self._quiet_until[(service, sli)] = now_ns + int(quiet * NS)
                self.counters["attributions"] += 1
                self.counters["abstained"] += att.abstain
                out.append(att)
            if not due:
                self.baseline.update_window(self._key(service, work), features, now_ns / NS)
        if window_done:
            self._last_window_ns = now_ns
        return out

    def _violation(self, service: str, work: _Workload, sli: str, sample: SliSample | None,
                   alert: BurnRateAlert | None, now_ns: int, bad_in_window: int,
                   good_in_window: int) -> Violation:
        """The attributor's input: what burned, how fast, and which requests."""
        # A breach without a firing alert reports the burn over the shortest alert
        # window, the closest thing to "right now".
        short_s = min((r.short_window_s for r in self.config.rules), default=300)
        burn = alert.burn_rate_long if alert else (
            self.book.burn_rate(service, sli, short_s, now_ns) or 0.0)
        return Violation(
            service=service, cluster=work.cluster, namespace=work.namespace or None, sli=sli,
            burn_rate=burn,
            window_minutes=max(1, int((alert.long_window_s if alert else short_s) // 60)),
            ts=now_ns / NS,
            trace_ids=(sample.trace_id,) if sample and sample.trace_id else (),
            request_ids=(sample.request_id,) if sample else (),
            # A breach just reported is news even if its span ended before the window.
            bad_in_window=max(bad_in_window, int(sample is not None)),
            good_in_window=good_in_window)

    def _bad_ttft_request_ends(self, work: _Workload, since_ns: int, start_ns: int,
                               now_ns: int) -> list[_Judged]:
        """Requests bad on TTFT whose request span ended in ``[since_ns, now_ns]``, unless
        they began before the evidence can reach (:meth:`_evidence_floor`): an alert kept
        from being a past burn by such a request would be explained by its calm tail."""
        floor = self._evidence_floor(start_ns, now_ns)
        return [j for j in work.bad_ttft_request_ends.window(since_ns, now_ns)
                if j.start_unix_nano >= floor]

    def _evidence_floor(self, start_ns: int, now_ns: int) -> int:
        """How far back the evidence of a violation may reach: ``evidence_lookback_s``,
        but never less than the window starting at ``start_ns``."""
        return min(start_ns, now_ns - int(self.config.evidence_lookback_s * NS))

    def _key(self, service: str, work: _Workload) -> str:
        return workload_key(work.cluster, work.namespace or None, service)

    def _timelines(self, work: _Workload) -> list[_Timeline[ProbeEvent]]:
        return [self._by_cgroup[cg] for cg in work.cgroups if cg in self._by_cgroup]

    def _signals(self, work: _Workload, start_ns: int, end_ns: int) -> list[ProbeEvent]:
        """The workload's signals with ``start_ns <= ts <= end_ns``."""
        return [ev for t in self._timelines(work) for ev in t.window(start_ns, end_ns)]

    def _evidence_start(self, work: _Workload, signals: list[ProbeEvent],
                        samples: list[_Judged], slis: set[str], breaches_began: list[int],
                        start_ns: int, now_ns: int) -> tuple[int, list[ProbeEvent]]:
        """Where the evidence of a violation begins, and the workload's signals from
        there to the window (``signals``, the window's own, are not repeated).

        The window's start, or earlier when the breaches of ``slis`` being explained
        (``breaches_began``: late ones may have ended before the window) or the recent
        bad requests of ``slis`` (``samples``: the last ``past_burn_windows``, which the
        alert is about) began before it; then earlier still where a connect or handshake
        began that ended between that point and now (streamed or aggregated), so was in
        flight when the earliest of them began; one step only, never before
        ``evidence_lookback_s`` ago, unless the window itself reaches further.

        A request that breaches just after a fault ended began during it: the window
        alone shows the recovery (a slow handshake completing, the process catching up)
        and names that; the request's lifetime holds the cause. A burn-rate alert may have
        no bad request in the window, but its slow connects still say when they began.
        Requests that began as a loss ended and waited for a retransmitted SYN hold only
        SYN retransmits in their own lifetime, which look like SYN drops; a connect that
        waited 3 s beside them began in the loss, and from there the lost data is in view.
        """
        floor = self._evidence_floor(start_ns, now_ns)
        requests_began = [*breaches_began,
                          *(j.start_unix_nano for j in samples if j.sli_name in slis and j.bad)]
        since = max(floor, min([start_ns, *requests_began]))
        earlier = self._signals(work, since, start_ns - 1) if since < start_ns else []
        connects_began = [ev.ts_unix_nano - int(_latency_ms(ev) * 1e6)
                          for ev in signals + earlier if ev.signal in _LIFETIME_SIGNALS]
        reach = max(floor, min([since, *connects_began]))
        if reach < since:
            earlier = self._signals(work, reach, since - 1) + earlier
        return reach, earlier

    def _features(self, work: _Workload, signals: list[ProbeEvent],
                  samples: list[_Judged], span_ns: int) -> WindowFeatures:
        """Features of ``span_ns`` worth of ``signals`` and SLI ``samples``; sums scaled to
        one window's worth when that is longer than a window."""
        active = self.active_signals or {  # replay: every signal seen (whole retention)
            ev.signal for t in self._timelines(work) for ev in t.items}
        window_ns = int(self.config.window_s * NS)
        return features_from(signals, _app_evidence(samples),
                             active_signals=active, own_cgroup_ids=work.cgroups,
                             sum_scale=min(1.0, window_ns / max(span_ns, 1)))

    def _expire(self, now_ns: int) -> None:
        horizon = now_ns - int(self.config.signal_retention_s * NS)
        for timeline in self._by_cgroup.values():
            timeline.expire(horizon)
        for work in self._workloads.values():
            work.samples.expire(horizon)
            work.bad_ttft_request_ends.expire(horizon)
        judged = self._ttft_judged  # stamped with the tick clock: oldest first
        for key in [k for k, _ in itertools.takewhile(lambda kv: kv[1] < horizon,
                                                        judged.items())]:
            del judged[key]
            self._ttft_bad.discard(key)
        # The correlator drops signals older than the watermark minus its gate; the
        # watermark is the oldest instant a span still to be joined may start.
        oldest = min((s.start_unix_nano for s in self._pending), default=now_ns)
        self.correlator.evict(min(oldest, horizon))


class _Timeline(Generic[T]):
    """Records of the retention in arrival order, with each record's time and the newest
    time up to it (its *reach*, which never decreases). Every record before the first
    whose reach is at ``start_ns`` is older than ``start_ns``, so :meth:`window` finds
    where to begin by bisection and reads only the window's tail rather than the whole
    retention (two minutes of a busy service) at every tick; a late record (a sender's
    retried batch, a stalled agent) costs nothing but its own filtering."""

    __slots__ = ("_reach", "_ts", "_ts_of", "items")

    def __init__(self, ts_of: Callable[[T], int]) -> None:
        self.items: deque[T] = deque()
        self._ts: deque[int] = deque()
        self._reach: deque[int] = deque()
        self._ts_of = ts_of

    def add(self, rec: T) -> None:
        ts = self._ts_of(rec)
        self.items.append(rec)
        self._ts.append(ts)
        self._reach.append(max(ts, self._reach[-1]) if self._reach else ts)

    def window(self, start_ns: int, end_ns: int) -> list[T]:
        """Records with ``start_ns <= ts <= end_ns``, in arrival order."""
        tail = len(self.items) - bisect.bisect_left(self._reach, start_ns)
        # The window is at the end: copy the tail from there, in C, then filter it.
        ts = list(itertools.islice(reversed(self._ts), tail))
        recs = list(itertools.islice(reversed(self.items), tail))
        if ts and (min(ts) < start_ns or max(ts) > end_ns):
            recs = [r for t, r in zip(ts, recs, strict=True) if start_ns <= t <= end_ns]
        recs.reverse()
        return recs

    def expire(self, horizon_ns: int) -> None:
        """Drop the oldest records before ``horizon_ns`` (a late one may stay a little)."""
        items, ts = self.items, self._ts
        while ts and ts[0] < horizon_ns:
            items.popleft()
            ts.popleft()
            self._reach.popleft()


def _stronger(a: WindowFeatures, b: WindowFeatures, deviation: Deviation) -> WindowFeatures:
    """Per feature the reading that deviates more from the workload's baseline (every
    catalogued feature is worse when higher, but a mean over several windows or a share
    of more requests is less noisy, so the larger value is not always the stronger); by
    value while the feature's baseline warms up; a reading it cannot score (not finite)
    never wins over one it can. Its join quality, request count and window count come
    with it."""
    out = WindowFeatures(values=dict(a.values), meta=dict(a.meta), trials=dict(a.trials),
                         windows=dict(a.windows))
    for name, v in b.values.items():
        if name in out.values:
            za = deviation(name, out.values[name], a.trials.get(name), a.windows.get(name))
            zb = deviation(name, v, b.trials.get(name), b.windows.get(name))
            if za is None and zb is None:  # warming up: by value
                take = v > out.values[name]
            else:  # else a reading without a deviation (not finite) never wins
                take = zb is not None and (za is None or zb > za)
            if not take:
                continue
        out.values[name] = v
        _carry(out.meta, b.meta, name)
        _carry(out.trials, b.trials, name)
        _carry(out.windows, b.windows, name)
    return out


def _carry(mine: dict[str, V], theirs: dict[str, V], name: str) -> None:
    """``name``'s entry as in ``theirs``, absent if absent there."""
    mine.pop(name, None)
    if name in theirs:
        mine[name] = theirs[name]


def _latency_ms(ev: ProbeEvent) -> float:
    """A connect's or handshake's latency; of an aggregate, the upper bound of its
    slowest bucket (within a factor of two of the slowest operation that ended in it)."""
    return ev.value if ev.count is None else detail_values(ev.detail).get("max", ev.value)


def _app_evidence(window: list[_Judged]) -> AppEvidence:
    provider = [j for j in window if j.sli_name == "provider_error_rate"]
    retrieval = sorted(j.value for j in window if j.sli_name == "retrieval_latency_ms")
    return AppEvidence(
        provider_requests=len(provider),
        provider_429=sum(j.detail == "429" for j in provider),
        provider_5xx=sum(j.detail == "5xx" for j in provider),
        retrieval_count=len(retrieval),
        retrieval_mean_ms=sum(retrieval) / len(retrieval) if retrieval else 0.0,
        retrieval_p99_ms=retrieval[min(len(retrieval) - 1, int(0.99 * len(retrieval)))]
        if retrieval else 0.0,
    )


def _event_id(sample: SliSample) -> str:
    raw = f"{sample.trace_id}/{sample.span_id}/{sample.sli_name}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()
