"""Tests for llm_slo.correlator: tiers, windows, gate, threshold, fan-out, merge, eviction."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_slo.correlator import (
    CONFIDENCE_ATTR,
    POD_CONN,
    POD_PID,
    SERVICE_NODE,
    TRACE_ID_EXACT,
    CorrelationConfig,
    Correlator,
    SignalIndex,
    _FlowKeys,
    canonical_conn,
    canonical_ip,
    span_keys,
)
from llm_slo.events import ConnTuple
from llm_slo.probe_event import ProbeEvent
from llm_slo.spans import Span

MS = 1_000_000
T0 = 1_700_000_000_000_000_000  # span start, wall clock ns
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "00f067aa0ba902b7a3ce929d0e0e4736"
SERVICES = {"api-0": "api", "api-1": "api", "db-0": "db"}
CONN = ConnTuple("10.0.0.5", "10.0.0.9", 41000, 443, "tcp")


def sig(t_ms: float = 0.0, *, signal: str = "dns_latency_ms", value: float = 1.0,
        pod: str = "api-0", pid: int = 0, conn: ConnTuple | None = None,
        trace_id: str | None = None, node: str = "n1", status: str = "ok",
        ts: int | None = None, tid: int | None = None, cgroup: int = 0) -> ProbeEvent:
    """A ProbeEvent at ``t_ms`` after T0 (exact integer ns via ``ts`` when given); its
    thread is the process's main thread unless ``tid`` says otherwise."""
    return ProbeEvent(ts_unix_nano=ts if ts is not None else T0 + round(t_ms * MS),
                      signal=signal, node=node, namespace="ns", pod=pod, container="c",
                      pid=pid, tid=pid if tid is None else tid, value=value, unit="ms",
                      status=status, conn_tuple=conn, trace_id=trace_id,  # type: ignore[arg-type]
                      cgroup_id=cgroup)


def span(dur_ms: float = 50.0, *, trace_id: str = TRACE, pod: str = "api-0", pid: int = 42,
         node: str = "n1", service: str = "api", attrs: dict[str, Any] | None = None,
         start: int = T0) -> Span:
    res: dict[str, Any] = {"service.name": service, "k8s.node.name": node}
    if pod:
        res["k8s.pod.name"] = pod
    if pid:
        res["process.pid"] = pid
    return Span(trace_id=trace_id, span_id="00f067aa0ba902b7", name="chat", start_unix_nano=start,
                end_unix_nano=start + round(dur_ms * MS), attributes=attrs or {}, resource=res)


CONN_ATTRS = {"network.local.address": "10.0.0.5", "network.local.port": 41000,
              "network.peer.address": "10.0.0.9", "network.peer.port": 443,
              "network.transport": "tcp"}


def run(signals: list[ProbeEvent], sp: Span, config: CorrelationConfig | None = None,
        offset: int = 0) -> Any:
    idx = SignalIndex(config, service_of=lambda s: SERVICES.get(s.pod))
    idx.add(signals)
    cor = Correlator(config, idx, clock_offset_ns=offset)
    return cor.correlate(sp), cor


def tiers(es: Any) -> list[str]:
    return [m.tier for m in es.matches]


# --- tiers at their window boundaries (span lasts 50 ms: Δt counts from its end) ----------

@pytest.mark.parametrize(("tier", "window", "kw"), [
    (POD_PID, 100, {"pid": 42}),
    (POD_CONN, 250, {"conn": CONN}),
])
def test_pod_tiers_boundary(tier, window, kw):
    sp = span(attrs=CONN_ATTRS)
    end = T0 + 50 * MS
    hit, _ = run([sig(ts=end + window * MS, **kw)], sp)
    assert tiers(hit) == [tier]
    assert hit.matches[0].delta_ms == window
    before, _ = run([sig(ts=T0 - window * MS, **kw)], sp)
    assert tiers(before) == [tier] and before.matches[0].delta_ms == -window
    miss, _ = run([sig(ts=end + window * MS + 1000, **kw)], sp)  # 100.001 ms
    assert miss.matches == []


def test_service_node_boundary_is_diagnostic_only():
    end = T0 + 50 * MS
    at, cor = run([sig(ts=end + 500 * MS, pod="api-1")], span())
    assert at.matches == [] and at.attributes == {}
    assert [m.tier for m in at.diagnostics] == [SERVICE_NODE]
    assert at.diagnostics[0].confidence == 0.65
    assert cor.stats.low_confidence == 1 and cor.stats.enriched == 0
    out, cor = run([sig(ts=end + 500 * MS + 1000, pod="api-1")], span())
    assert out.diagnostics == [] and cor.stats.unmatched == 1
    other_node, _ = run([sig(1, pod="api-1", node="n2")], span())
    assert other_node.diagnostics == []


