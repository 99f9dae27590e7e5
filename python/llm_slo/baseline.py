"""Window features of a workload and their learned per-workload baselines.

No fixed thresholds: 40 ms of DNS is calm for one workload and an outage for another.
:func:`features_from` turns one window of a workload's ProbeEvents and span evidence into
:class:`WindowFeatures`; :class:`Baseline` keeps a robust decayed centre and scale per
(workload, feature) and scores a value as a z-like deviation. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

import msgspec

from llm_slo.incident import CorrelationTier, EvidenceSource
from llm_slo.probe_event import ProbeEvent, detail_values


class FeatureSpec(msgspec.Struct, frozen=True):
    """What a feature measures: unit, evidence source, evidence group, the sub-cause it
    names when it is the strongest deviation, and the floors of its baseline scale."""

    unit: str
    source: EvidenceSource
    group: str
    sub_cause: str
    abs_floor: float  # smallest scale, in the feature's unit: a flat baseline is not 0 wide
    rel_floor: float = 0.0  # smallest scale as a share of the centre (latencies jitter)
    # A share of requests (k of n): the smallest rate assumed for its sampling noise when n
    # is known (0: not such a share, abs_floor is its width).
    base_rate: float = 0.0
    # Groups it is also evidence for, besides its own (which names its evidence and
    # sub-cause): a reading that separates causes its own group lumps together.
    also_groups: tuple[str, ...] = ()


_MS, _CNT, _SHARE = "ms", "count", "ratio"
# The feature catalogue. Floors are in the unit of the feature; they stop a baseline that
# was always 0 (no retransmits, no 429s) from turning one event into an infinite z.
# DNS latencies: 5 ms. Their tails come from log2 histograms, so a resolver that went
# from 4 to 16 ms moved two buckets; that is 12 ms of a request judged in hundreds, and
# at a 2 ms floor it was a 6-sigma rise that competed with the real cause (slow TLS
# handshakes load the lab's resolver that much). A retrieval p99 and a handshake max:
# 20 ms. Each is the slowest of a window's ~10-20, and one held up by a GC pause or a
# busy event loop (a log2 bucket or two up) outvoted or split the real cause at 5 ms.
FEATURES: dict[str, FeatureSpec] = {
    "dns_wire_p99_ms": FeatureSpec(_MS, "ebpf", "dns", "dns_latency", 5.0, 0.2,
                                   also_groups=("dns_wire",)),
    "dns_wire_mean_ms": FeatureSpec(_MS, "ebpf", "dns", "dns_latency", 5.0, 0.2,
                                    also_groups=("dns_wire",)),
    "dns_resolver_p99_ms": FeatureSpec(_MS, "ebpf", "dns", "dns_latency", 5.0, 0.2),
    "dns_resolver_mean_ms": FeatureSpec(_MS, "ebpf", "dns", "dns_latency", 5.0, 0.2),
    "dns_timeouts": FeatureSpec(_CNT, "ebpf", "dns", "dns_timeout", 1.0),
    "dns_failures": FeatureSpec(_CNT, "ebpf", "dns", "dns_failure", 1.0),
    "tcp_retransmits": FeatureSpec(_CNT, "ebpf", "tcp_retx", "packet_loss", 1.0, 0.2),
    "tcp_syn_retransmits": FeatureSpec(_CNT, "ebpf", "syn_retx", "syn_retransmits", 1.0),
    "connect_mean_ms": FeatureSpec(_MS, "ebpf", "connect", "slow_connect", 5.0, 0.2),
    "connect_max_ms": FeatureSpec(_MS, "ebpf", "connect", "slow_connect", 5.0, 0.2),
    "connect_failures": FeatureSpec(_CNT, "ebpf", "connect", "connect_failure", 1.0),
    "connect_timeouts": FeatureSpec(_CNT, "ebpf", "connect", "connect_timeout", 1.0),
    "tls_handshake_mean_ms": FeatureSpec(_MS, "ebpf", "tls", "slow_handshake", 5.0, 0.2),
    "tls_handshake_max_ms": FeatureSpec(_MS, "ebpf", "tls", "slow_handshake", 20.0, 0.2),
    "tls_failures": FeatureSpec(_CNT, "ebpf", "tls", "tls_failure", 1.0),
    "runq_mean_ms": FeatureSpec(_MS, "ebpf", "runq", "runqueue_delay", 0.5, 0.2),
    "runq_p99_ms": FeatureSpec(_MS, "ebpf", "runq", "runqueue_delay", 2.0, 0.2),
    "runq_slow_count": FeatureSpec(_CNT, "ebpf", "runq", "runqueue_delay", 2.0, 0.2),
    "runq_other_delay_ms": FeatureSpec(_MS, "ebpf", "runq_other", "noisy_neighbour", 10.0, 0.2),
    "cfs_throttled_ms": FeatureSpec(_MS, "ebpf", "cfs", "cfs_quota", 5.0, 0.2),
    "cfs_throttled_share": FeatureSpec(_SHARE, "ebpf", "cfs", "cfs_quota", 0.02),
    "mem_reclaim_ms": FeatureSpec(_MS, "ebpf", "reclaim", "reclaim_stall", 1.0, 0.2),
    "mem_reclaim_max_ms": FeatureSpec(_MS, "ebpf", "reclaim", "reclaim_stall", 1.0, 0.2),
    "cpu_steal_pct": FeatureSpec("percent", "ebpf", "steal", "cpu_steal", 1.0, 0.2),
    "provider_429_share": FeatureSpec(_SHARE, "otel", "provider_429", "rate_limited_429", 0.02,
                                      base_rate=0.001),
    "provider_5xx_share": FeatureSpec(_SHARE, "otel", "provider_5xx", "provider_5xx", 0.02,
                                      base_rate=0.001),
    "retrieval_own_mean_ms": FeatureSpec(_MS, "otel", "retrieval", "retrieval_slow", 5.0, 0.2),
    "retrieval_own_p99_ms": FeatureSpec(_MS, "otel", "retrieval", "retrieval_slow", 20.0, 0.2),
}
_DEFAULT_SPEC = FeatureSpec("", "ebpf", "", "", 1e-3, 0.1)


def spec_of(feature: str) -> FeatureSpec:
    """The catalogue entry of a feature; unknown features get generic floors."""
    return FEATURES.get(feature, _DEFAULT_SPEC)


def workload_key(cluster: str, namespace: str | None, service: str) -> str:
    """The baseline key of a workload: ``cluster/namespace/service``."""
    return f"{cluster}/{namespace or ''}/{service}"


class FeatureMeta(msgspec.Struct, frozen=True, omit_defaults=True):
    """How the signals behind a feature were joined to the workload, when known."""

    correlation_tier: CorrelationTier | None = None
    confidence: float | None = None


class WindowFeatures(msgspec.Struct, kw_only=True):
    """One evaluation window of one workload: feature name -> value.

    A feature that is absent was not observed (no probe, no traffic), which is different
    from 0. There is deliberately no label field: nothing here says which fault was on.
    """

    values: dict[str, float]
    meta: dict[str, FeatureMeta] = msgspec.field(default_factory=dict)
    # For shares of requests: how many requests the share is of (its sampling noise).
    trials: dict[str, int] = msgspec.field(default_factory=dict)
    # For sums read over more than one window: over how many windows their per-window
    # mean is taken (the noise of a mean of n windows is the baseline's over sqrt(n)).
    windows: dict[str, float] = msgspec.field(default_factory=dict)


class AppEvidence(msgspec.Struct, kw_only=True, frozen=True):
    """Application evidence of one window, counted by the caller from the workload's spans."""

    provider_requests: int = 0
    provider_429: int = 0
    provider_5xx: int = 0
    retrieval_count: int = 0
    retrieval_mean_ms: float = 0.0
    retrieval_p99_ms: float = 0.0


