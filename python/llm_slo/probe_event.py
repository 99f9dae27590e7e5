"""Export stage for kernel records: identity + wall clock -> the ProbeEvent contract.

``ProbeEvent`` keeps every field of the original v1alpha1 contract (same names, same
status enum) and adds ``cgroup_id``, ``cgroup_path``, ``count`` for aggregated
signals and a few descriptive fields. The JSON Schema in
``contracts/v1alpha1/probe-event.schema.json`` is generated from it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec

from llm_slo.cfs_throttle import CfsThrottleSample
from llm_slo.cpu_steal import CpuStealSample
from llm_slo.events import (
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
from llm_slo.identity import Identity, PodName

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Status = Literal["ok", "warning", "error"]

# (warning, error) thresholds per signal, in the signal's unit; the original's values.
THRESHOLDS: dict[str, tuple[float, float]] = {
    "dns_latency_ms": (40, 120),
    "tcp_retransmits_total": (2, 5),
    "runqueue_delay_ms": (10, 25),
    "connect_latency_ms": (80, 180),
    "tls_handshake_ms": (60, 160),
    "cpu_steal_pct": (2, 8),
    "mem_reclaim_latency_ms": (5, 20),
    "cfs_throttled_ms": (40, 120),
}
_RCODES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused"}
UNITS = {
    "dns_latency_ms": "ms",
    "tcp_retransmits_total": "count",
    "runqueue_delay_ms": "ms",
    "connect_latency_ms": "ms",
    "tls_handshake_ms": "ms",
    "cpu_steal_pct": "percent",
    "mem_reclaim_latency_ms": "ms",
    "cfs_throttled_ms": "ms",
}


class ProbeEvent(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True,
                 gc=False):
    """One kernel observation, attributed to a workload: contract v1alpha1."""

    ts_unix_nano: NonNegInt
    signal: str
    node: str
    namespace: str
    pod: str
    container: str
    pid: NonNegInt
    tid: NonNegInt
    value: float
    unit: str
    status: Status
    conn_tuple: ConnTuple | None = None
    trace_id: str | None = None
    span_id: str | None = None
    errno: int | None = None
    confidence: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    cgroup_id: NonNegInt = 0
    cgroup_path: str = ""
    pod_uid: str = ""
    container_id: str = ""
    comm: str = ""
    count: NonNegInt | None = None
    outcome: str | None = None
    target: str | None = None
    detail: str | None = None


_NO_POD = PodName("", "", "")


_DETAIL_KV = re.compile(r"(\w+)(<=|=)([-\d.]+)")


@lru_cache(maxsize=8192)
def detail_values(detail: str | None) -> Mapping[str, float]:
    """The numbers of a detail: ``key=value`` and ``key<=valuems`` tokens (an aggregate's
    ``p99<=`` and ``max<=`` bucket bounds, ``failures=``, ``prev_cgroup_id=``...).

    Cached, and so read-only: evidence over a violation's lifetime parses the same
    details at every tick, and they repeat (histogram bounds are powers of two)."""
    return MappingProxyType({k: float(v) for k, _, v in _DETAIL_KV.findall(detail or "")})


def status_of(signal: str, value: float, failed: bool = False) -> Status:
    """ok / warning / error from the signal's thresholds; a failure is always an error."""
    if failed:
        return "error"
    warn, err = THRESHOLDS[signal]
    return "error" if value >= err else "warning" if value >= warn else "ok"