def test_trace_tier_and_gate():
    end = T0 + 50 * MS
    at, _ = run([sig(ts=end + 2000 * MS, trace_id=TRACE.upper(), pod="")], span())
    assert tiers(at) == [TRACE_ID_EXACT] and at.attributes[CONFIDENCE_ATTR] == 1.0
    beyond, _ = run([sig(ts=end + 2000 * MS + 1, trace_id=TRACE)], span())
    assert beyond.matches == []
    # The gate caps every tier: a wide pod/pid window still stops at window_ms.
    cfg = CorrelationConfig(window_ms=80, pod_pid_window_ms=100)
    capped, _ = run([sig(ts=end + 90 * MS, pid=42)], span(), cfg)
    assert capped.matches == []
    inside, _ = run([sig(ts=end + 80 * MS, pid=42)], span(), cfg)
    assert tiers(inside) == [POD_PID]


def test_inside_span_is_zero_delta():
    es, _ = run([sig(25, pid=42)], span())
    assert es.matches[0].delta_ms == 0.0


def test_misses_without_identity():
    # Different pod, other pid, pid 0, host signal without trace id: no join.
    signals = [sig(1, pid=42, pod="db-0"), sig(1, pid=43), sig(1, pid=0, pod="api-0"),
               sig(1, pid=42, pod="")]
    es, cor = run(signals, span(service="nosvc"))
    assert es.matches == [] and es.diagnostics == [] and cor.stats.unmatched == 1
    # A span without pod joins by trace id only.
    es, _ = run([sig(1, pid=42), sig(1, trace_id=TRACE, pod="")], span(pod=""))
    assert tiers(es) == [TRACE_ID_EXACT]


def test_signal_with_other_trace_id_does_not_join_by_proximity():
    es, _ = run([sig(1, pid=42, trace_id=OTHER_TRACE)], span())
    assert es.matches == [] and es.diagnostics == []


def test_higher_tier_wins_for_the_same_signal():
    # Same pod, pid and connection, 50 ms after the end: pod_pid (0.9) beats pod_conn (0.8).
    s = sig(100, pid=42, conn=CONN)
    es, _ = run([s], span(attrs=CONN_ATTRS))
    assert tiers(es) == [POD_PID] and len(es.matches) == 1
    # At 200 ms after the end only the connection window still holds.
    es, _ = run([sig(250, pid=42, conn=CONN)], span(attrs=CONN_ATTRS))
    assert tiers(es) == [POD_CONN]
    # Reordered confidences reorder the claim.
    cfg = CorrelationConfig(pod_conn_confidence=0.95)
    es, _ = run([s], span(attrs=CONN_ATTRS), cfg)
    assert tiers(es) == [POD_CONN] and es.matches[0].confidence == 0.95


def test_threshold_and_confidence_attribute():
    cfg = CorrelationConfig(pod_pid_confidence=0.69)
    es, cor = run([sig(1, pid=42)], span(), cfg)
    assert es.matches == [] and [m.tier for m in es.diagnostics] == [POD_PID]
    assert cor.stats.low_confidence == 1
    es, _ = run([sig(1, pid=42), sig(200, conn=CONN)], span(attrs=CONN_ATTRS))
    assert es.attributes[CONFIDENCE_ATTR] == 0.9
    # 0.65 only enriches when configured at or above the threshold.
    cfg = CorrelationConfig(threshold=0.65)
    es, _ = run([sig(1, pod="api-1")], span(), cfg)
    assert tiers(es) == [SERVICE_NODE] and es.attributes[CONFIDENCE_ATTR] == 0.65


def test_fanout_bound_and_order():
    signals = [sig(60 + i * 10, pid=42, value=i) for i in range(5)]  # 10..50 ms after end
    signals += [sig(1, trace_id=TRACE, pod="", value=0.5), sig(300, conn=CONN, value=99)]
    es, cor = run(signals, span(attrs=CONN_ATTRS), CorrelationConfig(max_fanout=3))
    assert tiers(es) == [TRACE_ID_EXACT, POD_PID, POD_PID]
    assert [m.delta_ms for m in es.matches] == [0.0, 10.0, 20.0]
    assert cor.stats.fanout_dropped == 4 and cor.stats.by_tier == {TRACE_ID_EXACT: 1, POD_PID: 2}
    es, cor = run(signals, span(attrs=CONN_ATTRS), CorrelationConfig(max_fanout=10))
    assert len(es.matches) == 7 and cor.stats.fanout_dropped == 0


def test_fanout_is_bounded_per_signal():
    # A provider call on the event loop's thread: more of that thread's run-queue waits
    # than the bound, nearer and more confident than the retransmits on the call's own
    # connection. Each signal has its own bound, so the retransmits still enrich it.
    waits = [sig(i, pid=42, tid=42, signal="runqueue_delay_ms") for i in range(1, 6)]
    retrans = [sig(20 + i, conn=CONN, signal="tcp_retransmits_total") for i in range(3)]
    es, cor = run(waits + retrans, span(attrs={**CONN_ATTRS, "thread.id": 42}),
                  CorrelationConfig(max_fanout=2))
    assert tiers(es) == [POD_PID, POD_PID, POD_CONN, POD_CONN]
    assert [m.signal for m in es.matches] == waits[:2] + retrans[:2]
    assert es.attributes["llm.ebpf.tcp.retransmits"] == 1
    assert cor.stats.fanout_dropped == 4