def _series(detail: str | None) -> str:
    """The sub-series word leading a detail (``wire``, ``resolver``, ``direct``), or ""."""
    first = (detail or "").split(" ", 1)[0]
    return "" if "=" in first else first


class _Acc:
    """Count-weighted mean, largest p99 and largest max of one sub-series."""

    def __init__(self) -> None:
        self.n, self.total, self.p99, self.max = 0, 0.0, 0.0, 0.0

    def add(self, mean: float, count: int, p99: float, mx: float) -> None:
        self.n += count
        self.total += mean * count
        self.p99, self.max = max(self.p99, p99), max(self.max, mx)


_OK_OUTCOMES = (None, "noerror", "nxdomain", "ok", "established")  # NXDOMAIN: ndots routine
# Count features per probe: 0, not absent, when the probe ran and saw nothing.
_COUNTS: dict[str, tuple[str, ...]] = {
    "dns_latency_ms": ("dns_timeouts", "dns_failures"),
    "tcp_retransmits_total": ("tcp_retransmits", "tcp_syn_retransmits"),
    "connect_latency_ms": ("connect_failures", "connect_timeouts"),
    "tls_handshake_ms": ("tls_failures",),
    "runqueue_delay_ms": ("runq_slow_count", "runq_other_delay_ms"),
    "mem_reclaim_latency_ms": ("mem_reclaim_ms",),
    "cfs_throttled_ms": ("cfs_throttled_ms",),
}