def wall_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now; add to a kernel timestamp for wall time."""
    return time.time_ns() - time.monotonic_ns()


def _fields(rec: Any) -> dict[str, Any]:
    """Signal-specific part of a ProbeEvent for one record type."""
    if isinstance(rec, DnsEvent):
        failed = rec.timeout or rec.rcode not in (0, 3)  # NXDOMAIN is routine (ndots)
        outcome = "timeout" if rec.timeout else _RCODES.get(rec.rcode, f"rcode{rec.rcode}")
        return dict(signal="dns_latency_ms", value=rec.latency_ms, conn_tuple=rec.conn,
                    target=rec.qname, outcome=outcome, detail="wire", failed=failed)
    if isinstance(rec, ResolverEvent):
        return dict(signal="dns_latency_ms", value=rec.latency_ms, target=rec.host,
                    outcome="ok" if rec.ret == 0 else f"eai{rec.ret}", detail="resolver",
                    failed=rec.ret != 0)
    if isinstance(rec, RunqueueEvent):
        return dict(signal="runqueue_delay_ms", value=rec.delay_ms,
                    detail=f"cpu={rec.cpu} prev_cgroup_id={rec.prev_cgroup_id}")
    if isinstance(rec, ConnectEvent):
        return dict(signal="connect_latency_ms", value=rec.latency_ms, conn_tuple=rec.conn,
                    outcome=rec.outcome, errno=rec.errno or None,
                    detail=f"syn_retransmits={rec.syn_retransmits}",
                    failed=rec.outcome != "established")
    if isinstance(rec, TlsHandshakeEvent):
        return dict(signal="tls_handshake_ms", value=rec.latency_ms, outcome=rec.outcome,
                    detail=f"role={rec.role} calls={rec.calls}", failed=rec.outcome != "ok")
    if isinstance(rec, ReclaimEvent):
        return dict(signal="mem_reclaim_latency_ms", value=rec.latency_ms, detail=rec.kind)
    if isinstance(rec, LatencyAggregate):
        return dict(signal=rec.signal, value=rec.mean_ms, count=rec.count,
                    detail=f"{rec.detail + ' ' if rec.detail else ''}p99<={rec.p99_ms:g}ms "
                    f"max<={rec.max_ms:g}ms failures={rec.failures}".strip(),
                    failed=rec.failures > 0)
    if isinstance(rec, RetransmitAggregate):
        return dict(signal="tcp_retransmits_total", value=float(rec.count), count=rec.count,
                    conn_tuple=rec.conn, detail="syn" if rec.syn else "data")
    raise TypeError(f"no ProbeEvent mapping for {type(rec).__name__}")


class ProbeEventBuilder:
    """Attaches identity and wall-clock time to kernel and /proc records."""

    def __init__(self, node: str, resolve: Callable[[int], Identity],
                 cgroup_id_of: Callable[[str], int] | None = None,
                 pod_of: Callable[[int], PodName | None] | None = None) -> None:
        self.node = node
        self.resolve = resolve
        self.cgroup_id_of = cgroup_id_of
        self.pod_of = pod_of

    def build_batch(self, records: list[Any]) -> list[ProbeEvent]:
        """ProbeEvents for one poll; kernel time is converted to wall time once."""
        offset, now = wall_offset_ns(), time.time_ns()
        return [self.build(r, offset, now) for r in records]

    def build(self, rec: Any, offset_ns: int, now_unix_ns: int) -> ProbeEvent:
        """One ProbeEvent; ``offset_ns`` converts kernel monotonic time (once per batch)."""
        if isinstance(rec, CpuStealSample):
            return self._event(
                ts=now_unix_ns, ident=Identity(cgroup_id=0, cgroup_path=""),
                signal="cpu_steal_pct", value=rec.steal_pct,
                detail="node" if rec.cpu < 0 else f"cpu={rec.cpu}")
        if isinstance(rec, CfsThrottleSample):
            cid = self.cgroup_id_of(rec.cgroup_path) if self.cgroup_id_of else 0
            ident = self.resolve(cid) if cid else Identity(cgroup_id=0, cgroup_path="")
            if not ident.cgroup_path:
                ident = msgspec.structs.replace(ident, cgroup_path=rec.cgroup_path)
            return self._event(
                ts=now_unix_ns, ident=ident, signal="cfs_throttled_ms",
                value=rec.throttled_ms, count=rec.throttled_periods,
                detail=f"throttled_share={rec.throttled_share:.3f} periods={rec.periods}")
        f = _fields(rec)
        ident = self.resolve(rec.cgroup_id)
        return self._event(ts=rec.ts_ns + offset_ns, ident=ident,
                           pid=getattr(rec, "pid", 0), tid=getattr(rec, "tid", 0),
                           comm=getattr(rec, "comm", ""), **f)

    def _event(self, *, ts: int, ident: Identity, signal: str, value: float,
               failed: bool = False, pid: int = 0, tid: int = 0, comm: str = "",
               **extra: Any) -> ProbeEvent:
        value = round(float(value), 6)  # status from the value consumers will see
        pod = (self.pod_of(ident.cgroup_id) if self.pod_of and ident.cgroup_id else None) \
            or _NO_POD
        return ProbeEvent(
            ts_unix_nano=max(ts, 0), signal=signal, node=self.node,
            namespace=pod.namespace, pod=pod.pod, container=pod.container, pid=pid, tid=tid,
            value=value, unit=UNITS[signal],
            status=status_of(signal, value, failed),
            cgroup_id=ident.cgroup_id, cgroup_path=ident.cgroup_path,
            pod_uid=ident.pod_uid, container_id=ident.container_id, comm=comm, **extra)