def test_default_fanout_keeps_a_whole_search_path_lookup():
    """ndots:5 and three search domains: one short name is up to eight queries (A and AAAA
    per candidate name), all inside the request's span; the default keeps every one."""
    queries = [sig(5 + 2 * k, pid=42, signal="dns_latency_ms") for k in range(8)]
    es, cor = run(queries, span(), CorrelationConfig())
    assert [m.signal for m in es.matches] == queries
    assert cor.stats.fanout_dropped == 0


def test_fanout_prefers_flagged_signals_among_ties():
    signals = [sig(i, pid=42, value=1) for i in range(1, 6)] + [sig(40, pid=42, value=300,
                                                                   status="error")]
    es, _ = run(signals, span())
    assert es.matches[0].signal.value == 300


def test_max_wins_merge():
    signals = [sig(1, pid=42, value=20), sig(2, pid=42, value=250),
               sig(3, pid=42, signal="tcp_retransmits_total", value=3)]
    es, cor = run(signals, span())
    assert es.attributes == {CONFIDENCE_ATTR: 0.9, "llm.ebpf.dns.latency_ms": 250,
                             "llm.ebpf.tcp.retransmits": 3}
    es, cor = run([sig(1, pid=42, signal="disk_io_latency_ms")], span())
    assert cor.stats.unsupported_type == 1 and es.attributes == {CONFIDENCE_ATTR: 0.9}


def test_every_signal_name_maps_to_the_original_attribute():
    names = {"dns_latency_ms": "llm.ebpf.dns.latency_ms",
             "tcp_retransmits_total": "llm.ebpf.tcp.retransmits",
             "runqueue_delay_ms": "llm.ebpf.sched.runqueue_delay_ms",
             "cpu_steal_pct": "llm.ebpf.cpu.steal_pct",
             "connect_latency_ms": "llm.ebpf.net.connect_latency_ms",
             "tls_handshake_ms": "llm.ebpf.tls.handshake_ms",
             "cfs_throttled_ms": "llm.ebpf.cpu.cfs_throttled_ms",
             "mem_reclaim_latency_ms": "llm.ebpf.mm.reclaim_latency_ms"}
    for name, attr in names.items():
        es, _ = run([sig(1, pid=42, signal=name, value=7)], span())
        assert es.attributes[attr] == 7


# --- canonical connection tuples -----------------------------------------------------------

def test_canonical_ip_forms():
    assert canonical_ip("::ffff:10.0.0.5") == "10.0.0.5"
    assert canonical_ip("2001:DB8:0:0::1") == "[2001:db8::1]"
    assert canonical_ip("[2001:db8::1]") == "[2001:db8::1]"
    assert canonical_ip("api.openai.com") is None
    assert canonical_conn("10.0.0.5", "41000", "::FFFF:10.0.0.9", 443, "TCP") == \
        "10.0.0.5:41000->10.0.0.9:443/tcp"
    assert canonical_conn("10.0.0.5", 70000, "10.0.0.9", 443) is None


def test_conn_tier_across_representations():
    v4mapped = ConnTuple("::ffff:10.0.0.5", "::FFFF:10.0.0.9", 41000, 443, "TCP")
    attrs = dict(CONN_ATTRS, **{"network.transport": "TCP"})
    es, _ = run([sig(1, conn=v4mapped)], span(attrs=attrs))
    assert tiers(es) == [POD_CONN]
    v6 = ConnTuple("fd00::5", "FD00:0:0::9", 41000, 443, "tcp")
    a6 = {"network.local.address": "FD00::5", "network.local.port": 41000,
          "server.address": "fd00::9", "server.port": 443}  # server.* as peer, tcp default
    es, _ = run([sig(1, conn=v6)], span(attrs=a6))
    assert tiers(es) == [POD_CONN]
    udp = ConnTuple("10.0.0.5", "10.0.0.9", 41000, 443, "udp")
    es, _ = run([sig(1, conn=udp)], span(attrs=CONN_ATTRS))
    assert es.matches == []


def test_flow_keys_stay_right_when_their_cache_starts_over(monkeypatch):
    """Canonical flow keys are cached per field tuple, and a generation of the cache
    ends early when full: flows seen before and after, and one no span can name, join
    (or not) as without a cache."""
    monkeypatch.setattr("llm_slo.correlator._FLOW_GENERATION_MAX", 2)
    flows = [ConnTuple("10.0.0.5", "10.0.0.9", 41000 + i, 443, "tcp") for i in range(5)]
    bad = ConnTuple("10.0.0.5", "not-an-ip", 1, 443, "tcp")
    idx = SignalIndex()
    idx.add([sig(1, conn=f) for f in flows[:3]] + [sig(1, conn=bad)])  # 4 > 2: full
    idx.add([sig(2, conn=f) for f in flows[2:]])  # 2 from the older, 3 and 4 new: full
    assert len(idx._flow_keys) == 3  # full again: 2, 3 and 4 are the older generation now
    idx.add([sig(3, conn=f) for f in flows[:2]] + [sig(3, conn=bad)])
    cor = Correlator(index=idx)
    joined = []
    for f in flows:
        es = cor.correlate(span(attrs=dict(CONN_ATTRS, **{"network.local.port": f.src_port}),
                                pid=0))
        assert set(tiers(es)) == {POD_CONN}
        joined.append(len(es.matches))
    assert joined == [2, 2, 2, 1, 1]


