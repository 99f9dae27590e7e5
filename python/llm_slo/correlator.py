"""Join kernel signals (ProbeEvents) to spans by tier; pure: no I/O, time is data.

Tiers (the original ladder, configurable): ``trace_id_exact`` 1.00, ``pod_pid_100ms``
0.90, ``pod_conn_250ms`` 0.80, ``service_node_500ms`` 0.65. A global gate ``window_ms``
bounds every tier. Only joins at or above ``threshold`` enrich a span (at most
``max_fanout`` of each signal: best confidence, then smallest |Δt|, then kernel-flagged
first, then earliest).
Spans that nothing enriches get their nearest below-threshold joins as ``diagnostics``.

Fan-out. The bound is per signal, not per span as in the original: a provider call on
the event loop's thread takes dozens of that thread's run-queue waits, and with one
bound for all they pushed out the retransmits on the call's own connection (the lab's
span joins, egress_loss: recall 0.47 with 3 per span, 1.00 with 3 per signal). The
default is 8, one lookup of a short name under Kubernetes' default resolv.conf (ndots:5,
three search domains: up to eight queries); at 3 such a span kept the flagged
resolver-level wait and two of them (the lab's dns_latency joins: recall 0.85 at 3,
1.00 at 8, replayed on the same recordings). Joins are cheap since Matches are built
only when read: scripts/bench_correlator.py's synthetic load keeps ~15 joins a span at
8 (docs/benchmarks/correlator.md; docs/contracts.md, "Correlation tiers").

Time. Δt runs from the signal's timestamp to the span's *interval* ``[start, end]`` (0
inside, negative before, positive after), not to its start: an LLM span lasts seconds
and a DNS stall in the middle of it belongs to it. Interval aggregates (per-cgroup
histograms, CFS throttling) count as points at their interval end. Span clocks are moved
onto the kernel's wall clock with ``clock_offset_ns`` (span time + offset).

Indexing. Keys (trace id; (pod, pid); (pod, connection)) become small integer ids, and
each batch of signals becomes a columnar chunk sorted by (key id, time), so the spans
due at a tick are joined together: per chunk, two ``searchsorted`` calls over every
span's (key, window) at once, then one sort of all candidates picks each span's best.
The service/node tier is gathered at query time from the (pod, pid) keys of the
service's pods: it only explains spans that nothing else joins, so it should not cost
every signal a fourth key. A signal that carries a trace id is indexed under it only:
it names its request, so joining it to other requests by proximity would be wrong.
Signals without a pod (host processes, node-wide steal) join by trace id only.

The pod+pid tier keeps to the span's own work: a span that names its thread (``thread.id``)
or its connection takes no signal of another thread or connection of the process (a
server runs many requests in one process; their lookups and connects are not each
other's). Signals with no thread (tid 0) or no connection are not excluded.

Cost is measured by scripts/bench_correlator.py (docs/benchmarks/correlator.md). In
Python the cost is per object touched, so the hot paths touch each signal a few times
in list comprehensions and leave the rest to numpy; a span's Matches and attributes
are built only when read (the engine reads only the joined cgroups, a column).
``correlate`` on one span pays the per-chunk overhead alone: callers with many spans use
``correlate_many``.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any

import msgspec
import numpy as np

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
    max_fanout: Annotated[int, msgspec.Meta(ge=1)] = 8  # per span and signal


class Match(msgspec.Struct, frozen=True, gc=False):
    """One join; ``delta_ms`` = signal time minus the nearest point of the span."""

    signal: ProbeEvent
    tier: str
    confidence: float
    delta_ms: float


class _Joins:
    """One batch's kept joins of one kind (enriching or diagnostic), sorted by span.

    Matches are built only when read: the engine wants just the joined cgroups, and a
    Match per join cost 5.2 of 13.5 CPU seconds at a fan-out of 8 in
    scripts/bench_correlator.py. ``signals`` are the index's chunk lists at the time of
    the join (a later merge builds new lists; these stay as they were), so an
    EnrichedSpan kept keeps its batch's signals alive: read what is needed, then drop it."""

    __slots__ = ("cgroup", "chunk", "confidences", "delta", "row", "signals", "tier",
                 "tier_names")

    def __init__(self, signals: list[list[ProbeEvent]], tier_names: list[str],
                 confidences: list[float], cand: _Candidates, delta: np.ndarray) -> None:
        self.signals, self.tier_names, self.confidences = signals, tier_names, confidences
        self.tier, self.delta, self.cgroup = cand.tier, delta, cand.cgroup
        self.chunk, self.row = cand.ref >> 32, cand.ref & 0xFFFFFFFF

    def matches(self, a: int, b: int) -> list[Match]:
        lists, names, confs = self.signals, self.tier_names, self.confidences
        return [Match(lists[c][r], names[t], confs[t], d)
                for t, d, c, r in zip(self.tier[a:b].tolist(), self.delta[a:b].tolist(),
                                      self.chunk[a:b].tolist(), self.row[a:b].tolist(),
                                      strict=True)]


