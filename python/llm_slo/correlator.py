"""Join kernel signals (ProbeEvents) to spans by tier; pure: no I/O, time is data.

Tiers (the original ladder, configurable): ``trace_id_exact`` 1.00, ``pod_pid_100ms``
0.90, ``pod_conn_250ms`` 0.80, ``service_node_500ms`` 0.65. A global gate ``window_ms``
bounds every tier. Only joins at or above ``threshold`` enrich a span (at most
``max_fanout``: best confidence, then smallest |Δt|, then kernel-flagged first).
Spans that nothing enriches get their nearest below-threshold joins as ``diagnostics``.

Time. Δt runs from the signal's timestamp to the span's *interval* ``[start, end]`` (0
inside, negative before, positive after), not to its start: an LLM span lasts seconds
and a DNS stall in the middle of it belongs to it. Interval aggregates (per-cgroup
histograms, CFS throttling) count as points at their interval end. Span clocks are moved
onto the kernel's wall clock with ``clock_offset_ns`` (span time + offset).

Indexing. Signals live in per-key arrays sorted by time (trace id; (pod, pid); (pod,
connection); (service, node)): a lookup is a dict get and two bisects. A signal that
carries a trace id is indexed under it only: it names its request, so joining it to
other requests by proximity would be wrong. Signals without a pod (host processes,
node-wide steal) join by trace id only.
"""

from __future__ import annotations

import ipaddress
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import islice
from typing import Annotated, Any

import msgspec

from llm_slo.events import ConnTuple
from llm_slo.probe_event import ProbeEvent
from llm_slo.spans import Span

TRACE_ID_EXACT, POD_PID = "trace_id_exact", "pod_pid_100ms"
POD_CONN, SERVICE_NODE = "pod_conn_250ms", "service_node_500ms"
CONFIDENCE_ATTR = "llm.ebpf.correlation_confidence"
ATTRIBUTES: dict[str, str] = {  # signal name -> span attribute (the original's names)
    "dns_latency_ms": "llm.ebpf.dns.latency_ms",
    "tcp_retransmits_total": "llm.ebpf.tcp.retransmits",
    "runqueue_delay_ms": "llm.ebpf.sched.runqueue_delay_ms",
    "cpu_steal_pct": "llm.ebpf.cpu.steal_pct",
    "connect_latency_ms": "llm.ebpf.net.connect_latency_ms",
    "tls_handshake_ms": "llm.ebpf.tls.handshake_ms",
    "cfs_throttled_ms": "llm.ebpf.cpu.cfs_throttled_ms",
    "mem_reclaim_latency_ms": "llm.ebpf.mm.reclaim_latency_ms",
}
# Among equally close joins the fan-out keeps those the kernel flagged, so a long span
# full of routine signals still carries its one slow DNS lookup.
_SEVERITY = {"error": 2, "warning": 1}
_NULL_TRACE = "0" * 32
_NONE: frozenset[int] = frozenset()
Ms = Annotated[float, msgspec.Meta(ge=0)]
Conf = Annotated[float, msgspec.Meta(ge=0, le=1)]


class CorrelationConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Windows (ms), confidences, enrichment threshold, gate and fan-out bound."""

    window_ms: Annotated[float, msgspec.Meta(gt=0)] = 2000.0  # the gate, for every tier
    pod_pid_window_ms: Ms = 100.0
    pod_conn_window_ms: Ms = 250.0
    service_node_window_ms: Ms = 500.0
    trace_id_confidence: Conf = 1.0
    pod_pid_confidence: Conf = 0.9
    pod_conn_confidence: Conf = 0.8
    service_node_confidence: Conf = 0.65
    threshold: Conf = 0.7
    max_fanout: Annotated[int, msgspec.Meta(ge=1)] = 3


class Match(msgspec.Struct, frozen=True):
    """One join; ``delta_ms`` = signal time minus the nearest point of the span."""

    signal: ProbeEvent
    tier: str
    confidence: float
    delta_ms: float


class EnrichedSpan(msgspec.Struct):
    """A span, its enriching matches and the ``llm.ebpf.*`` attributes they give.

    ``diagnostics``: for a span without enriching matches, its nearest joins below the
    threshold (≤ max_fanout); never merged into ``attributes``.
    """

    span: Span
    matches: list[Match]
    attributes: dict[str, float]
    diagnostics: list[Match] = msgspec.field(default_factory=list)


class CorrelatorStats(msgspec.Struct):
    """Counters. Each span is exactly one of enriched / low_confidence / unmatched."""

    spans: int = 0
    enriched: int = 0
    low_confidence: int = 0  # joined, but only below the threshold
    unmatched: int = 0  # no join at any tier
    fanout_dropped: int = 0  # enriching joins beyond max_fanout
    unsupported_type: int = 0  # kept matches whose signal has no llm.ebpf attribute
    by_tier: dict[str, int] = msgspec.field(default_factory=dict)  # kept matches


@lru_cache(maxsize=1 << 16)
def canonical_ip(addr: str) -> str | None:
    """IPv4 dotted, IPv6 compressed lowercase in brackets, v4-mapped → v4; None if no IP."""
    try:
        ip = ipaddress.ip_address(addr.strip().strip("[]"))
    except ValueError:
        return None  # a host name (e.g. server.address) can never equal a kernel tuple
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # dual-stack sockets report v4 peers as ::ffff:a.b.c.d
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


@lru_cache(maxsize=1 << 16)
def canonical_conn(src: str, sport: Any, dst: str, dport: Any, proto: str = "tcp") -> str | None:
    """``src:port->dst:port/proto`` (src = local side), both ends canonical; None if invalid."""
    s, d = canonical_ip(str(src)), canonical_ip(str(dst))
    try:
        sp, dp = int(sport), int(dport)
    except (TypeError, ValueError):
        return None
    if s is None or d is None or not (0 <= sp <= 65535 and 0 <= dp <= 65535):
        return None
    return f"{s}:{sp}->{d}:{dp}/{str(proto).strip().lower()}"


@lru_cache(maxsize=1 << 16)
def _tuple_key(ct: ConnTuple) -> str | None:
    # Per tuple: a flow emits many signals, and hashing a frozen Struct is cheap.
    return canonical_conn(ct.src_ip, ct.src_port, ct.dst_ip, ct.dst_port, ct.protocol)


def span_keys(span: Span) -> dict[str, Any]:
    """The span's join key per tier kind (None where the span lacks that identity)."""
    return dict(zip(_KINDS, _span_key_tuple(span), strict=True))


_KINDS = ("trace", "pid", "conn", "svc")  # tier kinds, in the order of the key tuple


def _span_key_tuple(span: Span) -> tuple[Any, Any, Any, Any]:
    """``span_keys`` as a tuple in ``_KINDS`` order: ``correlate`` needs no dict."""
    res, attrs = span.resource, span.attributes
    # Identity lives in the resource; a span attribute is the fallback.
    pod = str(res.get("k8s.pod.name") or attrs.get("k8s.pod.name") or "")
    node = str(res.get("k8s.node.name") or attrs.get("k8s.node.name") or "")
    service = str(res.get("service.name") or attrs.get("service.name") or "")
    pid_v = res.get("process.pid") or attrs.get("process.pid")
    try:
        pid = int(pid_v) if pid_v and not isinstance(pid_v, bool) else 0
    except ValueError:
        pid = 0
    peer, pport = attrs.get("network.peer.address"), attrs.get("network.peer.port")
    if peer is None:
        peer, pport = attrs.get("server.address"), attrs.get("server.port")
    local, lport = attrs.get("network.local.address"), attrs.get("network.local.port")
    conn = None
    if None not in (peer, pport, local, lport):  # HTTP/gRPC rarely set transport: tcp
        conn = canonical_conn(str(local), lport, str(peer), pport,
                              str(attrs.get("network.transport") or "tcp"))
    tid = span.trace_id.lower()
    return (tid if tid and tid != _NULL_TRACE else None,
            (pod, pid) if pod and pid > 0 else None,
            (pod, conn) if pod and conn else None,
            (service, node) if service and node else None)