def test_flow_keys_of_silent_flows_are_forgotten_as_the_index_evicts():
    """A flow per DNS query: the cache holds the flows of the last one or two
    generations (30 s of eviction each), however many went before, and a flow that
    keeps signalling keeps its key."""
    idx = SignalIndex()
    busy = ConnTuple("10.0.0.5", "10.0.0.9", 40000, 443, "tcp")
    sizes = []
    for sec in range(600):  # ten minutes, 20 new flows a second
        t = sec * 1000
        idx.add([sig(t, conn=ConnTuple("10.0.0.5", "10.0.0.53", 1024 + (sec * 20 + k) % 60000,
                                       53, "udp")) for k in range(20)] + [sig(t, conn=busy)])
        idx.evict(T0 + t * MS)
        sizes.append(len(idx._flow_keys))
    assert max(sizes) <= 2 * 30 * 20 + 2 * 20 + 2  # two generations and a tick's worth
    assert min(sizes[120:]) >= 29 * 20  # the last generation's flows stay (29-30 s of them)
    assert (busy.src_ip, busy.src_port, busy.dst_ip, busy.dst_port, busy.protocol) \
        in idx._flow_keys._young


def test_a_generation_that_ended_full_gets_its_own_time(monkeypatch):
    """A burst that fills a generation starts the clock again: the flows it retired
    stay a whole generation, not just until the old clock runs out."""
    monkeypatch.setattr("llm_slo.correlator._FLOW_GENERATION_MAX", 2)
    keys = _FlowKeys()
    keys.age(T0)
    keys.age(T0 + 29_000 * MS)
    keys.lookup([("10.0.0.5", 41000 + i, "10.0.0.9", 443, "tcp") for i in range(3)])
    keys.age(T0 + 31_000 * MS)  # past the first clock, not the restarted one
    assert len(keys) == 3
    keys.age(T0 + 59_000 * MS)
    assert len(keys) == 0
    keys.lookup([("10.0.0.5", 40999, "10.0.0.9", 443, "tcp")])
    keys.age(T0 + 600_000 * MS)  # a stalled agent's jump: nothing left is recent
    assert len(keys) == 0


def test_span_keys():
    k = span_keys(span(attrs=CONN_ATTRS))
    assert k == {"trace": TRACE, "pid": ("api-0", 42),
                 "conn": ("api-0", "10.0.0.5:41000->10.0.0.9:443/tcp"), "svc": ("api", "n1")}
    k = span_keys(span(pod="", pid=0, node="", trace_id="0" * 32))
    assert k == {"trace": None, "pid": None, "conn": None, "svc": None}


# --- clocks and eviction -------------------------------------------------------------------

def test_clock_offset_aligns_span_to_kernel_time():
    off = 5_000 * MS  # span clock runs 5 s behind the kernel's wall clock
    s = sig(5_000 + 1, pid=42)
    es, _ = run([s], span(), offset=off)
    assert tiers(es) == [POD_PID] and es.matches[0].delta_ms == 0
    es, _ = run([s], span())
    assert es.matches == []


def test_eviction_by_watermark():
    idx = SignalIndex(bucket_ms=100)
    old, fresh = sig(0, pid=42), sig(3_000, pid=42)
    assert idx.add([old, fresh]) == 2 and len(idx) == 2
    # Watermark - gate = T0 exactly: T0 is not older than the gate, it stays.
    assert idx.evict(T0 + 2_000 * MS) == 0 and len(idx) == 2
    assert idx.evict(T0 + 2_100 * MS) == 1 and len(idx) == 1
    cor = Correlator(index=idx)
    assert cor.correlate(span()).matches == []
    assert tiers(cor.correlate(span(start=T0 + 3_000 * MS))) == [POD_PID]
    assert idx.add([sig(10, pid=42)]) == 0 and idx.late == 1  # behind the watermark
    idx.evict(T0 + 10_000 * MS)
    assert len(idx) == 0 and all(not k.ids for k in idx.keys.values())  # ids freed


def test_out_of_order_signals_are_sorted():
    idx = SignalIndex()
    idx.add([sig(30, pid=42), sig(10, pid=42), sig(20, pid=42)])
    es = Correlator(index=idx).correlate(span())
    assert [m.signal.ts_unix_nano for m in es.matches] == [T0 + t * MS for t in (10, 20, 30)]
    assert idx.unindexed == 0
    idx.add([sig(1, pod="", pid=5), sig(1, pod="x", pid=0)])
    assert idx.unindexed == 1  # no pod: trace id only; a pod's aggregate goes to (pod, 0)
    assert ("x", 0) in idx.keys["pid"].ids


def test_config_validation_and_defaults():
    c = CorrelationConfig()
    assert (c.window_ms, c.pod_pid_window_ms, c.pod_conn_window_ms,
            c.service_node_window_ms) == (2000, 100, 250, 500)
    assert (c.trace_id_confidence, c.pod_pid_confidence, c.pod_conn_confidence,
            c.service_node_confidence, c.threshold, c.max_fanout) == (1.0, 0.9, 0.8, 0.65, 0.7, 8)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"threshold": 1.5}, CorrelationConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"max_fanout": 0}, CorrelationConfig)


