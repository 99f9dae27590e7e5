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
connection)): a lookup is a dict get and two bisects. The service/node tier is
gathered at query time from the keys of the service's pods on the node: it only
explains spans that nothing else joins, so it should not cost every signal a fourth
insert. A signal that carries a trace id is indexed under it only: it names its
request, so joining it to other requests by proximity would be wrong. Signals without a
pod (host processes, node-wide steal) join by trace id only.

Cost is measured by scripts/bench_correlator.py (docs/benchmarks/correlator.md). What
keeps it down: no per-signal work for the service tier, claims between tiers tested on
the signal's own fields rather than by searching the other tier's range, no candidate
scoring for a tier that cannot beat the k joins already found, and span attributes
built only when read.
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


class Match(msgspec.Struct, frozen=True, gc=False):
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
    diagnostics: list[Match] = msgspec.field(default_factory=list)

    @property
    def attributes(self) -> dict[str, float]:
        """``llm.ebpf.*`` from the matches: per attribute the highest value (higher is
        worse for every one), and the best match's confidence. Built when asked: the
        engine reads only the matches, and a dict per span costs ~1 µs at 50k spans/s."""
        if not self.matches:
            return {}
        attrs = {CONFIDENCE_ATTR: self.matches[0].confidence}  # sorted: the first is the max
        for m in self.matches:
            name = ATTRIBUTES.get(m.signal.signal)
            if name is not None and m.signal.value > attrs.get(name, float("-inf")):
                attrs[name] = m.signal.value
        return attrs


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

    Keys: trace id; (pod, pid), where pid 0 holds a pod's signals without a pid
    (per-cgroup and per-flow aggregates); (pod, connection). The service/node
    tier has no key of its own: :meth:`service_signals` gathers it at query time from
    the keys of the service's pods, so no signal is indexed a fourth time for a tier
    that only explains spans nothing else joins. ``service_of`` names a pod's service
    (ProbeEvent has none; the caller maps it from pod labels or the ``service.name``
    its spans carry) and is asked again while it has no answer. Without it that tier
    never matches.
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
        self.maps = {k: {} for k in ("trace", "pid", "conn")}
        # For the service/node tier, kept up to date only when a key appears or dies.
        self._pod_keys: dict[str, dict[tuple[str, Any], None]] = {}  # pod -> (kind, key)s
        self.pod_service: dict[str, str] = {}  # pod -> service, once known (claims read it)
        self._service_pods: dict[str, set[str]] = {}
        self._unmapped: set[str] = set()  # pods whose service is not known yet
        self._horizon = -(1 << 62)  # generations below this are evicted
        self.size = self.unindexed = self.late = self.evicted = 0

    def __len__(self) -> int:
        return self.size

    def add(self, signals: Iterable[ProbeEvent]) -> int:
        """Index signals; returns how many were indexed."""
        # Hot path (hundreds of thousands of signals a second): the in-order append is
        # inlined (``_put`` costs a call per key), the rare cases (new key, straggler,
        # flagged) stay in helpers, and lookups are bound to locals. Grouping a batch by
        # key first was measured slower: a key sees only ~3 signals a batch.
        batch = signals if isinstance(signals, list) else list(signals)
        m_trace, m_pid, m_conn = self.maps.values()
        late_before = self._horizon * self._bucket  # ts // bucket < horizon  <=>  ts < this
        tuple_key, put, new_key, put_flagged, insert = (
            _tuple_key, _put, self._new_key, _put_flagged, _insert)
        late = unindexed = 0
        for sig in batch:
            ts = sig.ts_unix_nano
            if ts < late_before:
                late += 1  # behind the last eviction: no span may still want it
                continue
            if (tid := sig.trace_id) and (tid := tid.lower()) != _NULL_TRACE:
                # It names its request: joining it to others by proximity would be wrong.
                put(m_trace, tid, ts, sig, sig.status != "ok")
                continue
            if not (pod := sig.pod):
                unindexed += 1  # host processes, node-wide steal: trace id only
                continue
            flagged = sig.status != "ok"
            pid = sig.pid
            if (ct := sig.conn_tuple) is not None and (ck := tuple_key(ct)):
                if (e := m_conn.get(k := (pod, ck))) is None:
                    new_key("conn", k, ts, sig, flagged)
                else:
                    if ts >= (tl := e[0])[-1]:  # kernel streams are nearly in order
                        tl.append(ts)
                        e[1].append(sig)
                    else:
                        insert(tl, e[1], ts, sig)
                    if flagged:
                        put_flagged(e, ts, sig)
            # Every pod signal is under (pod, pid), pid 0 for those without one: eviction
            # counts each signal there once. The pid tier never looks up pid 0.
            if (e := m_pid.get(k := (pod, pid if pid > 0 else 0))) is None:
                new_key("pid", k, ts, sig, flagged)
            else:
                if ts >= (tl := e[0])[-1]:
                    tl.append(ts)
                    e[1].append(sig)
                else:
                    insert(tl, e[1], ts, sig)
                if flagged:
                    put_flagged(e, ts, sig)
        n = len(batch) - late - unindexed
        self.size += n
        self.late += late
        self.unindexed += unindexed
        return n

    def _new_key(self, kind: str, key: tuple[str, Any], ts: int, sig: ProbeEvent,
                 flagged: bool) -> None:
        self.maps[kind][key] = _new_entry(ts, sig, flagged)
        pod = key[0]
        if (keys := self._pod_keys.get(pod)) is None:
            keys = self._pod_keys[pod] = {}
            self._unmapped.add(pod)
        keys[(kind, key)] = None

    def service_signals(self, service: str, node: str, s: int, e: int, w: int,
                        nearest: int | None = None) -> tuple[list[int], list[ProbeEvent]]:
        """Signals of ``service``'s pods on ``node`` within ``w`` of [s, e], by time.

        With ``nearest``, only each key's ``nearest`` closest to [s, e]: a superset of
        the overall closest, at a cost per key rather than per signal (a diagnostic
        window over a busy service holds thousands).
        """
        if self.service_of is not None:
            for pod in list(self._unmapped):  # pods new since the last query, or unknown
                tl_sl = next(iter(self.maps[k][key] for k, key in self._pod_keys[pod]))
                if svc := self.service_of(tl_sl[1][0]):
                    self._unmapped.discard(pod)
                    self.pod_service[pod] = svc
                    self._service_pods.setdefault(svc, set()).add(pod)
        seen: set[int] = set()
        found: list[tuple[int, int, ProbeEvent]] = []
        for pod in self._service_pods.get(service, ()):
            for kind, key in self._pod_keys[pod]:
                tl, sl = self.maps[kind][key][:2]
                lo, hi = bisect_left(tl, s - w), bisect_right(tl, e + w)
                if nearest is None:
                    picked: Iterable[int] = range(lo, hi)
                else:
                    picked = _nearest_where(tl, sl, lo, hi, s, e, nearest,
                                            lambda x: x.node == node and id(x) not in seen)
                for i in picked:
                    if (x := sl[i]).node == node and id(x) not in seen:
                        seen.add(id(x))
                        found.append((tl[i], len(found), x))
        found.sort()
        return [f[0] for f in found], [f[2] for f in found]

    def evict(self, watermark_ns: int) -> int:
        """Drop signals older than ``watermark_ns - window_ms``, in whole generations.

        ``watermark_ns`` (kernel wall clock) promises that no span still to be correlated
        starts before it. Returns the number of signals evicted.
        """
        limit = (watermark_ns - round(self.config.window_ms * 1e6)) // self._bucket
        if limit <= self._horizon:
            return 0
        self._horizon, bound = limit, limit * self._bucket
        gone = 0
        # One sweep over every key per generation: cheaper than recording, at each
        # insert, which keys a generation touched.
        for kind, m in self.maps.items():
            dead = []
            for key, (tl, sl, ftl, fsl) in m.items():
                if tl[0] < bound:
                    i = bisect_left(tl, bound)
                    if kind != "conn":  # a connection's signals are under (pod, pid) too
                        gone += i
                    if i == len(tl):
                        dead.append(key)
                        continue
                    del tl[:i], sl[:i]
                    i = bisect_left(ftl, bound)
                    del ftl[:i], fsl[:i]
            for key in dead:
                del m[key]
                if kind != "trace":
                    self._drop_key(kind, key)
        self.size -= gone
        self.evicted += gone
        return gone

    def _drop_key(self, kind: str, key: tuple[str, Any]) -> None:
        pod = key[0]
        keys = self._pod_keys[pod]
        del keys[(kind, key)]
        if not keys:  # the pod has gone quiet: forget it
            del self._pod_keys[pod]
            self._unmapped.discard(pod)
            if (svc := self.pod_service.pop(pod, None)) is not None:
                pods = self._service_pods[svc]
                pods.discard(pod)
                if not pods:
                    del self._service_pods[svc]


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
        c, st, index, keys = self.config, self.stats, self.index, _span_key_tuple(span)
        maps = index.maps
        s = span.start_unix_nano + self.clock_offset_ns
        e = max(span.end_unix_nano + self.clock_offset_ns, s)
        k, thr = c.max_fanout, c.threshold
        cands: list[tuple[Any, ...]] = []  # the best k enriching joins of each tier
        diags: list[tuple[Any, ...]] = []
        claims: list[tuple[str, Any, int, int]] = []  # (kind, key, window) of tiers joined
        seen: set[int] = set()
        joins, floor = 0, 2.0
        for tier, conf, w, kind, pos in self._tiers:
            if conf < thr and cands:
                break  # diagnostics only explain spans that nothing enriches
            key = keys[pos]
            if key is None:
                continue
            flagged: tuple[Any, ...] | None
            if kind == "svc":
                tl, sl = index.service_signals(key[0], key[1], s, e, w,
                                               k if conf < thr else None)
                lo, hi, flagged = 0, len(tl), None
            elif (entry := maps[kind].get(key)) is not None:
                tl, sl = entry[0], entry[1]
                flagged = entry  # its [2] and [3]: flagged ts and signals
                lo = bisect_left(tl, s - w)
                hi = bisect_right(tl, e + w, lo)
            else:
                continue
            if lo == hi:
                continue
            if conf < thr:  # diagnostic: only the nearest few are worth returning
                for i, d in _nearest(tl, sl, lo, hi, s, e, k, seen):
                    seen.add(id(sl[i]))
                    diags.append((-conf, abs(d), len(diags), tier, conf, d, sl[i]))
                continue
            if claims:  # a signal under several keys belongs to its most confident tier
                if kind == "conn" and len(claims) == 1 and claims[0][0] == "pid":
                    # The usual case, inlined: both keys carry the span's pod.
                    _, (_, pid), plo, phi = claims[0]
                    keep = [j for j in range(lo, hi)
                            if sl[j].pid != pid or not plo <= tl[j] <= phi]
                else:
                    keep = [j for j in range(lo, hi)
                            if not _claimed(claims, tl[j], sl[j], index.pod_service)]
                if len(keep) < hi - lo:
                    tl, sl, lo, hi = [tl[j] for j in keep], [sl[j] for j in keep], 0, len(keep)
                    flagged = None  # they no longer line up with the filtered range
            if kind != "trace":  # trace-id signals live under no other key
                claims.append((kind, key, s - w, e + w))
            joins += hi - lo
            if len(cands) >= k and conf < floor:
                continue  # k joins of more confident tiers: this one can only be counted
            cands += _best(tl, sl, lo, hi, s, e, k, flagged, (-conf, tier, conf), len(cands))
            floor = conf  # tiers come most confident first
        cands.sort()
        diags.sort()
        matches = [Match(x[7], x[4], x[5], x[6] / 1e6) for x in cands[:k]]
        st.spans += 1
        st.fanout_dropped += joins - len(matches)
        if matches:
            st.enriched += 1
            by_tier = st.by_tier
            for m in matches:
                by_tier[m.tier] = by_tier.get(m.tier, 0) + 1
                if m.signal.signal not in ATTRIBUTES:
                    st.unsupported_type += 1
            return EnrichedSpan(span, matches)
        if diags:
            st.low_confidence += 1
        else:
            st.unmatched += 1
        return EnrichedSpan(span, matches, [Match(x[6], x[3], x[4], x[5] / 1e6) for x in diags[:k]])


