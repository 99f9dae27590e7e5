"""Tests for llm_slo.probe_event: kernel and /proc records -> the ProbeEvent contract."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from llm_slo.cfs_throttle import CfsThrottleSample
from llm_slo.cpu_steal import CpuStealSample
from llm_slo.events import (
    SIGNALS,
    ConnectEvent,
    ConnTuple,
    DnsEvent,
    LatencyAggregate,
    ReclaimEvent,
    ResolverEvent,
    RetransmitAggregate,
    RunqueueEvent,
    TlsHandshakeEvent,
)
from llm_slo.identity import Identity
from llm_slo.probe_event import (
    THRESHOLDS,
    UNITS,
    ProbeEvent,
    ProbeEventBuilder,
    detail_values,
    status_of,
    wall_offset_ns,
)

SCHEMA_PATH = (Path(__file__).resolve().parents[2]
               / "contracts" / "v1alpha1" / "probe-event.schema.json")
VALIDATOR = Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))

OFFSET = 1_700_000_000_000_000_000
NOW_UNIX = 1_700_000_123_000_000_000
TS = 5_000_000_000
CGROUP = 4321
POD_PATH = ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-"
            "pod11111111_2222_3333_4444_555555555555.slice/cri-containerd-"
            "abcdef0123456789.scope")
IDENT = Identity(cgroup_id=CGROUP, cgroup_path=POD_PATH, container_id="abcdef0123456789",
                 pod_uid="11111111-2222-3333-4444-555555555555", qos_class="burstable",
                 runtime="containerd")
CONN = ConnTuple(src_ip="10.0.0.5", dst_ip="10.0.0.2", src_port=53124, dst_port=53,
                 protocol="udp")
IDS: dict[str, Any] = dict(ts_ns=TS, cgroup_id=CGROUP, pid=100, tid=101, comm="python3")


class FakeResolver:
    """cgroup id -> Identity from a table; unknown ids resolve to an empty path."""

    def __init__(self, table: dict[int, Identity] | None = None) -> None:
        self.table = {CGROUP: IDENT} if table is None else table
        self.calls: list[int] = []

    def __call__(self, cgroup_id: int) -> Identity:
        self.calls.append(cgroup_id)
        return self.table.get(cgroup_id, Identity(cgroup_id=cgroup_id, cgroup_path=""))


def _build(rec: Any, **kw: Any) -> ProbeEvent:
    ev = ProbeEventBuilder("node-a", FakeResolver(), **kw).build(rec, OFFSET, NOW_UNIX)
    _check_contract(ev)
    return ev


def _check_contract(ev: ProbeEvent) -> None:
    """Encodes with msgspec, validates against the committed schema, decodes back equal."""
    raw = msgspec.json.encode(ev)
    VALIDATOR.validate(json.loads(raw))
    assert msgspec.json.decode(raw, type=ProbeEvent) == ev


def _dns(**kw: Any) -> DnsEvent:
    fields: dict[str, Any] = dict(latency_ms=3.5, dns_id=7, rcode=0, qname="api.example.com",
                                  qtype=1, conn=CONN)
    return DnsEvent(**{**IDS, **fields, **kw})


def _connect(**kw: Any) -> ConnectEvent:
    tcp = msgspec.structs.replace(CONN, dst_port=443, protocol="tcp")
    fields: dict[str, Any] = dict(latency_ms=12.0, outcome="established", errno=0,
                                  syn_retransmits=0, conn=tcp)
    return ConnectEvent(**{**IDS, **fields, **kw})


def _agg(**kw: Any) -> LatencyAggregate:
    fields: dict[str, Any] = dict(signal="connect_latency_ms", ts_ns=TS, cgroup_id=CGROUP,
                                  count=10, mean_ms=1.5, p99_ms=2.097152, max_ms=4.194304)
    return LatencyAggregate(**{**fields, **kw})


# ---- thresholds ----------------------------------------------------------------------


def test_every_signal_has_thresholds_and_a_unit() -> None:
    """THRESHOLDS and UNITS cover exactly the known signals, warning below error."""
    assert set(THRESHOLDS) == set(SIGNALS) == set(UNITS)
    assert all(w < e for w, e in THRESHOLDS.values())


@pytest.mark.parametrize("signal", sorted(THRESHOLDS))
def test_status_boundaries(signal: str) -> None:
    """Exactly the warning value is a warning, exactly the error value an error."""
    warn, err = THRESHOLDS[signal]
    assert status_of(signal, 0) == "ok"
    assert status_of(signal, warn - 1e-9) == "ok"
    assert status_of(signal, warn) == "warning"
    assert status_of(signal, err - 1e-9) == "warning"
    assert status_of(signal, err) == "error"
    assert status_of(signal, err * 10) == "error"


@pytest.mark.parametrize("signal", sorted(THRESHOLDS))
def test_failure_is_always_error(signal: str) -> None:
    """A failure is an error whatever its value."""
    assert status_of(signal, 0, failed=True) == "error"


# ---- common fields -------------------------------------------------------------------


def test_identity_time_and_process_fields() -> None:
    """Wall time is ts_ns + offset; identity comes from the resolver; pid/tid/comm kept."""
    resolver = FakeResolver()
    ev = ProbeEventBuilder("node-a", resolver).build(_dns(), OFFSET, NOW_UNIX)
    _check_contract(ev)
    assert resolver.calls == [CGROUP]
    assert ev.ts_unix_nano == TS + OFFSET
    assert ev.node == "node-a"
    assert (ev.cgroup_id, ev.cgroup_path) == (CGROUP, POD_PATH)
    assert (ev.pod_uid, ev.container_id) == (IDENT.pod_uid, IDENT.container_id)
    assert (ev.pid, ev.tid, ev.comm) == (100, 101, "python3")
    assert (ev.namespace, ev.pod, ev.container) == ("", "", "")


def test_unknown_cgroup() -> None:
    """A cgroup the resolver does not know still yields a valid event with an empty path."""
    ev = _build(_dns(cgroup_id=9))
    assert (ev.cgroup_id, ev.cgroup_path, ev.pod_uid) == (9, "", "")


def test_wall_time_never_negative() -> None:
    """A wall time before the epoch is clamped to 0 (the contract requires >= 0)."""
    ev = ProbeEventBuilder("n", FakeResolver()).build(_dns(), -TS - 1, NOW_UNIX)
    _check_contract(ev)
    assert ev.ts_unix_nano == 0


def test_value_rounded_to_six_decimals() -> None:
    """Values are rounded to 6 decimals (nanoseconds, for a value in ms)."""
    ev = _build(_dns(latency_ms=12.3456789))
    assert ev.value == 12.345679


def test_wall_offset_ns() -> None:
    """wall_offset_ns() is CLOCK_REALTIME - CLOCK_MONOTONIC, to within a second."""
    assert abs(wall_offset_ns() - (time.time_ns() - time.monotonic_ns())) < 1_000_000_000


def test_unknown_record_type() -> None:
    """A record without a mapping is a TypeError, not a silently wrong event."""
    with pytest.raises(TypeError, match="str"):
        ProbeEventBuilder("n", FakeResolver()).build("nope", 0, 0)


# ---- per record type -----------------------------------------------------------------


def test_dns_event() -> None:
    """A wire DNS answer: latency in ms, flow, qname as target, rcode name as outcome."""
    ev = _build(_dns(latency_ms=45.0))
    assert (ev.signal, ev.value, ev.unit, ev.status) == ("dns_latency_ms", 45.0, "ms",
                                                          "warning")
    assert ev.conn_tuple == CONN
    assert (ev.target, ev.outcome, ev.detail) == ("api.example.com", "noerror", "wire")
    assert ev.errno is None and ev.count is None


@pytest.mark.parametrize(
    "kw,outcome,status",
    [
        (dict(rcode=0), "noerror", "ok"),
        (dict(rcode=3), "nxdomain", "ok"),  # routine with ndots search lists
        (dict(rcode=2), "servfail", "error"),
        (dict(rcode=5), "refused", "error"),
        (dict(rcode=9), "rcode9", "error"),
        (dict(rcode=-1, timeout=True, latency_ms=5000.0), "timeout", "error"),
        (dict(rcode=-1, timeout=True, latency_ms=1.0), "timeout", "error"),
    ],
)
def test_dns_outcomes(kw: dict[str, Any], outcome: str, status: str) -> None:
    """NXDOMAIN is not a failure; SERVFAIL, other rcodes and timeouts are errors."""
    ev = _build(_dns(**kw))
    assert (ev.outcome, ev.status) == (outcome, status)


@pytest.mark.parametrize("ret,outcome,status", [(0, "ok", "ok"), (-2, "eai-2", "error")])
def test_resolver_event(ret: int, outcome: str, status: str) -> None:
    """A getaddrinfo call: host as target, EAI code as outcome, failures are errors."""
    ev = _build(ResolverEvent(**IDS, latency_ms=2.0, host="api.example.com", ret=ret))
    assert (ev.signal, ev.unit, ev.detail, ev.target) == ("dns_latency_ms", "ms", "resolver",
                                                           "api.example.com")
    assert (ev.outcome, ev.status) == (outcome, status)
    assert ev.conn_tuple is None


def test_runqueue_event() -> None:
    """A slow run-queue wait: delay by thresholds, CPU and previous cgroup in detail."""
    ev = _build(RunqueueEvent(**IDS, delay_ms=25.0, prev_cgroup_id=9, cpu=3))
    assert (ev.signal, ev.value, ev.unit, ev.status) == ("runqueue_delay_ms", 25.0, "ms",
                                                          "error")
    assert ev.detail == "cpu=3 prev_cgroup_id=9"
    assert ev.outcome is None


def test_connect_established() -> None:
    """An established connect is judged by latency and carries no errno."""
    ev = _build(_connect(latency_ms=80.0))
    assert (ev.signal, ev.unit, ev.status, ev.outcome) == ("connect_latency_ms", "ms",
                                                            "warning", "established")
    assert ev.errno is None
    assert ev.conn_tuple is not None and ev.conn_tuple.canonical() == (
        "10.0.0.5:53124->10.0.0.2:443/tcp")
    assert "errno" not in json.loads(msgspec.json.encode(ev))


def test_connect_failure() -> None:
    """A refused connect is an error with its errno and SYN retransmits."""
    ev = _build(_connect(latency_ms=0.2, outcome="refused", errno=111, syn_retransmits=2))
    assert (ev.status, ev.outcome, ev.errno) == ("error", "refused", 111)
    assert ev.detail == "syn_retransmits=2"


@pytest.mark.parametrize("outcome,latency,status", [("ok", 59.0, "ok"), ("ok", 60.0, "warning"),
                                                    ("failed", 1.0, "error")])
def test_tls_event(outcome: str, latency: float, status: str) -> None:
    """A TLS handshake: a failed one is an error, a completed one judged by latency."""
    ev = _build(TlsHandshakeEvent(**IDS, latency_ms=latency, outcome=outcome, role="client",
                                  calls=3))
    assert (ev.signal, ev.unit, ev.outcome, ev.status) == ("tls_handshake_ms", "ms", outcome,
                                                            status)
    assert ev.detail == "role=client calls=3"


def test_reclaim_event() -> None:
    """A reclaim stall: kind in detail, status by thresholds."""
    ev = _build(ReclaimEvent(**IDS, latency_ms=20.0, kind="memcg", nr_reclaimed=32, order=0))
    assert (ev.signal, ev.value, ev.unit, ev.status, ev.detail) == (
        "mem_reclaim_latency_ms", 20.0, "ms", "error", "memcg")


def test_latency_aggregate() -> None:
    """An interval summary: mean as value, count, p99/max/failures in detail."""
    ev = _build(_agg(signal="mem_reclaim_latency_ms", mean_ms=6.0, detail="direct"))
    assert (ev.signal, ev.value, ev.unit, ev.count, ev.status) == (
        "mem_reclaim_latency_ms", 6.0, "ms", 10, "warning")
    assert ev.detail == "direct p99<=2.09715ms max<=4.1943ms failures=0"
    assert ev.ts_unix_nano == TS + OFFSET


def test_latency_aggregate_only_failures_is_error() -> None:
    """An interval with failures and no successes is an error."""
    ev = _build(_agg(count=0, mean_ms=0.0, p99_ms=0.0, max_ms=0.0, failures=3))
    assert ev.status == "error"
    assert ev.count == 0
    assert ev.detail == "p99<=0ms max<=0ms failures=3"


@pytest.mark.parametrize("count,syn,status", [(1, False, "ok"), (2, True, "warning"),
                                              (5, False, "error")])
def test_retransmit_aggregate(count: int, syn: bool, status: str) -> None:
    """Retransmits per flow: count as value, unit count, SYN or data in detail."""
    ev = _build(RetransmitAggregate(ts_ns=TS, cgroup_id=CGROUP, conn=CONN, syn=syn,
                                    count=count))
    assert (ev.signal, ev.value, ev.unit, ev.count, ev.status) == (
        "tcp_retransmits_total", float(count), "count", count, status)
    assert ev.detail == ("syn" if syn else "data")
    assert ev.conn_tuple == CONN
    assert (ev.pid, ev.tid, ev.comm) == (0, 0, "")


@pytest.mark.parametrize("cpu,detail", [(-1, "node"), (3, "cpu=3")])
def test_cpu_steal_sample(cpu: int, detail: str) -> None:
    """Steal is node-level: now as time, no cgroup, percent unit, no resolver call."""
    resolver = FakeResolver()
    ev = ProbeEventBuilder("node-a", resolver).build(
        CpuStealSample(cpu=cpu, steal_pct=8.0, interval_s=1.0), OFFSET, NOW_UNIX)
    _check_contract(ev)
    assert resolver.calls == []
    assert (ev.signal, ev.value, ev.unit, ev.status, ev.detail) == (
        "cpu_steal_pct", 8.0, "percent", "error", detail)
    assert (ev.ts_unix_nano, ev.cgroup_id, ev.cgroup_path) == (NOW_UNIX, 0, "")


def _cfs() -> CfsThrottleSample:
    return CfsThrottleSample(cgroup_path=POD_PATH, throttled_ms=40.0, throttled_periods=10,
                             periods=40, throttled_share=0.25, interval_s=1.0)


def test_cfs_throttle_without_cgroup_ids() -> None:
    """Without a path -> id lookup the event keeps the sample's path and cgroup id 0."""
    ev = _build(_cfs())
    assert (ev.signal, ev.value, ev.unit, ev.status, ev.count) == (
        "cfs_throttled_ms", 40.0, "ms", "warning", 10)
    assert (ev.cgroup_id, ev.cgroup_path, ev.ts_unix_nano) == (0, POD_PATH, NOW_UNIX)
    assert ev.detail == "throttled_share=0.250 periods=40"