def test_matches_read_later_are_those_of_the_join():
    """Matches are built when first read: chunk merges and eviction after the join must
    not change what the span joined."""
    idx = SignalIndex()
    cor = Correlator(index=idx)
    first = sig(10, pid=42, cgroup=7)
    idx.add([first])
    es = cor.correlate(span())
    for k in range(40):  # chunks merge into new signal lists
        idx.add([sig(20 + k, pid=42)])
    idx.evict(T0 + 60_000 * MS)
    assert len(idx) == 0
    assert [m.signal for m in es.matches] == [first] and es.cgroup_ids == {7}


# --- properties ----------------------------------------------------------------------------

PODS = ["api-0", "api-1", "db-0", ""]
TRACES = [TRACE, OTHER_TRACE, None]
OTHER_CONN = ConnTuple("10.0.0.5", "10.0.0.9", 41001, 443, "tcp")
CONNS = [CONN, ConnTuple("::ffff:10.0.0.5", "10.0.0.9", 41000, 443, "TCP"), OTHER_CONN, None]


@st.composite
def signal_st(draw: Any, pods: list[str] = PODS) -> ProbeEvent:
    return sig(ts=T0 + draw(st.integers(-3_000 * MS, 3_000 * MS)),
               pod=draw(st.sampled_from(pods)), pid=draw(st.sampled_from([0, 42, 43])),
               tid=draw(st.sampled_from([None, 0, 7])),
               conn=draw(st.sampled_from(CONNS)), trace_id=draw(st.sampled_from(TRACES)),
               node=draw(st.sampled_from(["n1", "n2"])), value=draw(st.floats(0, 1000)),
               status=draw(st.sampled_from(["ok", "warning", "error"])),
               signal=draw(st.sampled_from(["dns_latency_ms", "runqueue_delay_ms"])),
               cgroup=draw(st.sampled_from([0, 11, 12])))


configs = st.builds(CorrelationConfig,
                    window_ms=st.sampled_from([50.0, 300.0, 2000.0]),
                    threshold=st.sampled_from([0.6, 0.7, 0.85]),
                    max_fanout=st.integers(1, 9),
                    # Other confidences reorder the ladder (any tier may claim first).
                    pod_pid_confidence=st.sampled_from([0.9, 0.75, 0.95]),
                    pod_conn_confidence=st.sampled_from([0.8, 0.95, 0.6]),
                    service_node_confidence=st.sampled_from([0.65, 0.99, 0.8]))
spans_st = st.builds(
    lambda d, o, conn, thread: span(d, attrs={**(CONN_ATTRS if conn else {}),
                                             **({"thread.id": thread} if thread else {})},
                                    start=T0 + o * MS),
    st.integers(0, 1_500), st.integers(-500, 500), st.booleans(), st.sampled_from([0, 42, 7]))


def _tier_of(c: CorrelationConfig) -> dict[str, tuple[float, float]]:
    return {TRACE_ID_EXACT: (c.trace_id_confidence, c.window_ms),
            POD_PID: (c.pod_pid_confidence, c.pod_pid_window_ms),
            POD_CONN: (c.pod_conn_confidence, c.pod_conn_window_ms),
            SERVICE_NODE: (c.service_node_confidence, c.service_node_window_ms)}


@settings(max_examples=200, deadline=None)
@given(st.lists(signal_st(), max_size=30), spans_st, configs)
def test_match_invariants(signals, sp, cfg):
    es, cor = run(signals, sp, cfg)
    tier_of = _tier_of(cfg)
    for name in {m.signal.signal for m in es.matches + es.diagnostics}:
        assert sum(m.signal.signal == name for m in es.matches) <= cfg.max_fanout
        assert sum(m.signal.signal == name for m in es.diagnostics) <= cfg.max_fanout
    for m in es.matches + es.diagnostics:
        conf, window = tier_of[m.tier]
        assert m.confidence == conf
        assert abs(m.delta_ms) <= min(window, cfg.window_ms) + 1e-9
    assert all(m.confidence >= cfg.threshold for m in es.matches)
    assert all(m.confidence < cfg.threshold for m in es.diagnostics)
    keys = [(-m.confidence, abs(m.delta_ms)) for m in es.matches]
    assert keys == sorted(keys)
    assert es.cgroup_ids == {m.signal.cgroup_id for m in es.matches} - {0}
    if es.matches:
        assert es.attributes[CONFIDENCE_ATTR] == max(m.confidence for m in es.matches)
    else:
        assert es.attributes == {}
    s = cor.stats
    assert s.enriched + s.low_confidence + s.unmatched == s.spans == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(signal_st(), max_size=20), st.lists(signal_st(["web-0", "web-1"]), max_size=20),
       spans_st, configs)
def test_unrelated_signals_never_remove_a_match(signals, noise, sp, cfg):
    # Noise: other pods, of no known service, never carrying this span's trace id.
    noise = [msgspec.structs.replace(n, trace_id=None if n.trace_id == TRACE else n.trace_id)
             for n in noise]
    base, _ = run(signals, sp, cfg)
    more, _ = run(signals + noise, sp, cfg)
    assert [id(m.signal) for m in more.matches] == [id(m.signal) for m in base.matches]
    assert more.attributes == base.attributes