class SignalIndex:
    """Recent signals by join key, sorted by time per key, evicted against a watermark.

    ``service_of`` names a signal's service for the service/node tier: ProbeEvent has no
    service, so the caller maps it (pod labels, or the ``service.name`` its spans carry);
    a known answer is cached per pod. Without it that tier never matches.
    """

    def __init__(self, config: CorrelationConfig | None = None,
                 service_of: Callable[[ProbeEvent], str | None] | None = None,
                 bucket_ms: float = 1000.0) -> None:
        self.config = config or CorrelationConfig()
        self.service_of = service_of
        self._bucket = max(1, round(bucket_ms * 1e6))  # eviction granularity
        # kind -> key -> (ts, signals, ts of flagged, flagged signals), each by time;
        # flagged = status warning/error. Arrays: compact, and no work for the GC.
        self.maps: dict[str, dict[Any, tuple[Any, list[ProbeEvent], Any, list[ProbeEvent]]]]
        self.maps = {k: {} for k in ("trace", "pid", "conn", "svc")}
        self._svc: dict[str, tuple[str, tuple[str, str]]] = {}  # pod -> (node, key)
        self._gen_count: dict[int, int] = {}  # signals indexed per generation
        self._horizon = -(1 << 62)  # generations below this are evicted
        self.size = self.unindexed = self.late = self.evicted = 0

    def __len__(self) -> int:
        return self.size

    def _svc_key(self, sig: ProbeEvent) -> tuple[str, str] | None:
        c = self._svc.get(sig.pod)
        if c is not None and c[0] == sig.node:
            return c[1]
        svc = self.service_of(sig) if self.service_of and sig.node else None
        if not svc:
            return None  # not cached: the mapping may become known later
        if len(self._svc) > 1 << 17:  # pods churn: forget them now and then
            self._svc.clear()
        self._svc[sig.pod] = (sig.node, (svc, sig.node))
        return (svc, sig.node)

    def add(self, signals: Iterable[ProbeEvent]) -> int:
        """Index signals; returns how many were indexed under at least one key."""
        # Hot path (hundreds of thousands of signals a second). The in-order append is
        # inlined for the pod keys (``_put`` costs a call per key, ~3 per signal), the
        # rare cases (new key, straggler, flagged) stay in helpers, and lookups are
        # bound to locals. Grouping a batch by key first was measured slower: a key
        # sees only ~3 signals a batch, too few to pay for the grouping.
        m_trace, m_pid, m_conn, m_svc = self.maps.values()
        counts, bucket = self._gen_count, self._bucket
        late_before = self._horizon * bucket  # ts // bucket < horizon  <=>  ts < this
        svc_cache, tuple_key, put, new, put_flagged, insert = (
            self._svc, _tuple_key, _put, _new_entry, _put_flagged, _insert)
        late = unindexed = 0
        # Generations change rarely within a batch: count runs of one generation
        # ([run_lo, run_hi) in ns), not one dict op a signal; n is the sum of the runs.
        run_gen, run_lo, run_hi, run_n, n = 0, 0, 0, 0, 0
        for sig in signals:
            ts = sig.ts_unix_nano
            if ts < late_before:
                late += 1  # behind the last eviction: no span may still want it
                continue
            flagged = sig.status != "ok"
            if (tid := sig.trace_id) and (tid := tid.lower()) != _NULL_TRACE:
                put(m_trace, tid, ts, sig, flagged)
            elif pod := sig.pod:
                hit = False
                if (pid := sig.pid) > 0:
                    if (e := m_pid.get(k := (pod, pid))) is None:
                        m_pid[k] = new(ts, sig, flagged)
                    else:
                        if ts >= (tl := e[0])[-1]:  # kernel streams are nearly in order
                            tl.append(ts)
                            e[1].append(sig)
                        else:
                            insert(tl, e[1], ts, sig)
                        if flagged:
                            put_flagged(e, ts, sig)
                    hit = True
                if (ct := sig.conn_tuple) is not None and (ck := tuple_key(ct)):
                    if (e := m_conn.get(k := (pod, ck))) is None:
                        m_conn[k] = new(ts, sig, flagged)
                    else:
                        if ts >= (tl := e[0])[-1]:
                            tl.append(ts)
                            e[1].append(sig)
                        else:
                            insert(tl, e[1], ts, sig)
                        if flagged:
                            put_flagged(e, ts, sig)
                    hit = True
                if (c := svc_cache.get(pod)) is not None and c[0] == sig.node:
                    sk = c[1]
                elif not self.service_of:
                    sk = None  # what _svc_key answers, without the call per signal
                else:
                    sk = self._svc_key(sig)
                if sk is not None:
                    if (e := m_svc.get(sk)) is None:
                        m_svc[sk] = new(ts, sig, flagged)
                    else:
                        if ts >= (tl := e[0])[-1]:
                            tl.append(ts)
                            e[1].append(sig)
                        else:
                            insert(tl, e[1], ts, sig)
                        if flagged:
                            put_flagged(e, ts, sig)
                elif not hit:
                    unindexed += 1
                    continue
            else:
                unindexed += 1
                continue
            if run_lo <= ts < run_hi:
                run_n += 1
            else:
                if run_n:
                    counts[run_gen] = counts.get(run_gen, 0) + run_n
                    n += run_n
                run_gen = ts // bucket
                run_lo, run_hi, run_n = run_gen * bucket, (run_gen + 1) * bucket, 1
        if run_n:
            counts[run_gen] = counts.get(run_gen, 0) + run_n
            n += run_n
        self.size += n
        self.late += late
        self.unindexed += unindexed
        return n

    def evict(self, watermark_ns: int) -> int:
        """Drop signals older than ``watermark_ns - window_ms``, in whole generations.

        ``watermark_ns`` (kernel wall clock) promises that no span still to be correlated
        starts before it. Returns the number of signals evicted.
        """
        limit = (watermark_ns - round(self.config.window_ms * 1e6)) // self._bucket
        if limit <= self._horizon:
            return 0
        self._horizon, bound = limit, limit * self._bucket
        # One sweep over every key per generation: cheaper than recording, at each
        # insert, which keys a generation touched.
        for m in self.maps.values():
            dead = []
            for key, (tl, sl, ftl, fsl) in m.items():
                if tl[0] < bound:
                    i = bisect_left(tl, bound)
                    if i == len(tl):
                        dead.append(key)
                        continue
                    del tl[:i], sl[:i]
                    i = bisect_left(ftl, bound)
                    del ftl[:i], fsl[:i]
            for key in dead:
                del m[key]
        gone = sum(self._gen_count.pop(g) for g in [g for g in self._gen_count if g < limit])
        self.size -= gone
        self.evicted += gone
        return gone