class EnrichedSpan:
    """A span, its enriching matches and the ``llm.ebpf.*`` attributes they give.

    ``diagnostics``: for a span without enriching matches, its nearest joins below the
    threshold (≤ max_fanout per signal); never merged into ``attributes``. Both lists
    are built on first read (see ``_Joins``); ``cgroup_ids`` needs neither.
    """

    __slots__ = ("_a", "_b", "_built", "_enriching", "_joins", "span")

    def __init__(self, span: Span, joins: _Joins | None = None, a: int = 0, b: int = 0,
                 enriching: bool = True) -> None:
        self.span, self._joins, self._a, self._b = span, joins, a, b
        self._enriching = enriching
        self._built: list[Match] | None = None

    def _read(self) -> list[Match]:
        if self._built is None:
            j = self._joins
            self._built = j.matches(self._a, self._b) if j is not None else []
        return self._built

    @property
    def matches(self) -> list[Match]:
        """Enriching joins, most confident first (see ``Correlator.correlate_many``)."""
        return self._read() if self._enriching else []

    @property
    def diagnostics(self) -> list[Match]:
        return [] if self._enriching else self._read()

    @property
    def cgroup_ids(self) -> set[int]:
        """The cgroups of the enriching matches' signals (0, none named, left out)."""
        if not self._enriching or self._joins is None:
            return set()
        got = set(self._joins.cgroup[self._a:self._b].tolist())
        got.discard(0)
        return got

    @property
    def attributes(self) -> dict[str, float]:
        """``llm.ebpf.*`` from the matches: per attribute the highest value (higher is
        worse for every one), and the best match's confidence. Built when asked: the
        engine reads only the cgroups, and a dict per span costs ~1 µs at 50k spans/s."""
        matches = self.matches
        if not matches:
            return {}
        attrs = {CONFIDENCE_ATTR: matches[0].confidence}  # sorted: the first is the max
        for m in matches:
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
    fanout_dropped: int = 0  # enriching joins beyond max_fanout (per signal)
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


# Small: a connection is usually one call, so a span rarely finds its key here, and
# every entry pins its five arguments. At 1 << 16, a client opening a connection per
# call (the lab's rag, 40 a second) would fill it for 27 minutes: about half of the
# agent's growth, ~0.9 MiB a minute, in a 7-minute `none` run (docs/lab.md).
@lru_cache(maxsize=1 << 12)
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


def _span_thread(span: Span) -> int:
    """The thread the span's work ran on (OpenTelemetry's ``thread.id``), 0 if unnamed."""
    v = span.attributes.get("thread.id")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


# Columnar storage. A chunk's signals are sorted per kind by a composite int64: the key's
# id in the high bits, the time since the chunk's first signal in the low ones, so one
# ``searchsorted`` finds a (key, time range) for thousands of spans at once.
_TS_BITS = 34  # a chunk spans at most 2**34 ns (17 s); a wider batch is split
_TS_SPAN = 1 << _TS_BITS
_KEY_LIMIT = 1 << (62 - _TS_BITS)  # key ids stay below this (ids are reused)
_SEAL_NS = 1_000_000_000  # chunks merge until they cover a second...
_SEAL_ROWS = 1 << 19  # ...or hold this many signals
_FREE = np.iinfo(np.int64).max  # "newest signal" of an id that is free
# Among equally close joins the fan-out keeps those the kernel flagged, so a long span
# full of routine signals still carries its one slow DNS lookup.
_SEVERITY_OF = {"ok": 0, "warning": 1, "error": 2}
_FLOW_GENERATION_NS = 30_000_000_000  # of eviction bound: a silent flow's key is kept 30-60 s
_FLOW_GENERATION_MAX = 1 << 15  # ...and ends early past this many (checked per batch)
_SIGNAL_CODES: dict[str, int] = {}  # signal name -> small int, for the fan-out per signal


def _signal_codes(names: list[str]) -> np.ndarray:
    codes = list(map(_SIGNAL_CODES.get, names))
    if None in codes:  # a name not seen before
        codes = [_SIGNAL_CODES.setdefault(n, len(_SIGNAL_CODES)) for n in names]
    return np.array(codes, np.int64)