def _oracle(signals: list[ProbeEvent], sp: Span, c: CorrelationConfig
            ) -> tuple[list, list, int]:
    """Brute force over every signal: its best tier, then the (confidence, |Δt|) order;
    the enriching and diagnostic joins kept, and how many enriching joins there were."""
    s, e = sp.start_unix_nano, sp.end_unix_nano
    keys = span_keys(sp)
    enrich, diag = [], []
    for g in signals:
        t = g.ts_unix_nano
        d = max(s - t, t - e, 0) / MS
        ok: list[float] = []
        if g.trace_id:
            if g.trace_id.lower() == keys["trace"] and d <= c.window_ms:
                ok.append(c.trace_id_confidence)
        elif g.pod:
            w = {k: min(v, c.window_ms) for k, v in (("pid", c.pod_pid_window_ms),
                 ("conn", c.pod_conn_window_ms), ("svc", c.service_node_window_ms))}
            ck = g.conn_tuple and canonical_conn(g.conn_tuple.src_ip, g.conn_tuple.src_port,
                                                 g.conn_tuple.dst_ip, g.conn_tuple.dst_port,
                                                 g.conn_tuple.protocol)
            thread = sp.attributes.get("thread.id", 0)
            other_work = (thread and g.tid and g.tid != thread) or (
                keys["conn"] and ck and ck != keys["conn"][1])
            if (g.pid > 0 and (g.pod, g.pid) == keys["pid"] and d <= w["pid"]
                    and not other_work):
                ok.append(c.pod_pid_confidence)
            if ck and (g.pod, ck) == keys["conn"] and d <= w["conn"]:
                ok.append(c.pod_conn_confidence)
            if (SERVICES.get(g.pod), g.node) == keys["svc"] and d <= w["svc"]:
                ok.append(c.service_node_confidence)
        if ok:
            (enrich if max(ok) >= c.threshold else diag).append((-max(ok), round(d, 6), g))
    # Enriching: inside the span, flagged signals win ties; the bound is per signal.
    return (_first_per_signal(sorted((_key(conf, d, g), g.signal) for conf, d, g in enrich),
                              c.max_fanout),
            _first_per_signal(sorted(((conf, d), g.signal) for conf, d, g in diag),
                              c.max_fanout),
            len(enrich))


def _first_per_signal(ranked: list[tuple[Any, str]], k: int) -> list[Any]:
    """The first ``k`` keys of each signal name, in rank order."""
    seen: dict[str, int] = {}
    kept = []
    for key, name in ranked:
        if (n := seen.get(name, 0)) < k:
            kept.append(key)
        seen[name] = n + 1
    return kept


def _key(neg_conf: float, abs_d: float, g: ProbeEvent) -> tuple[float, float, int]:
    return (neg_conf, abs_d, -SEVERITY[g.status] if abs_d == 0 else 0)


SEVERITY = {"ok": 0, "warning": 1, "error": 2}


@settings(max_examples=400, deadline=None)
@given(st.lists(signal_st(), max_size=40), spans_st, configs)
def test_agrees_with_brute_force(signals, sp, cfg):
    es, cor = run(signals, sp, cfg)
    enrich, diag, joins = _oracle(signals, sp, cfg)
    got = [_key(-m.confidence, round(abs(m.delta_ms), 6), m.signal) for m in es.matches]
    assert sorted(got) == enrich
    # Diagnostics are searched only for spans without an enriching join.
    want = [] if joins else diag
    assert [(-m.confidence, round(abs(m.delta_ms), 6)) for m in es.diagnostics] == want
    assert cor.stats.fanout_dropped == joins - len(enrich)


def test_correlator_keeps_an_index_that_is_still_empty():
    idx = SignalIndex()
    cor = Correlator(index=idx)
    idx.add([sig(1, pid=42)])
    assert cor.index is idx and tiers(cor.correlate(span())) == [POD_PID]


def test_overlapping_keys_with_flagged_ties():
    # Two signals fit pod_pid and pod_conn (pod_pid claims them); five more, all inside
    # the span, fit only the connection: in the conn tier's filtered range the flagged
    # one still wins the tie.
    both = [sig(i, pid=42, conn=CONN) for i in (1, 2)]
    conn_only = [sig(10 + i, pid=43, conn=CONN, status="warning" if i == 4 else "ok")
                 for i in range(5)]
    es, cor = run(both + conn_only, span(attrs=CONN_ATTRS), CorrelationConfig(max_fanout=3))
    assert tiers(es) == [POD_PID, POD_PID, POD_CONN]
    assert es.matches[2].signal.status == "warning"
    assert cor.stats.fanout_dropped == 4  # 7 joins, each signal counted once