class Correlator:
    """Joins spans to an index's signals; ``clock_offset_ns`` may change at any time."""

    def __init__(self, config: CorrelationConfig | None = None,
                 index: SignalIndex | None = None, clock_offset_ns: int = 0) -> None:
        c = self.config = config or (index.config if index is not None else CorrelationConfig())
        # `is None`, not `or`: an empty index is falsy (it has __len__).
        self.index = index if index is not None else SignalIndex(c)
        self.clock_offset_ns = clock_offset_ns
        self.stats = CorrelatorStats()

        def ns(ms: float) -> int:
            return round(min(ms, c.window_ms) * 1e6)

        tiers = [(TRACE_ID_EXACT, c.trace_id_confidence, ns(c.window_ms), "trace"),
                 (POD_PID, c.pod_pid_confidence, ns(c.pod_pid_window_ms), "pid"),
                 (POD_CONN, c.pod_conn_confidence, ns(c.pod_conn_window_ms), "conn"),
                 (SERVICE_NODE, c.service_node_confidence, ns(c.service_node_window_ms), "svc")]
        # Most confident first (stable: ties keep ladder order): a signal that fits
        # several tiers is claimed by the best, and enriching tiers precede diagnostic.
        # Each with its kind's position in the span's key tuple.
        self._tiers = [(*t, _KINDS.index(t[3])) for t in sorted(tiers, key=lambda t: -t[1])]

    def add(self, signals: Iterable[ProbeEvent]) -> int:
        """Shorthand for ``self.index.add``."""
        return self.index.add(signals)

    def evict(self, watermark_ns: int) -> int:
        """Shorthand for ``self.index.evict``."""
        return self.index.evict(watermark_ns)

    def correlate(self, span: Span) -> EnrichedSpan:
        """Join one span against the indexed signals and update the counters."""
        c, st, maps, keys = self.config, self.stats, self.index.maps, _span_key_tuple(span)
        s = span.start_unix_nano + self.clock_offset_ns
        e = max(span.end_unix_nano + self.clock_offset_ns, s)
        k, thr = c.max_fanout, c.threshold
        cands: list[tuple[Any, ...]] = []  # the best k enriching joins of each tier
        diags: list[tuple[Any, ...]] = []
        claimed: list[tuple[Any, list[ProbeEvent], int, int]] = []  # ranges joined so far
        seen: set[int] = set()
        joins = 0
        for tier, conf, w, kind, pos in self._tiers:
            if conf < thr and cands:
                break  # diagnostics only explain spans that nothing enriches
            key = keys[pos]
            if key is None or (entry := maps[kind].get(key)) is None:
                continue
            tl, sl = entry[0], entry[1]
            flagged: tuple[Any, ...] = entry  # its [2] and [3]: flagged ts and signals
            lo = bisect_left(tl, s - w)
            hi = bisect_right(tl, e + w, lo)
            if lo == hi:
                continue
            if conf < thr:  # diagnostic: only the nearest few are worth returning
                for i, d in _nearest(tl, sl, lo, hi, s, e, k, seen):
                    seen.add(id(sl[i]))
                    diags.append((-conf, abs(d), len(diags), tier, conf, d, sl[i]))
                continue
            if claimed:  # a signal under several keys belongs to its most confident tier
                keep = [j for j in range(lo, hi) if not _claimed(claimed, tl[j], sl[j])]
                if len(keep) < hi - lo:
                    claimed.append((tl, sl, lo, hi))
                    tl, sl, lo, hi = [tl[j] for j in keep], [sl[j] for j in keep], 0, len(keep)
                    flagged = None  # they no longer line up with the filtered range
            if kind != "trace":  # trace-id signals live under no other key
                claimed.append((tl, sl, lo, hi))
            joins += hi - lo
            cands += _best(tl, sl, lo, hi, s, e, k, flagged, (-conf, tier, conf), len(cands))
        cands.sort()
        diags.sort()
        matches = [Match(x[7], x[4], x[5], x[6] / 1e6) for x in cands[:k]]
        st.spans += 1
        st.fanout_dropped += joins - len(matches)
        attrs: dict[str, float] = {}
        if matches:
            st.enriched += 1
            attrs[CONFIDENCE_ATTR] = matches[0].confidence  # sorted: the first is the max
            for m in matches:
                st.by_tier[m.tier] = st.by_tier.get(m.tier, 0) + 1
                name = ATTRIBUTES.get(m.signal.signal)
                if name is None:
                    st.unsupported_type += 1
                elif m.signal.value > attrs.get(name, float("-inf")):
                    attrs[name] = m.signal.value  # for every attribute higher is worse
        elif diags:
            st.low_confidence += 1
        else:
            st.unmatched += 1
        return EnrichedSpan(span, matches, attrs,
                            [Match(x[6], x[3], x[4], x[5] / 1e6) for x in diags[:k]])