def test_cfs_throttle_resolved() -> None:
    """With a path -> id lookup the resolver's identity (pod, container) is attached."""
    ev = _build(_cfs(), cgroup_id_of={POD_PATH: CGROUP}.get)
    assert (ev.cgroup_id, ev.cgroup_path) == (CGROUP, POD_PATH)
    assert (ev.pod_uid, ev.container_id) == (IDENT.pod_uid, IDENT.container_id)


def test_cfs_throttle_unresolved_id_keeps_path() -> None:
    """An id the resolver cannot place still reports the sample's own path."""
    ev = _build(_cfs(), cgroup_id_of=lambda path: 99)
    assert (ev.cgroup_id, ev.cgroup_path) == (99, POD_PATH)


# ---- contract ------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    """The committed schema is itself a valid 2020-12 schema."""
    Draft202012Validator.check_schema(VALIDATOR.schema)


def test_schema_rejects_what_the_contract_forbids() -> None:
    """Validation is not vacuous: bad status, unknown field and missing field are refused."""
    good = json.loads(msgspec.json.encode(_build(_dns())))
    assert VALIDATOR.is_valid(good)
    assert not VALIDATOR.is_valid({**good, "status": "fine"})
    assert not VALIDATOR.is_valid({**good, "extra": 1})
    assert not VALIDATOR.is_valid({k: v for k, v in good.items() if k != "node"})
    assert not VALIDATOR.is_valid({**good, "conn_tuple": {**good["conn_tuple"],
                                                          "src_port": 70000}})


def test_detail_values_parses_numbers_read_only() -> None:
    """Aggregate bounds and counters of a detail as numbers; the parse is cached and
    shared, so it cannot be changed by a caller."""
    kv = detail_values("resolver p99<=16.7772ms max<=33.5544ms failures=2")
    assert dict(kv) == {"p99": 16.7772, "max": 33.5544, "failures": 2.0}
    assert detail_values("resolver p99<=16.7772ms max<=33.5544ms failures=2") is kv
    with pytest.raises(TypeError):
        kv["p99"] = 0.0  # type: ignore[index]
    assert dict(detail_values(None)) == {}