_SUMS = frozenset(n for names in _COUNTS.values() for n in names)


def features_from(signals: Iterable[ProbeEvent], app: AppEvidence | None = None, *,
                  active_signals: Iterable[str] | None = None,
                  own_cgroup_ids: Iterable[int] | None = None,
                  sum_scale: float = 1.0) -> WindowFeatures:
    """Features of one workload's window from its ProbeEvents and span evidence.

    Aggregates (events whose detail carries ``p99<=``) give means and tails; streamed
    events give outcomes (timeouts, failures) and run-queue culprits, and tails when no
    aggregate came. Count features of every signal in ``active_signals`` (default: the
    signals present) are 0 when nothing was seen: a quiet probe means "none happened",
    and a baseline that only learnt from windows with retransmits would be biased high.
    ``own_cgroup_ids`` (default: the events' cgroups) are the workload's own cgroups.
    Sums (the count features: events, stall and wait time) are multiplied by
    ``sum_scale``: evidence gathered over ``1 / sum_scale`` windows is their per-window
    mean, compared with a baseline learnt from single windows, and its narrower noise is
    recorded in ``windows``.
    """
    events = list(signals)
    own = set(own_cgroup_ids) if own_cgroup_ids is not None else {e.cgroup_id for e in events}
    active = set(active_signals) if active_signals is not None else {e.signal for e in events}
    agg: dict[str, _Acc] = {}
    stream: dict[str, _Acc] = {}
    counts: dict[str, float] = {}
    shares: dict[str, list[float]] = {}

    def bump(name: str, by: float = 1.0) -> None:
        counts[name] = counts.get(name, 0.0) + by

    for e in events:
        kv = detail_values(e.detail)
        series = f"{e.signal}/{_series(e.detail)}"
        if "p99" in kv and e.count is not None:  # an in-kernel histogram interval
            agg.setdefault(series, _Acc()).add(e.value, e.count, kv["p99"],
                                               kv.get("max", kv["p99"]))
            if e.signal == "connect_latency_ms":
                bump("connect_failures/agg", kv.get("failures", 0.0))
            continue
        if e.signal in ("connect_latency_ms", "tls_handshake_ms"):
            series = e.signal + "/"  # their details are per-event attributes, not series
        # By outcome, not status: status "error" also means "slow" (probe_event.THRESHOLDS).
        ok = e.outcome in _OK_OUTCOMES
        if ok or e.signal in ("dns_latency_ms", "connect_latency_ms"):
            stream.setdefault(series, _Acc()).add(e.value, 1, e.value, e.value)
        if e.signal == "dns_latency_ms" and not ok:
            bump("dns_timeouts" if e.outcome == "timeout" else "dns_failures")
        elif e.signal == "tcp_retransmits_total":
            bump("tcp_syn_retransmits" if e.detail == "syn" else "tcp_retransmits", e.value)
        elif e.signal == "connect_latency_ms" and e.outcome not in (None, "established"):
            bump("connect_failures")
            if e.outcome == "timeout":
                bump("connect_timeouts")
        elif e.signal == "tls_handshake_ms" and e.outcome == "failed":
            bump("tls_failures")
        elif e.signal == "runqueue_delay_ms":
            bump("runq_slow_count")
            prev = int(kv.get("prev_cgroup_id", 0))
            # 0 = unknown, 1 = the cgroup2 root (idle task, unconfined host processes):
            # neither is a neighbour we could blame.
            if prev > 1 and prev not in own:
                bump("runq_other_delay_ms", e.value)
        elif e.signal == "mem_reclaim_latency_ms":
            bump("mem_reclaim_ms", e.value)
        elif e.signal == "cfs_throttled_ms":
            bump("cfs_throttled_ms", e.value)
            shares.setdefault("cfs", []).append(kv.get("throttled_share", 0.0))
        elif e.signal == "cpu_steal_pct":
            shares.setdefault("steal/" + ("node" if e.detail == "node" else "cpu"),
                              []).append(e.value)

    if "connect_failures/agg" in counts:  # the aggregate counts every failed connect,
        counts["connect_failures"] = counts["connect_failures/agg"]  # the ring may not
    # cfs_throttled_ms counts 0 too: its probe only reads cgroups with a quota, and a
    # cgroup without one is never throttled, so the baseline of a workload that gets a
    # limit later (an edited Deployment, a VPA) is rightly "no throttling".
    v = {n: counts.get(n, 0.0) for sig, names in _COUNTS.items() for n in names
         if n in counts or sig in active}

    def put(series: str, mean: str | None, tail: str, use: str = "p99",
            stream_complete: bool = False) -> None:
        """Aggregate first; else the stream's max (only slow events are streamed), and
        its mean only where every event is streamed."""
        a, s_ = agg.get(series), stream.get(series)
        if a and a.n:
            if mean:
                v[mean] = a.total / a.n
            v[tail] = getattr(a, use)
        elif s_ and s_.n:
            v[tail] = s_.max
            if mean and stream_complete:
                v[mean] = s_.total / s_.n

    for layer in ("wire", "resolver"):
        put(f"dns_latency_ms/{layer}", f"dns_{layer}_mean_ms", f"dns_{layer}_p99_ms")
    put("connect_latency_ms/", "connect_mean_ms", "connect_max_ms", "max")
    put("tls_handshake_ms/", "tls_handshake_mean_ms", "tls_handshake_max_ms", "max", True)
    put("runqueue_delay_ms/", "runq_mean_ms", "runq_p99_ms")
    reclaim = [a for k, a in agg.items() if k.startswith("mem_reclaim_latency_ms/")]
    if reclaim:  # total stall time of the window, from the histograms when present
        v["mem_reclaim_ms"] = sum(a.total for a in reclaim)
    reclaim = reclaim or [a for k, a in stream.items()
                          if k.startswith("mem_reclaim_latency_ms/")]
    if reclaim or "mem_reclaim_latency_ms" in active:
        v["mem_reclaim_max_ms"] = max((a.max for a in reclaim), default=0.0)
    if "cfs" in shares:
        v["cfs_throttled_share"] = max(shares["cfs"])
    steal = shares.get("steal/node") or shares.get("steal/cpu")
    if steal:
        v["cpu_steal_pct"] = sum(steal) / len(steal)
    trials: dict[str, int] = {}
    if app is not None and app.provider_requests > 0:
        v["provider_429_share"] = app.provider_429 / app.provider_requests
        v["provider_5xx_share"] = app.provider_5xx / app.provider_requests
        trials["provider_429_share"] = trials["provider_5xx_share"] = app.provider_requests
    if app is not None and app.retrieval_count > 0:
        # A client span that resolves its backend's name contains the lookup, so a slow
        # resolver made every retrieval slow and looked like a slow vector DB (in the lab
        # 0.60 vs 0.33 for a DNS delay, a hair above min_confidence). The backend's own
        # time is at least the span less the interval's slowest lookup: the mean resolver
        # time would not do, since at a fault's start and end the spans ending in a window
        # and the lookups ending in it are different requests.
        slowest = max((a.max for a in (agg.get("dns_latency_ms/resolver"),
                                       stream.get("dns_latency_ms/resolver")) if a), default=0.0)
        v["retrieval_own_mean_ms"] = max(0.0, app.retrieval_mean_ms - slowest)
        v["retrieval_own_p99_ms"] = max(0.0, app.retrieval_p99_ms - slowest)
    windows: dict[str, float] = {}
    if sum_scale != 1.0:
        for name in _SUMS.intersection(v):
            v[name] *= sum_scale
            if sum_scale < 1.0:
                windows[name] = 1.0 / sum_scale
    return WindowFeatures(values=v, meta=_meta(v, events), trials=trials, windows=windows)