def test_service_learned_later_is_used():
    # The service/node tier asks service_of at query time, until it answers: signals
    # indexed before the pod's service was known join too.
    known: dict[str, str] = {}
    idx = SignalIndex(service_of=lambda s: known.get(s.pod))
    idx.add([sig(1, pod="api-1")])
    cor = Correlator(index=idx)
    assert cor.correlate(span()).diagnostics == []
    known["api-1"] = "api"
    idx.add([sig(2, pod="api-1")])
    es = cor.correlate(span())
    assert [m.signal.ts_unix_nano for m in es.diagnostics] == [T0 + 1 * MS, T0 + 2 * MS]
    assert [m.tier for m in es.diagnostics] == [SERVICE_NODE] * 2


def test_service_tier_forgets_pods_that_went_quiet():
    idx = SignalIndex(bucket_ms=100, service_of=lambda s: SERVICES.get(s.pod))
    idx.add([sig(0, pod="api-1", pid=7), sig(0, pod="api-1", conn=CONN)])
    cor = Correlator(index=idx)
    assert len(cor.correlate(span(pid=1)).diagnostics) == 2
    idx.evict(T0 + 2_200 * MS)
    assert len(idx) == 0 and idx._pod_ids == {} and idx._service_pods == {}
    idx.add([sig(2_300, pod="api-1", pid=7)])
    assert [m.tier for m in cor.correlate(span(pid=1, start=T0 + 2_300 * MS)).diagnostics] \
        == [SERVICE_NODE]


def test_flagged_signals_are_evicted_too():
    idx = SignalIndex(bucket_ms=100)
    idx.add([sig(0, pid=42, status="error"), sig(3_000, pid=42, status="error")])
    assert idx.evict(T0 + 2_100 * MS) == 1 and len(idx) == 1
    es = Correlator(index=idx).correlate(span(3_100, start=T0 - 100 * MS))
    assert [m.signal.ts_unix_nano for m in es.matches] == [T0 + 3_000 * MS]


def test_generation_counts_across_interleaved_batches():
    """Per-generation counts stay exact when a batch hops between generations."""
    idx = SignalIndex(bucket_ms=100)
    batch = [sig(t, pid=42, status="warning" if t % 2 else "ok")
             for t in (0, 150, 10, 250, 160, 20, 5)]  # generations 0,1,0,2,1,0,0
    batch += [sig(1, pod="", pid=0)]  # unindexed, not counted
    assert idx.add(batch) == 7 and idx.unindexed == 1 and len(idx) == 7
    # Gate 2000 ms: watermark T0 + 2100 ms evicts generation 0 (4 signals) only.
    assert idx.evict(T0 + 2_100 * MS) == 4 and len(idx) == 3
    assert idx.evict(T0 + 2_300 * MS) == 3 and len(idx) == 0 and idx.evicted == 7


@settings(max_examples=200, deadline=None)
@given(st.lists(signal_st(), max_size=40), st.lists(signal_st(), max_size=40),
       st.integers(-1_000, 5_000))
def test_counters_agree_with_brute_force_across_eviction(first, second, wm_ms):
    """late / unindexed / evicted / len match a per-signal count, across generations."""
    idx = SignalIndex(bucket_ms=100, service_of=lambda s: SERVICES.get(s.pod))

    def indexable(g: ProbeEvent) -> bool:
        if g.trace_id:
            return True
        return bool(g.pod)  # under (pod, pid), (pod, connection) or (pod, 0)

    assert idx.add(first) == sum(map(indexable, first)) == len(idx)
    bound = (T0 + wm_ms * MS - 2_000 * MS) // (100 * MS) * (100 * MS)
    gone = sum(1 for g in first if indexable(g) and g.ts_unix_nano < bound)
    assert idx.evict(T0 + wm_ms * MS) == gone == idx.evicted
    late = [g for g in second if g.ts_unix_nano < bound]
    kept = [g for g in second if g.ts_unix_nano >= bound]
    assert idx.add(second) == sum(map(indexable, kept))
    assert idx.late == len(late)
    assert idx.unindexed == sum(not indexable(g) for g in first + kept)
    assert len(idx) == sum(map(indexable, first + kept)) - gone


def test_claim_is_by_identity_not_by_equal_time():
    # Same time, same connection: the pid-42 signal is claimed by pod_pid; the pid-43 one
    # (another object at the very same ns) must still join by connection.
    a, b = sig(1, pid=42, conn=CONN), sig(1, pid=43, conn=CONN)
    twin = sig(1, pid=42, conn=CONN)  # equal fields, distinct object: claimed too
    es, cor = run([a, b, twin], span(attrs=CONN_ATTRS))
    assert tiers(es) == [POD_PID, POD_PID, POD_CONN]
    assert es.matches[0].signal is a and es.matches[1].signal is twin
    assert es.matches[2].signal is b and cor.stats.fanout_dropped == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(signal_st(), max_size=40),
       st.lists(st.tuples(st.integers(0, 1_500), st.integers(-2_500, 2_500),
                          st.sampled_from(["api-0", "api-1", "db-0"]),
                          st.sampled_from([42, 43]), st.booleans()), max_size=8),
       configs, st.integers(1, 4))