def _claimed(claimed: list[tuple[Any, list[ProbeEvent], int, int]], t: int,
             sig: ProbeEvent) -> bool:
    """Whether ``sig`` (at ``t``) lies in one of the ``claimed`` (ts, signals, lo, hi) ranges.

    Bisects each range for ``t`` and compares identities among equal times, rather than
    collecting the ids of whole ranges: a busy pid's range holds dozens of signals, the
    range being filtered only a few.
    """
    for ctl, csl, a, b in claimed:
        i, j = bisect_left(ctl, t, a, b), bisect_right(ctl, t, a, b)
        while i < j:
            if csl[i] is sig:
                return True
            i += 1
    return False


def _put(m: dict[Any, Any], key: Any, ts: int, sig: ProbeEvent, flagged: bool) -> None:
    """Add one signal under ``key`` (``add`` inlines this for the pod keys)."""
    e = m.get(key)
    if e is None:
        m[key] = _new_entry(ts, sig, flagged)
        return
    tl = e[0]
    if ts >= tl[-1]:  # kernel streams are nearly in order: append
        tl.append(ts)
        e[1].append(sig)
    else:
        _insert(tl, e[1], ts, sig)
    if flagged:
        _put_flagged(e, ts, sig)


def _new_entry(ts: int, sig: ProbeEvent, flagged: bool) -> tuple[Any, ...]:
    """A key's first signal: (ts, signals, ts of flagged, flagged signals)."""
    return (array("q", (ts,)), [sig], array("q", (ts,)) if flagged else array("q"),
            [sig] if flagged else [])


def _put_flagged(e: tuple[Any, ...], ts: int, sig: ProbeEvent) -> None:
    """Flagged signals are kept apart too, so the fan-out finds them without a scan."""
    ftl = e[2]
    if not ftl or ts >= ftl[-1]:
        ftl.append(ts)
        e[3].append(sig)
    else:
        _insert(ftl, e[3], ts, sig)