_SIGNAL_OF_GROUP = {"dns": "dns_latency_ms", "tcp_retx": "tcp_retransmits_total",
                    "syn_retx": "tcp_retransmits_total", "connect": "connect_latency_ms",
                    "tls": "tls_handshake_ms", "runq": "runqueue_delay_ms",
                    "runq_other": "runqueue_delay_ms", "cfs": "cfs_throttled_ms",
                    "reclaim": "mem_reclaim_latency_ms", "steal": "cpu_steal_pct"}


def _meta(values: dict[str, float], events: list[ProbeEvent]) -> dict[str, FeatureMeta]:
    """Join quality per kernel feature: exact when its events carry a trace id, else the
    window join by workload identity; the best correlation confidence the events carry."""
    by_signal: dict[str, list[ProbeEvent]] = {}
    for e in events:
        by_signal.setdefault(e.signal, []).append(e)
    out: dict[str, FeatureMeta] = {}
    for name in values:
        evs = by_signal.get(_SIGNAL_OF_GROUP.get(spec_of(name).group, ""))
        if evs:
            confs = [e.confidence for e in evs if e.confidence is not None]
            tier: CorrelationTier = "trace_id_exact" if any(e.trace_id for e in evs) \
                else "window"
            out[name] = FeatureMeta(correlation_tier=tier, confidence=max(confs, default=None))
    return out