@contextmanager
def _young_garbage() -> Iterator[None]:
    """Hold off the cyclic GC for one batch. A batch makes a key tuple per signal or
    span that dies with the batch; a collection in between would find them alive and
    promote them to the oldest generation, and enough promotions there trigger a full
    collection, which walks every indexed signal (measured with --seconds 4: 16 full
    collections inside the timed calls without this, none with it). Nothing here makes
    cycles; the GC runs again after."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Keys:
    """Join keys of one kind as small integer ids; an id is freed when its key's newest
    signal falls behind the eviction bound and is reused for a new key."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.keys: list[Any] = []  # id -> key (None while free)
        self.newest = np.full(256, _FREE, np.int64)  # id -> newest signal's ts
        self.free: list[int] = []

    def assign(self, keys: list[Any]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Ids of ``keys`` and the (position, id) of each key seen for the first time."""
        got = list(map(self.ids.get, keys))
        created: list[tuple[int, int]] = []
        if None in got:
            for i, g in enumerate(got):
                if g is None:
                    key = keys[i]
                    if (g := self.ids.get(key)) is None:  # repeated within the batch
                        g = self._new(key)
                        created.append((i, g))
                    got[i] = g
        return np.array(got, np.int64), created

    def _new(self, key: Any) -> int:
        if self.free:
            i = self.free.pop()
            self.keys[i] = key
        else:
            i = len(self.keys)
            if i >= _KEY_LIMIT:
                raise OverflowError("correlator: too many live join keys")
            self.keys.append(key)
            if i >= len(self.newest):
                self.newest = np.concatenate([self.newest, np.full(i, _FREE, np.int64)])
        self.newest[i] = -1
        self.ids[key] = i
        return i

    def saw(self, comp: np.ndarray, ts: np.ndarray) -> None:
        """Record each key's newest signal from a chunk's sorted composite keys."""
        if not len(comp):
            return
        ids = comp >> _TS_BITS
        last = np.flatnonzero(np.append(ids[1:] != ids[:-1], True))  # each key's newest
        k = ids[last]
        self.newest[k] = np.maximum(self.newest[k], ts[last])

    def expire(self, bound: int) -> list[tuple[int, Any]]:
        """Free the ids whose newest signal is older than ``bound``; returns (id, key)s."""
        dead = np.flatnonzero(self.newest[:len(self.keys)] < bound).tolist()
        gone = []
        for i in dead:
            key = self.keys[i]
            del self.ids[key]
            self.keys[i] = None
            gone.append((i, key))
        self.newest[dead] = _FREE
        self.free.extend(dead)
        return gone


class _Chunk:
    """Signals indexed together, columnar. Row r is ``signals[r]``; its uid is uid0 + r.

    ``key[kind]``: the row's key id under that kind, -1 when it has none.
    ``by_key[kind]``: (composite keys sorted, their rows).
    """

    __slots__ = ("by_key", "cgroup", "gone", "key", "node", "sev", "sig", "signals", "t_max",
                 "t_min", "tid", "ts", "uid0")

    def __init__(self, signals: list[ProbeEvent], ts: np.ndarray, sev: np.ndarray,
                 sig: np.ndarray, node: np.ndarray, tid: np.ndarray, cgroup: np.ndarray,
                 key: dict[str, np.ndarray], uid0: int, gone: int = 0,
                 by_key: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.signals, self.ts, self.sev, self.node, self.key = signals, ts, sev, node, key
        self.sig, self.tid, self.cgroup = sig, tid, cgroup
        self.uid0, self.gone = uid0, gone  # gone: rows already counted as evicted
        self.t_min, self.t_max = int(ts.min()), int(ts.max())
        if by_key is None:
            by_key = {}
            rel = ts - self.t_min
            for kind, ids in key.items():
                rows = np.flatnonzero(ids >= 0)
                comp = (ids[rows] << _TS_BITS) | rel[rows]
                # Unstable is fastest; equal key and time must keep arrival order, so
                # a chunk with such ties is sorted again, stably.
                o = np.argsort(comp)
                srt = comp[o]
                if len(srt) > 1 and (srt[1:] == srt[:-1]).any():
                    o = np.argsort(comp, kind="stable")
                    srt = comp[o]
                by_key[kind] = (srt, rows[o])
        self.by_key = by_key

    def __len__(self) -> int:
        return len(self.signals)

    def merge(self, later: _Chunk) -> _Chunk:
        """This chunk and the one indexed right after it, as one."""
        base = min(self.t_min, later.t_min)
        by_key = {}
        for kind, (comp, rows) in self.by_key.items():
            comp2, rows2 = later.by_key[kind]
            # Two sorted runs, moved onto one time base: timsort merges them in one pass.
            comp = np.concatenate([comp + (self.t_min - base), comp2 + (later.t_min - base)])
            o = np.argsort(comp, kind="stable")
            by_key[kind] = (comp[o], np.concatenate([rows, rows2 + len(self)])[o])
        return _Chunk(self.signals + later.signals, np.concatenate([self.ts, later.ts]),
                      np.concatenate([self.sev, later.sev]),
                      np.concatenate([self.sig, later.sig]),
                      np.concatenate([self.node, later.node]),
                      np.concatenate([self.tid, later.tid]),
                      np.concatenate([self.cgroup, later.cgroup]),
                      {k: np.concatenate([v, later.key[k]]) for k, v in self.key.items()},
                      self.uid0, self.gone + later.gone, by_key)


class _Work(msgspec.Struct, frozen=True):
    """What queries name of their span's work, indexed like the query arrays: thread id
    (0: none named), connection key id (-1: none named, -2: one no signal has); and,
    indexed by span, the spans' intervals."""

    thread: np.ndarray
    conn: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def admit(self, ch: _Chunk, r: np.ndarray, q: np.ndarray, span: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """The (row, query) pairs of chunk ``ch`` whose signal is the query's work
        (``span``: each query's span)."""
        q_tid, s_tid, q_conn, s_conn = self.thread[q], ch.tid[r], self.conn[q], ch.key["conn"][r]
        mine = (s_tid == q_tid) & (q_tid != 0)
        keep = (mine | (q_tid == 0) | (s_tid == 0)) & (
            (q_conn == -1) | (s_conn < 0) | (s_conn == q_conn))
        own = np.flatnonzero(keep & mine)
        if len(own):  # per signal, only the nearest of its thread's spans
            ts, sp = ch.ts[r[own]], span[q[own]]
            dist = np.maximum(np.maximum(self.start[sp] - ts, ts - self.end[sp]), 0)
            sig, inv = np.unique(r[own], return_inverse=True)
            nearest = np.full(len(sig), np.iinfo(np.int64).max, np.int64)
            np.minimum.at(nearest, inv, dist)
            keep[own[dist > nearest[inv]]] = False
        return r[keep], q[keep]


class _Candidates(msgspec.Struct, frozen=True):
    """Joins found for a batch of spans, one row each (arrays of equal length)."""

    span: np.ndarray  # the span's position in the batch
    tier: np.ndarray  # position in the correlator's ladder
    ts: np.ndarray
    sev: np.ndarray
    sig: np.ndarray  # the signal's name, as a code (``_signal_codes``)
    uid: np.ndarray  # the signal's identity: one signal can be found by several tiers
    ref: np.ndarray  # chunk number << 32 | row, to fetch the ProbeEvent
    cgroup: np.ndarray  # the signal's cgroup id (0: none)

    @classmethod
    def none(cls) -> _Candidates:
        e = np.empty(0, np.int64)
        return cls(e, e, e, e, e, e, e, np.empty(0, np.uint64))

    @classmethod
    def concat(cls, parts: list[_Candidates]) -> _Candidates:
        return cls(*(np.concatenate([getattr(p, f) for p in parts])
                     for f in cls.__struct_fields__))

    def take(self, rows: np.ndarray) -> _Candidates:
        """These rows only."""
        return _Candidates(*(getattr(self, f)[rows] for f in self.__struct_fields__))


class SignalIndex:
    """Recent signals by join key and time, in columnar chunks, evicted against a watermark.

    Keys: trace id; (pod, pid), where pid 0 holds a pod's signals without a pid
    (per-cgroup and per-flow aggregates); (pod, connection). Every pod signal is under
    (pod, pid) exactly once. The service/node tier has no key of its own: it is gathered
    at query time from the (pod, pid) keys of the service's pods, so no signal is indexed
    a fourth time for a tier that only explains spans nothing else joins.
    ``service_of`` names a pod's service (ProbeEvent has none; the caller maps it from
    pod labels or the ``service.name`` its spans carry) and is asked again while it has
    no answer. Without it that tier never matches.

    A batch becomes a chunk; young chunks merge pairwise until a chunk covers a second,
    so a lookup visits a dozen chunks whatever the batch size. Eviction drops a chunk
    once all of it is behind the bound and hides older rows of a live chunk by starting
    every lookup at the bound.
    """

    def __init__(self, config: CorrelationConfig | None = None,
                 service_of: Callable[[ProbeEvent], str | None] | None = None,
                 bucket_ms: float = 1000.0) -> None:
        self.config = config or CorrelationConfig()
        self.service_of = service_of
        self._bucket = max(1, round(bucket_ms * 1e6))  # eviction granularity
        self.keys = {k: _Keys() for k in ("trace", "pid", "conn")}
        self._nodes: dict[str, int] = {}
        self.chunks: list[_Chunk] = []
        self._uid = 0
        self._horizon = -(1 << 62)  # generations below this are evicted
        self.bound = 0  # ns: no lookup reaches before this (the horizon's start)
        # For the service/node tier: pod -> its (pod, pid) ids, service -> pods.
        self._pod_ids: dict[str, set[int]] = {}
        self._pod_sample: dict[str, ProbeEvent] = {}  # a signal of the pod, for service_of
        self.pod_service: dict[str, str] = {}
        self._service_pods: dict[str, set[str]] = {}
        self._unmapped: set[str] = set()  # pods whose service is not known yet
        self.size = self.unindexed = self.late = self.evicted = 0
        self._flow_keys = _FlowKeys()

    def __len__(self) -> int:
        return self.size

    def add(self, signals: Iterable[ProbeEvent]) -> int:
        """Index signals; returns how many were indexed."""
        with _young_garbage():
            return self._add(signals if isinstance(signals, list) else list(signals))

    def _add(self, batch: list[ProbeEvent]) -> int:
        n = len(batch)
        if not n:
            return 0
        # Column by column: one pass per field costs less than one Python step per
        # signal and field (measured by scripts/bench_correlator.py).
        ts = np.fromiter([g.ts_unix_nano for g in batch], np.int64, n)
        tid = np.fromiter([g.tid for g in batch], np.int64, n)
        cgroup = np.fromiter([g.cgroup_id for g in batch], np.uint64, n)
        pods = [g.pod for g in batch]
        tids = [g.trace_id for g in batch]
        traced = [i for i, t in enumerate(tids) if t and t.lower() != _NULL_TRACE]
        late = ts < self.bound  # behind the last eviction: no span may still want it
        if traced or late.any() or not all(pods):
            kind_of = np.fromiter(map(bool, pods), np.int8, n)  # 1: pod, 0: unindexed
            kind_of[traced] = 2  # it names its request: never joined by proximity
            kind_of[late] = -1
            self.late += int(late.sum())
            self.unindexed += int((kind_of == 0).sum())
            keep = np.flatnonzero(kind_of > 0)
            if not len(keep):
                return 0
            ix = keep.tolist()
            batch, pods, tids = [batch[i] for i in ix], [pods[i] for i in ix], \
                [tids[i] for i in ix]
            ts, tid, cgroup, kind_of, n = ts[keep], tid[keep], cgroup[keep], kind_of[keep], \
                len(ix)
            pod_rows = np.flatnonzero(kind_of == 1)
            traced_rows = np.flatnonzero(kind_of == 2)
        else:
            pod_rows, traced_rows = np.arange(n), np.empty(0, np.int64)
        key = {k: np.full(n, -1, np.int64) for k in self.keys}
        if len(traced_rows):
            key["trace"][traced_rows] = self.keys["trace"].assign(
                [tids[i].lower() for i in traced_rows.tolist()])[0]  # type: ignore[union-attr]
        if len(pod_rows):
            pb = batch if len(pod_rows) == n else [batch[i] for i in pod_rows.tolist()]
            pp = pods if len(pod_rows) == n else [pods[i] for i in pod_rows.tolist()]
            ids, created = self.keys["pid"].assign(list(zip(pp, [g.pid for g in pb],
                                                            strict=True)))
            key["pid"][pod_rows] = ids
            for pos, pid_id in created:
                self._new_pod_key(pp[pos], pid_id, pb[pos])
            cts = [g.conn_tuple for g in pb]
            conn_rows = [i for i, ct in enumerate(cts) if ct is not None]
            canon = self._canonical_conns([cts[i] for i in conn_rows])  # type: ignore[arg-type]
            conn_keys = [(pp[i], c) for i, c in zip(conn_rows, canon, strict=True)]
            if "" in canon:  # a tuple no span can name: skip it
                conn_rows = [r for r, c in zip(conn_rows, canon, strict=True) if c]
                conn_keys = [k for k in conn_keys if k[1]]
            if conn_rows:
                key["conn"][pod_rows[conn_rows]] = self.keys["conn"].assign(conn_keys)[0]
        sev = np.fromiter(map(_SEVERITY_OF.__getitem__, [g.status for g in batch]), np.int8, n)
        sig = _signal_codes([g.signal for g in batch])
        nodes = self._nodes
        node = np.fromiter([nodes.get(x) or nodes.setdefault(x, len(nodes) + 1)
                            for x in [g.node for g in batch]], np.int32, n)
        if int(ts.max()) - int(ts.min()) >= _TS_SPAN:  # not from one poll: split by time
            order = np.argsort(ts, kind="stable")
            slot = (ts[order] - int(ts.min())) >> (_TS_BITS - 1)  # slices of 2**33 ns
            for part in np.split(order, np.flatnonzero(np.diff(slot)) + 1):
                part = np.sort(part)
                self._append([batch[i] for i in part.tolist()], ts[part], sev[part],
                              sig[part], node[part], tid[part], cgroup[part],
                              {k: v[part] for k, v in key.items()})
        else:
            self._append(batch, ts, sev, sig, node, tid, cgroup, key)
        self.size += n
        return n

    def _append(self, signals: list[ProbeEvent], ts: np.ndarray, sev: np.ndarray,
                sig: np.ndarray, node: np.ndarray, tid: np.ndarray, cgroup: np.ndarray,
                key: dict[str, np.ndarray]) -> None:
        ch = _Chunk(signals, ts, sev, sig, node, tid, cgroup, key, self._uid)
        self._uid += len(signals)
        for kind, (comp, rows) in ch.by_key.items():
            self.keys[kind].saw(comp, ts[rows])
        chunks = self.chunks
        chunks.append(ch)
        # Merge the two youngest while the older is not yet sealed and not larger (a
        # binary counter): each signal is merged a few times, lookups see few chunks.
        while len(chunks) > 1:
            a, b = chunks[-2], chunks[-1]
            if (a.t_max - a.t_min >= _SEAL_NS or len(a) >= _SEAL_ROWS
                    or len(a) > len(b) or max(a.t_max, b.t_max)
                    - min(a.t_min, b.t_min) >= _TS_SPAN):
                break
            chunks[-2:] = [a.merge(b)]

    def _canonical_conns(self, tuples: list[ConnTuple]) -> list[str]:
        """Each flow's canonical key ("" for one no span can name)."""
        return self._flow_keys.lookup(
            [(c.src_ip, c.src_port, c.dst_ip, c.dst_port, c.protocol) for c in tuples])

    def _new_pod_key(self, pod: str, pid_id: int, sample: ProbeEvent) -> None:
        if (ids := self._pod_ids.get(pod)) is None:
            ids = self._pod_ids[pod] = set()
            self._unmapped.add(pod)
        ids.add(pid_id)
        self._pod_sample.setdefault(pod, sample)

    def evict(self, watermark_ns: int) -> int:
        """Drop signals older than ``watermark_ns - window_ms``, in whole generations.

        ``watermark_ns`` (kernel wall clock) promises that no span still to be correlated
        starts before it. Returns the number of signals evicted.
        """
        limit = (watermark_ns - round(self.config.window_ms * 1e6)) // self._bucket
        if limit <= self._horizon:
            return 0
        self._horizon, self.bound = limit, max(limit * self._bucket, 0)
        gone, live = 0, []
        for ch in self.chunks:
            below = int(np.count_nonzero(ch.ts < self.bound)) if ch.t_min < self.bound else 0
            gone += below - ch.gone
            ch.gone = below
            if below < len(ch):
                live.append(ch)
        self.chunks = live
        for kind, keys in self.keys.items():
            dead = keys.expire(self.bound)
            if kind == "pid":
                for pid_id, (pod, _) in dead:
                    self._drop_pod_key(pod, pid_id)
        self.size -= gone
        self.evicted += gone
        self._flow_keys.age(self.bound)
        return gone

    def _drop_pod_key(self, pod: str, pid_id: int) -> None:
        ids = self._pod_ids[pod]
        ids.discard(pid_id)
        if ids:
            return
        del self._pod_ids[pod]  # the pod has gone quiet: forget it
        self._pod_sample.pop(pod, None)
        self._unmapped.discard(pod)
        if (svc := self.pod_service.pop(pod, None)) is not None:
            pods = self._service_pods[svc]
            pods.discard(pod)
            if not pods:
                del self._service_pods[svc]

    def service_ids(self, service: str) -> list[int]:
        """The (pod, pid) key ids of ``service``'s pods (any node)."""
        if self.service_of is not None and self._unmapped:
            for pod in list(self._unmapped):  # pods new since the last query, or unknown
                if svc := self.service_of(self._pod_sample[pod]):
                    self._unmapped.discard(pod)
                    self.pod_service[pod] = svc
                    self._service_pods.setdefault(svc, set()).add(pod)
        return [i for pod in self._service_pods.get(service, ()) for i in self._pod_ids[pod]]

    def node_id(self, node: str) -> int | None:
        """The id under which signals of ``node`` are stored, if any arrived."""
        return self._nodes.get(node)

    def find(self, kind: str, tier: int, span: np.ndarray, key: np.ndarray, lo: np.ndarray,
             hi: np.ndarray, node: np.ndarray | None = None,
             work: _Work | None = None) -> _Candidates:
        """Every signal under ``key[i]`` (of ``kind``) with time in [lo[i], hi[i]], for
        each query i, as candidates of ``span[i]``; with ``node``, only from that node;
        with ``work``, only signals that belong to no other thread or connection than
        the query's, and a signal of the query's own thread only if no query of that
        thread is nearer to it (a thread does one thing at a time: the lookup running
        when the signal came is its work, not the one that ended just before)."""
        lo = np.maximum(lo, self.bound)  # evicted rows may linger in a live chunk
        parts: list[tuple[np.ndarray, ...]] = []
        for ci, ch in enumerate(self.chunks):
            comp, rows = ch.by_key[kind]
            if not len(comp):
                continue
            sel = np.flatnonzero((lo <= ch.t_max) & (hi >= ch.t_min) & (lo <= hi))
            if not len(sel):
                continue
            k = key[sel] << _TS_BITS
            a = np.searchsorted(comp, k | (np.maximum(lo[sel], ch.t_min) - ch.t_min), "left")
            b = np.searchsorted(comp, k | (np.minimum(hi[sel], ch.t_max) - ch.t_min), "right")
            counts = b - a
            total = int(counts.sum())
            if not total:
                continue
            pos = np.arange(total) + np.repeat(a - (np.cumsum(counts) - counts), counts)
            r = rows[pos]
            q = np.repeat(sel, counts)
            if node is not None:
                same = ch.node[r] == node[q]
                r, q = r[same], q[same]
            if work is not None:
                r, q = work.admit(ch, r, q, span)
            parts.append((span[q], ch.ts[r], ch.sev[r], ch.sig[r], ch.uid0 + r,
                          (ci << 32) | r, ch.cgroup[r]))
        if not parts:
            return _Candidates.none()
        cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
        return _Candidates(cols[0], np.full(len(cols[0]), tier, np.int64), *cols[1:])


class _FlowKeys:
    """Canonical flow keys by their plain field tuple, for the flows seen lately: a flow
    emits many signals, and a tuple of its fields hashes in a third of the time a frozen
    Struct does (an lru_cache on the Struct cost ~0.8 us a signal).

    Two generations: a key found only in the older one is copied into the current one,
    and the older is dropped when the index's eviction bound has moved a generation on
    (or the current one is full after a batch; the clock then starts again). A busy flow
    is recomputed at most once a generation; a silent one is forgotten within two.
    Flows are many and short (a connect, a handshake, a DNS query: each its own port);
    one cache that kept any flow until it held 65,536 would have grown for hours toward
    ~20 MB on the lab's calm node, at ~2 new flows a second."""

    __slots__ = ("_bound", "_ends_at", "_old", "_young")

    def __init__(self) -> None:
        self._young: dict[tuple[Any, ...], str] = {}
        self._old: dict[tuple[Any, ...], str] = {}
        self._bound: int | None = None  # the index's eviction bound, last we heard
        self._ends_at = 0  # the bound at which the current generation ends

    def __len__(self) -> int:
        """Keys held (a key copied from the older generation counts twice)."""
        return len(self._young) + len(self._old)

    def lookup(self, raw: list[tuple[Any, ...]]) -> list[str]:
        young = self._young
        got = list(map(young.get, raw))
        if None in got:
            old = self._old
            for i, g in enumerate(got):
                if g is None:
                    key = raw[i]
                    g = old.get(key)
                    if g is None:
                        g = canonical_conn(*key) or ""
                    got[i] = young[key] = g
            if len(young) > _FLOW_GENERATION_MAX:
                self._next_generation()
        return got  # type: ignore[return-value]

    def age(self, bound_ns: int) -> None:
        """The index evicted up to ``bound_ns``: end the generation if it is due."""
        if self._bound is None:
            self._ends_at = bound_ns + _FLOW_GENERATION_NS
        elif bound_ns >= self._ends_at + _FLOW_GENERATION_NS:  # a jump: both are stale
            self._old, self._young = {}, {}
            self._ends_at = bound_ns + _FLOW_GENERATION_NS
        elif bound_ns >= self._ends_at:
            self._next_generation()
        self._bound = bound_ns

    def _next_generation(self) -> None:
        self._old, self._young = self._young, {}
        if self._bound is not None:
            self._ends_at = self._bound + _FLOW_GENERATION_NS


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
        # several tiers is claimed by the first. Each with its kind's position in the
        # span's key tuple.
        self._tiers = [(*t, _KINDS.index(t[3])) for t in sorted(tiers, key=lambda t: -t[1])]
        # _Candidates order by confidence: equal confidences rank alike.
        confs = sorted({t[1] for t in tiers}, reverse=True)
        self._rank = np.array([confs.index(t[1]) for t in self._tiers], np.int64)

    def add(self, signals: Iterable[ProbeEvent]) -> int:
        """Shorthand for ``self.index.add``."""
        return self.index.add(signals)

    def evict(self, watermark_ns: int) -> int:
        """Shorthand for ``self.index.evict``."""
        return self.index.evict(watermark_ns)

    def correlate(self, span: Span) -> EnrichedSpan:
        """Join one span (see :meth:`correlate_many`, which is cheaper per span)."""
        return self.correlate_many([span])[0]

    def correlate_many(self, spans: list[Span]) -> list[EnrichedSpan]:
        """Join spans against the indexed signals, all at once; updates the counters.

        Per span: every signal that fits a tier (its key, within the tier's window of the
        span's interval) belongs to the most confident tier it fits. Enriching joins are
        ordered by confidence, then |Δt|, then severity (flagged first), then time, and
        the first ``max_fanout`` of each signal kept. Spans without one get their
        diagnostic joins so ordered instead.
        """
        with _young_garbage():
            return self._correlate_many(spans)

    def _correlate_many(self, spans: list[Span]) -> list[EnrichedSpan]:
        n = len(spans)
        if n > 1 << 24:  # the sort keys hold a span's position in 24 bits
            return [x for i in range(0, n, 1 << 24)
                    for x in self._correlate_many(spans[i:i + (1 << 24)])]
        if not n:
            return []
        c, off = self.config, self.clock_offset_ns
        keys = [_span_key_tuple(sp) for sp in spans]
        s = np.fromiter([sp.start_unix_nano for sp in spans], np.int64, n) + off
        e = np.maximum(np.fromiter([sp.end_unix_nano for sp in spans], np.int64, n) + off, s)
        enriching = [t for t in self._tiers if t[1] >= c.threshold]
        found = self._find(enriching, spans, keys, np.arange(n), s, e)
        joins = np.bincount(found.span, minlength=n)
        best = self._best(found, s, e)
        diags: _Candidates | None = None
        if len(self._tiers) > len(enriching) and (lonely := np.flatnonzero(joins == 0)).size:
            # Diagnostics only explain spans that nothing enriches.
            diags = self._best(self._find(self._tiers[len(enriching):], spans, keys, lonely,
                                          s, e), s, e)
        return self._assemble(spans, joins, best, diags, s, e)

    def _find(self, tiers: list[tuple[Any, ...]], spans: list[Span],
              keys: list[tuple[Any, ...]], which: np.ndarray, s: np.ndarray, e: np.ndarray
              ) -> _Candidates:
        """_Candidates of the spans ``which`` at ``tiers``, each signal at its best tier."""
        index = self.index
        found: list[_Candidates] = []
        for tier, (_, _, w, kind, pos) in enumerate(self._tiers):
            if self._tiers[tier] not in tiers:
                continue
            if kind == "svc":
                q_span, q_key, q_node = self._service_queries(keys, which)
                if not len(q_span):
                    continue
                found.append(index.find("pid", tier, q_span, q_key, s[q_span] - w,
                                        e[q_span] + w, q_node))
                continue
            get = index.keys[kind].ids.get  # get(None) is None: a span without that key
            ids = list(map(get, [keys[i][pos] for i in which.tolist()]))
            has = [i for i, x in enumerate(ids) if x is not None]
            if not has:
                continue
            q_span = which[has]
            q_key = np.array([ids[i] for i in has], np.int64)
            found.append(index.find(kind, tier, q_span, q_key, s[q_span] - w, e[q_span] + w,
                                    work=self._work(spans, keys, q_span, s, e)
                                    if kind == "pid" else None))
        found = [f for f in found if len(f.span)]
        if not found:
            return _Candidates.none()
        out = _Candidates.concat(found)
        if len(found) > 1:  # one signal, several tiers: it belongs to the most confident
            ident = (out.span << 38) | ((out.uid - int(out.uid.min())) << 2) | out.tier
            order = np.argsort(ident)
            ident = ident[order] >> 2
            first = order[np.append(True, ident[1:] != ident[:-1])]
            out = out.take(first)
        return out

    def _work(self, spans: list[Span], keys: list[tuple[Any, ...]], which: np.ndarray,
              s: np.ndarray, e: np.ndarray) -> _Work | None:
        """The thread and connection each span names (see ``SignalIndex.find``); None
        when no span names either, so the pod+pid tier skips the filter."""
        rows = which.tolist()
        threads = [_span_thread(spans[i]) for i in rows]
        conns = [keys[i][2] for i in rows]
        if not any(threads) and not any(conns):
            return None
        get = self.index.keys["conn"].ids.get
        return _Work(np.array(threads, np.int64),
                     np.array([-1 if c is None else get(c, -2) for c in conns], np.int64),
                     s, e)

    def _service_queries(self, keys: list[tuple[Any, ...]], which: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query per (span, (pod, pid) key of the span's service's pods)."""
        index = self.index
        q_span: list[int] = []
        q_key: list[int] = []
        q_node: list[int] = []
        for i in which.tolist():
            if (svc := keys[i][3]) is None or (node := index.node_id(svc[1])) is None:
                continue
            ids = index.service_ids(svc[0])
            q_span += [i] * len(ids)
            q_key += ids
            q_node += [node] * len(ids)
        return (np.array(q_span, np.int64), np.array(q_key, np.int64),
                np.array(q_node, np.int32))

    def _best(self, cand: _Candidates, s: np.ndarray, e: np.ndarray) -> _Candidates:
        """Each span's first ``max_fanout`` candidates of each signal, in match order.

        One int64 sort key per candidate, most significant first: span, confidence
        rank, then inside the span (Δt 0) severity and time since the span's start, or
        outside it |Δt| and severity. Fields saturate (17 s; 8.6 s inside), where ties
        fall back to the order found (time within a key). A batch of more than
        2**24 spans is sorted in slices by the caller.
        """
        if not len(cand.span):
            return cand
        q, ts = cand.span, cand.ts
        s_q, e_q = s[q], e[q]
        inside = (ts >= s_q) & (ts <= e_q)
        worse = 2 - cand.sev.astype(np.int64)
        low = np.where(inside, (worse << 33) | np.minimum(ts - s_q, (1 << 33) - 1),
                       (1 << 35) | (np.minimum(np.where(ts < s_q, s_q - ts, ts - e_q),
                                               (1 << 33) - 1) << 2) | worse)
        order = np.argsort((q << 38) | (self._rank[cand.tier] << 36) | low, kind="stable")
        # Each row's place among its span's joins of the same signal, in that order.
        group = (q[order] << 24) | cand.sig[order]
        by_group = np.argsort(group, kind="stable")
        grouped = group[by_group]
        nth = np.empty(len(order), np.int64)
        nth[by_group] = np.arange(len(grouped)) - np.searchsorted(grouped, grouped, "left")
        return cand.take(order[nth < self.config.max_fanout])

    def _assemble(self, spans: list[Span], joins: np.ndarray, best: _Candidates,
                  diags: _Candidates | None, s: np.ndarray, e: np.ndarray
                  ) -> list[EnrichedSpan]:
        st, chunks = self.stats, self.index.chunks
        tier_names, confidences = [t[0] for t in self._tiers], [t[1] for t in self._tiers]
        lists = [ch.signals for ch in chunks]

        def spread(cand: _Candidates) -> tuple[_Joins, dict[int, tuple[int, int]]]:
            """The joins, and per span its rows [a, b) (candidates come sorted by span)."""
            q, ts = cand.span, cand.ts
            delta = np.where(ts < s[q], ts - s[q], np.where(ts > e[q], ts - e[q], 0)) / 1e6
            j = _Joins(lists, tier_names, confidences, cand, delta)
            if not len(q):
                return j, {}
            cut = (np.flatnonzero(np.diff(q)) + 1).tolist()
            starts, ends = [0, *cut], [*cut, len(q)]
            return j, dict(zip(q[starts].tolist(), zip(starts, ends, strict=True),
                               strict=True))

        kept, got = spread(best)
        below, low = spread(diags) if diags is not None else (None, {})
        st.spans += len(spans)
        st.fanout_dropped += int(joins.sum()) - len(best.span)
        for tier, n_kept in zip(tier_names, np.bincount(best.tier, minlength=len(tier_names))
                                .tolist(), strict=True):
            if n_kept:
                st.by_tier[tier] = st.by_tier.get(tier, 0) + n_kept
        if len(best.sig):
            named = [code for name, code in _SIGNAL_CODES.items() if name in ATTRIBUTES]
            unsupported = np.ones(len(_SIGNAL_CODES), bool)
            unsupported[named] = False
            st.unsupported_type += int(unsupported[best.sig].sum())
        out = []
        for i, span in enumerate(spans):
            if (rows := got.get(i)) is not None:
                out.append(EnrichedSpan(span, kept, *rows))
            elif (rows := low.get(i)) is not None:
                out.append(EnrichedSpan(span, below, *rows, enriching=False))
            else:
                out.append(EnrichedSpan(span))
        st.enriched += len(got)
        st.low_confidence += sum(1 for i in low if i not in got)
        st.unmatched += len(spans) - len(got) - sum(1 for i in low if i not in got)
        return out