def test_batch_join_equals_one_at_a_time(signals, shapes, cfg, batches):
    """Spans joined together get exactly what each gets alone; batches of signals
    (separate chunks, merged or not) change nothing either."""
    spans = [span(d, pod=pod, pid=pid, start=T0 + o * MS, attrs=CONN_ATTRS if conn else None,
                  trace_id=TRACE if i % 2 else OTHER_TRACE)
             for i, (d, o, pod, pid, conn) in enumerate(shapes)]
    idx = SignalIndex(cfg, service_of=lambda s: SERVICES.get(s.pod))
    step = max(1, len(signals) // batches)
    for i in range(0, len(signals), step):
        idx.add(signals[i:i + step])
    together = Correlator(cfg, idx).correlate_many(spans)
    single = SignalIndex(cfg, service_of=lambda s: SERVICES.get(s.pod))
    single.add(signals)
    alone = Correlator(cfg, single)
    for es, sp in zip(together, spans, strict=True):
        one = alone.correlate(sp)
        assert es.span is sp
        assert [(id(m.signal), m.tier, m.delta_ms) for m in es.matches] == \
            [(id(m.signal), m.tier, m.delta_ms) for m in one.matches]
        assert [(id(m.signal), m.tier) for m in es.diagnostics] == \
            [(id(m.signal), m.tier) for m in one.diagnostics]


def test_batch_wider_than_a_chunk_is_split():
    # One add spanning 40 s (a replay, a stalled reader): more than a chunk's 17 s.
    sigs = [sig(t, pid=42) for t in range(0, 40_000, 5_000)]
    idx = SignalIndex()
    assert idx.add(sigs) == len(sigs) and len(idx.chunks) > 1
    cor = Correlator(index=idx)
    for t in range(0, 40_000, 5_000):
        es = cor.correlate(span(10, start=T0 + t * MS))
        assert [m.signal.ts_unix_nano for m in es.matches] == [T0 + t * MS]


def test_reused_key_id_never_sees_the_old_keys_signals():
    # (api-0, 42) goes quiet: its id is freed while its signal still sits in a live
    # chunk (api-1's newer signal keeps the chunk). A new key gets the freed id.
    idx = SignalIndex(bucket_ms=100)
    idx.add([sig(0, pid=42), sig(3_000, pod="api-1", pid=7)])
    freed = idx.keys["pid"].ids[("api-0", 42)]
    assert idx.evict(T0 + 2_100 * MS) == 1 and len(idx.chunks) == 1
    idx.add([sig(3_050, pod="db-0", pid=9)])
    assert idx.keys["pid"].ids[("db-0", 9)] == freed
    es = Correlator(index=idx).correlate(span(3_100, pod="db-0", pid=9, start=T0))
    assert [m.signal.pod for m in es.matches] == ["db-0"]


def test_pod_pid_tier_keeps_to_the_spans_thread_and_connection():
    # Same pod and pid, inside the span: a signal of another thread or of another
    # connection is other work of the process; unnamed on either side, it still joins.
    main, worker = sig(1, pid=42), sig(2, pid=42, tid=7)
    mine, other = sig(3, pid=42, conn=CONN), sig(4, pid=42, conn=OTHER_CONN)
    anon = sig(5, pid=42, tid=0)  # a thread the probe could not tell
    signals = [main, worker, mine, other, anon]

    def joined(sp: Span) -> set[int]:
        es, _ = run(signals, sp, CorrelationConfig(max_fanout=10))
        return {id(m.signal) for m in es.matches if m.tier == POD_PID}

    assert joined(span()) == {id(g) for g in signals}
    assert joined(span(attrs={"thread.id": 7})) == {id(worker), id(anon)}
    assert joined(span(attrs={"thread.id": 42})) == {id(main), id(mine), id(other), id(anon)}
    assert joined(span(attrs=CONN_ATTRS)) == {id(main), id(worker), id(mine), id(anon)}
    both = span(attrs={**CONN_ATTRS, "thread.id": 42})
    assert joined(both) == {id(main), id(mine), id(anon)}


def test_a_threads_signal_joins_the_nearest_span_of_that_thread():
    # Two lookups in turn on thread 7, 30 ms apart; a loop span (thread 42) over both.
    first = span(20, attrs={"thread.id": 7}, trace_id=TRACE)
    second = span(20, attrs={"thread.id": 7}, trace_id=OTHER_TRACE, start=T0 + 50 * MS)
    loop = span(100, attrs={"thread.id": 42}, start=T0 - 10 * MS)
    during_second = sig(60, pid=42, tid=7)
    gap, tie = sig(30, pid=42, tid=7), sig(35, pid=42, tid=7)  # 10/20 and 15/15 ms off
    idx = SignalIndex(CorrelationConfig(max_fanout=10))
    idx.add([during_second, gap, tie])
    got = Correlator(index=idx).correlate_many([first, second, loop])
    joined = [{id(m.signal) for m in es.matches} for es in got]
    assert joined[0] == {id(gap), id(tie)}
    assert joined[1] == {id(during_second), id(tie)}
    assert joined[2] == set()  # another thread's work
    # Without a thread named, both lookups would take every one of them.
    plain = [msgspec.structs.replace(sp, attributes={}) for sp in (first, second)]
    assert all(len(es.matches) == 3 for es in Correlator(index=idx).correlate_many(plain))