def _claimed(claims: list[tuple[str, Any, int, int]], t: int, sig: ProbeEvent,
             pod_service: dict[str, str]) -> bool:
    """Whether a more confident tier already joined ``sig`` (at ``t``).

    A tier joins exactly the signals under its key within its window, so membership is
    a test on the signal's own fields, not a search of that tier's range.
    """
    for kind, key, lo, hi in claims:
        if not lo <= t <= hi:
            continue
        if kind == "pid":
            if sig.pid == key[1] and sig.pod == key[0]:
                return True
        elif kind == "conn":
            if sig.pod == key[0] and (ct := sig.conn_tuple) is not None \
                    and _tuple_key(ct) == key[1]:
                return True
        elif sig.node == key[1] and pod_service.get(sig.pod) == key[0]:  # svc
            return True
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
    # Errors, then warnings, then the earliest routine ones; each group in time order.
    pick = [x for x in inside if x.status == "error"][:k]
    if len(pick) < k:
        pick += [x for x in inside if x.status == "warning"][:k - len(pick)]
        j = a
        while len(pick) < k:  # fewer than k flagged
            if (x := ss[j]).status == "ok":
                pick.append(x)
            j += 1
    return [(nc, 0, -sev.get(x.status, 0), n + i, name, conf, 0, x) for i, x in enumerate(pick)]


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


def _nearest_where(tl: Any, sl: list[ProbeEvent], lo: int, hi: int, s: int, e: int, k: int,
                   wanted: Callable[[ProbeEvent], bool]) -> list[int]:
    """Positions of up to k ``wanted`` signals in [lo, hi) closest to [s, e]."""
    a = bisect_left(tl, s, lo, hi)
    b = bisect_right(tl, e, a, hi)
    out = list(islice((i for i in range(a, b) if wanted(sl[i])), k))  # inside: Δ = 0
    left, right = a - 1, b
    while len(out) < k and (left >= lo or right < hi):
        if right >= hi or (left >= lo and s - tl[left] <= tl[right] - e):
            i, left = left, left - 1
        else:
            i, right = right, right + 1
        if wanted(sl[i]):
            out.append(i)
    return out