class FeatureStats(msgspec.Struct):
    """Learned state of one feature: updates seen, centre, mean absolute deviation."""

    n: int = 0
    center: float = 0.0
    mad: float = 0.0
    last_ts: float = 0.0


class BaselineConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Baseline parameters; see docs/attribution.md."""

    warmup: int = 20  # windows before a feature is scored
    half_life_s: float = 3600.0  # decay of old windows after warm-up
    huber_k: float = 3.0  # updates are clipped to centre +- k scales (outlier-robust)
    max_keys: int = 1024  # workloads kept (least recently updated evicted)
    max_features: int = 64  # features per workload


# mean |x - mu| of a normal is sigma * sqrt(2/pi): this makes the scale a sigma estimate.
_MAD_TO_SIGMA = math.sqrt(math.pi / 2)


class Baseline:
    """Robust exponentially decayed centre and scale per (workload key, feature).

    During warm-up the centre is the plain running mean (fast, unbiased start). After it,
    each update is clipped to ``centre +- huber_k * scale`` before entering the EWMA, so a
    fault that slips into the training windows pulls the baseline only slowly.
    """

    def __init__(self, config: BaselineConfig | None = None) -> None:
        self.config = config or BaselineConfig()
        self._keys: OrderedDict[str, dict[str, FeatureStats]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def update(self, key: str, feature: str, value: float, ts: float) -> None:
        """Learn one value observed at ``ts`` (seconds); non-finite values are ignored."""
        if not math.isfinite(value):
            return
        feats = self._keys.get(key)
        if feats is None:
            feats = self._keys[key] = {}
            if len(self._keys) > self.config.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key)
        st = feats.get(feature)
        if st is None:
            if len(feats) >= self.config.max_features:
                return
            st = feats[feature] = FeatureStats()
        cfg = self.config
        st.n += 1
        if st.n <= cfg.warmup:
            alpha = 1.0 / st.n
        else:
            dt = max(ts - st.last_ts, 1.0)  # out-of-order or repeated ts: one second
            alpha = 1.0 - 2.0 ** (-dt / cfg.half_life_s)
            lim = cfg.huber_k * self.scale_of(feature, st)
            value = min(max(value, st.center - lim), st.center + lim)
        dev = abs(value - st.center) if st.n > 1 else 0.0
        st.center += alpha * (value - st.center)
        st.mad += alpha * (dev - st.mad)
        st.last_ts = max(st.last_ts, ts)

    def update_window(self, key: str, features: WindowFeatures, ts: float) -> None:
        """Learn every feature of a window the caller considers normal (no violation)."""
        for name, value in features.values.items():
            self.update(key, name, value, ts)

    def stats(self, key: str, feature: str) -> FeatureStats | None:
        """The learned state, or None if the feature was never seen for this key."""
        feats = self._keys.get(key)
        return feats.get(feature) if feats else None

    @staticmethod
    def scale_of(feature: str, st: FeatureStats, trials: int | None = None,
                 windows: float = 1.0) -> float:
        """Sigma-like scale, never below the feature's relative floor, nor its absolute
        floor; a share of ``trials`` requests (a feature with a ``base_rate``) has its
        sampling noise, the binomial ``sqrt(p(1-p)/trials)`` at the learnt rate (never
        below ``base_rate``), in place of the absolute floor.

        A per-window mean of a sum over ``windows`` (> 1) windows: the learnt spread and
        the relative floor (noise of each window) shrink by ``sqrt(windows)``; the
        absolute floor bounds the noise of the total, so it shrinks by ``windows``: one
        retransmit is one retransmit however long the reading."""
        spec = spec_of(feature)
        if trials and spec.base_rate > 0:
            p = min(max(st.center, spec.base_rate), 0.5)
            floor = math.sqrt(p * (1.0 - p) / trials)
        else:
            floor = spec.abs_floor
        spread = max(st.mad * _MAD_TO_SIGMA, spec.rel_floor * abs(st.center))
        if windows > 1.0:
            return max(spread / math.sqrt(windows), floor / windows)
        return max(spread, floor)

    def score(self, key: str, feature: str, value: float, trials: int | None = None,
              windows: float | None = None) -> float | None:
        """``(value - centre) / scale``; None while warming up or for unseen features.

        With ``trials``, a share of requests is scaled by its sampling noise
        (:meth:`scale_of`): one error in 20 requests is then a clear rise over a provider
        that did not fail, and one in 500 is not; a fixed floor judged both by the share
        alone. With ``windows`` (> 1), ``value`` is a per-window mean over that many
        windows, scaled as :meth:`scale_of` says: over a baseline of none, 4 retransmits
        in a 2.7 s lifetime are as telling as 4 in one window, not as 1.5 in one."""
        st = self.stats(key, feature)
        if st is None or st.n < self.config.warmup or not math.isfinite(value):
            return None
        scale = self.scale_of(feature, st, trials, windows or 1.0)
        return (value - st.center) / scale