def _insert(tl: Any, sl: list[ProbeEvent], ts: int, sig: ProbeEvent) -> None:
    """Insert in time order; stragglers belong near the end, so look there first."""
    lo = max(0, len(tl) - 8)
    if lo and tl[lo - 1] > ts:
        lo = 0
    i = bisect_right(tl, ts, lo)  # after equal times: arrival order breaks ties
    tl.insert(i, ts)
    sl.insert(i, sig)


def _best(ts: Any, ss: list[ProbeEvent], lo: int, hi: int, s: int, e: int, k: int,
          flagged: tuple[Any, ...] | None, tier: tuple[float, str, float],
          n: int) -> list[tuple[Any, ...]]:
    """The k joins in [lo, hi) closest to [s, e] as candidates of ``tier``.

    A candidate is (−conf, |Δ|, −severity, n + i, tier, conf, Δ, signal): ``tier`` is
    (−conf, name, conf), ``n + i`` numbers them in order (unique, so sorting candidates
    never compares signals). Built here directly: no second tuple per join in the caller.
    Inside the span (all Δ = 0) flagged signals come first, found in ``flagged[2:4]``
    (an index entry: their ts and signals) when given. Never scores the whole range: a
    long span of a busy pid holds hundreds of joins.
    """
    nc, name, conf = tier
    sev = _SEVERITY
    if hi - lo <= k:
        out = []
        for i in range(lo, hi):
            t, x = ts[i], ss[i]
            d = t - s if t < s else (t - e if t > e else 0)
            out.append((nc, abs(d), -sev.get(x.status, 0), n + i - lo, name, conf, d, x))
        return out
    a = bisect_left(ts, s, lo, hi)
    b = bisect_right(ts, e, a, hi)
    if b - a < k:  # all of the inside, then the nearest outside
        return [(nc, abs(d), -sev.get((x := ss[i]).status, 0), n + j, name, conf, d, x)
                for j, (i, d) in enumerate(_nearest(ts, ss, lo, hi, s, e, k, _NONE))]
    if flagged is not None:
        ftl = flagged[2]
        inside = flagged[3][bisect_left(ftl, s):bisect_right(ftl, e)]
    else:
        inside = [x for x in ss[a:b] if x.status != "ok"]
    # (−severity, position) is unique, so plain tuple order never compares signals.
    pick = sorted([(-sev.get(x.status, 0), j, x) for j, x in enumerate(inside)])[:k]
    j = a
    while len(pick) < k:  # fewer than k flagged: the earliest routine ones
        if ss[j].status == "ok":
            pick.append((0, j, ss[j]))
        j += 1
    return [(nc, 0, p[0], n + i, name, conf, 0, p[2]) for i, p in enumerate(pick)]


def _nearest(tl: Any, sl: list[ProbeEvent], lo: int, hi: int, s: int, e: int, k: int,
             seen: set[int] | frozenset[int]) -> list[tuple[int, int]]:
    """Up to k (position, Δns) in [lo, hi) closest to [s, e], skipping ``seen``.

    Walks outward from the span rather than scoring the range: a busy service on a
    node has hundreds of signals in a diagnostic window.
    """
    a = bisect_left(tl, s, lo, hi)
    b = bisect_right(tl, e, a, hi)
    left, right = a - 1, b
    if not seen:  # the enriching case: no identity checks
        out = [(i, 0) for i in range(a, min(b, a + k))]  # Δ = 0
        while len(out) < k and (left >= lo or right < hi):
            if right >= hi or (left >= lo and s - tl[left] <= tl[right] - e):
                out.append((left, tl[left] - s))
                left -= 1
            else:
                out.append((right, tl[right] - e))
                right += 1
        return out
    out = list(islice(((i, 0) for i in range(a, b) if id(sl[i]) not in seen), k))  # Δ = 0
    while len(out) < k and (left >= lo or right < hi):
        if right >= hi or (left >= lo and s - tl[left] <= tl[right] - e):
            i, d, left = left, tl[left] - s, left - 1
        else:
            i, d, right = right, tl[right] - e, right + 1
        if id(sl[i]) not in seen:
            out.append((i, d))
    return out
