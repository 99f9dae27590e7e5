"""Ring-buffer records and map snapshots -> signal Structs.

Pure functions over numpy arrays whose dtypes come from :mod:`llm_slo.abi`. Records with
a wrong ``kind``, ``version`` or ``size`` are counted in :class:`DecodeStats` and dropped,
never guessed at.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm_slo import abi
from llm_slo.events import (
    CONNECT_OUTCOMES,
    RECLAIM_KINDS,
    TLS_OUTCOMES,
    TLS_ROLES,
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

Records = np.ndarray[Any, Any]
_PROTOCOLS = {6: "tcp", 17: "udp"}
_V4_PREFIX = bytes(10) + b"\xff\xff"


@dataclass
class DecodeStats:
    """Records rejected by validation, per reason."""

    bad_records: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, n: int) -> None:
        if n:
            self.bad_records[reason] = self.bad_records.get(reason, 0) + n


def valid(records: Records, kind: int, stats: DecodeStats) -> Records:
    """Keep records whose header matches ``kind``, the ABI version and the record size."""
    hdr = records["hdr"]
    ok = (
        (hdr["kind"] == kind)
        & (hdr["version"] == abi.ABI_VERSION)
        & (hdr["size"] == records.dtype.itemsize)
    )
    stats.reject(f"kind{kind}", int(records.shape[0] - np.count_nonzero(ok)))
    return records if ok.all() else records[ok]


def ip_text(raw: bytes, family: int) -> str:
    """Text form of a v4-mapped or v6 address as stored in ``struct flow``."""
    if family == 2 or raw[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(raw[12:16]))
    return str(ipaddress.IPv6Address(raw))


def conn_tuple(flow: Any) -> ConnTuple:
    """ConnTuple from one ``struct flow`` record."""
    family = int(flow["family"])
    return ConnTuple(
        src_ip=ip_text(flow["saddr"].tobytes(), family),
        dst_ip=ip_text(flow["daddr"].tobytes(), family),
        src_port=int(flow["sport"]),
        dst_port=int(flow["dport"]),
        protocol=_PROTOCOLS.get(int(flow["protocol"]), str(int(flow["protocol"]))),
    )


def parse_question(raw: bytes) -> tuple[str, int]:
    """(qname, qtype) from the start of a DNS question section; partial names allowed."""
    labels: list[str] = []
    i = 0
    while i < len(raw):
        n = raw[i]
        if n == 0:
            i += 1
            qtype = int.from_bytes(raw[i : i + 2], "big") if i + 2 <= len(raw) else 0
            return ".".join(labels), qtype
        if n & 0xC0:  # compression pointers do not appear in a query's first name
            break
        labels.append(raw[i + 1 : i + 1 + n].decode("ascii", errors="replace"))
        i += 1 + n
    return ".".join(labels), 0


def enum_name(names: tuple[str, ...], value: Any) -> str:
    """Enum value -> name; a value this build does not know is "unknown", not a guess."""
    i = int(value)
    return names[i] if 0 <= i < len(names) else "unknown"


def _ids(hdr: Any) -> dict[str, Any]:
    pid_tgid = int(hdr["pid_tgid"])
    return {
        "ts_ns": int(hdr["ts_ns"]),
        "cgroup_id": int(hdr["cgroup_id"]),
        "pid": pid_tgid >> 32,
        "tid": pid_tgid & 0xFFFFFFFF,
        "comm": hdr["comm"].decode(errors="replace"),
    }


def dns_events(records: Records, stats: DecodeStats) -> list[DnsEvent]:
    """Answered queries streamed by the kernel (slow, failed or sampled)."""
    out = []
    for r in valid(records, abi.EVENT_DNS_RESPONSE, stats):
        qname, qtype = parse_question(r["question"][: int(r["question_len"])].tobytes())
        flags = int(r["flags"])
        out.append(
            DnsEvent(
                **_ids(r["hdr"]),
                latency_ms=int(r["latency_ns"]) / 1e6,
                dns_id=int(r["dns_id"]),
                rcode=int(r["rcode"]),
                qname=qname,
                qtype=qtype,
                conn=conn_tuple(r["flow"]),
                truncated=bool(flags & 0x2),
            )
        )
    return out


def dns_timeouts(keys: Records, queries: Records, now_ns: int,
                 timeout_ns: int) -> tuple[list[DnsEvent], Any]:
    """Queries at least ``timeout_ns`` old as timeout events, plus the mask of those entries.

    ``keys`` (``dns_query_key``) and ``queries`` (``dns_query``) are the in-flight map's
    rows, in the same order.
    """
    old = (now_ns - queries["ts_ns"].astype(np.int64)) >= timeout_ns
    out = []
    for k, q in zip(keys[old], queries[old], strict=True):
        qname, qtype = parse_question(q["question"][: int(q["question_len"])].tobytes())
        pid_tgid = int(q["pid_tgid"])
        out.append(
            DnsEvent(
                ts_ns=now_ns,
                cgroup_id=int(q["cgroup_id"]),
                pid=pid_tgid >> 32,
                tid=pid_tgid & 0xFFFFFFFF,
                comm=q["comm"].decode(errors="replace"),
                latency_ms=(now_ns - int(q["ts_ns"])) / 1e6,
                dns_id=int(k["dns_id"]),
                rcode=-1,
                qname=qname,
                qtype=qtype,
                conn=conn_tuple(q["flow"]),
                timeout=True,
            )
        )
    return out, old


def resolver_events(records: Records, stats: DecodeStats) -> list[ResolverEvent]:
    """Slow or failed ``getaddrinfo`` calls."""
    return [
        ResolverEvent(
            **_ids(r["hdr"]),
            latency_ms=int(r["latency_ns"]) / 1e6,
            host=r["host"].decode(errors="replace"),
            ret=int(r["ret"]),
        )
        for r in valid(records, abi.EVENT_DNS_RESOLVER, stats)
    ]


def runqueue_events(records: Records, stats: DecodeStats) -> list[RunqueueEvent]:
    """Slow run-queue waits."""
    return [
        RunqueueEvent(
            **_ids(r["hdr"]),
            delay_ms=int(r["delay_ns"]) / 1e6,
            prev_cgroup_id=int(r["prev_cgroup_id"]),
            cpu=int(r["cpu"]),
        )
        for r in valid(records, abi.EVENT_RUNQ_SLOW, stats)
    ]


def connect_events(records: Records, stats: DecodeStats) -> list[ConnectEvent]:
    """Failed or slow TCP connects."""
    return [
        ConnectEvent(
            **_ids(r["hdr"]),
            latency_ms=int(r["latency_ns"]) / 1e6,
            outcome=enum_name(CONNECT_OUTCOMES, r["outcome"]),
            errno=int(r["err"]),
            syn_retransmits=int(r["syn_retrans"]),
            conn=conn_tuple(r["flow"]),
        )
        for r in valid(records, abi.EVENT_CONNECT, stats)
    ]


def tls_events(records: Records, stats: DecodeStats) -> list[TlsHandshakeEvent]:
    """Completed or failed TLS handshakes."""
    return [
        TlsHandshakeEvent(
            **_ids(r["hdr"]),
            latency_ms=int(r["latency_ns"]) / 1e6,
            outcome=enum_name(TLS_OUTCOMES, r["outcome"]),
            role=enum_name(TLS_ROLES, r["role"]),
            calls=int(r["calls"]),
        )
        for r in valid(records, abi.EVENT_TLS_HANDSHAKE, stats)
    ]


def reclaim_events(records: Records, stats: DecodeStats) -> list[ReclaimEvent]:
    """Long reclaim stalls."""
    return [
        ReclaimEvent(
            **_ids(r["hdr"]),
            latency_ms=int(r["latency_ns"]) / 1e6,
            kind=enum_name(RECLAIM_KINDS, r["kind"]),
            nr_reclaimed=int(r["nr_reclaimed"]),
            order=int(r["order"]),
        )
        for r in valid(records, abi.EVENT_RECLAIM, stats)
    ]


_UPPER_MS = np.array([2.0 ** (i + 1) / 1e6 for i in range(abi.HIST_SLOTS)])


def hist_aggregate(
    signal: str, ts_ns: int, cgroup_id: int, slots: Any, total_ns: int, detail: str = ""
) -> LatencyAggregate | None:
    """Summary of one interval's histogram delta; None when nothing happened."""
    count = int(slots.sum())
    if count <= 0:
        return None
    nonzero = np.flatnonzero(slots)
    rank = np.searchsorted(np.cumsum(slots), 0.99 * count)
    return LatencyAggregate(
        signal=signal,
        ts_ns=ts_ns,
        cgroup_id=cgroup_id,
        count=count,
        mean_ms=total_ns / count / 1e6,
        p99_ms=float(_UPPER_MS[min(int(rank), abi.HIST_SLOTS - 1)]),
        max_ms=float(_UPPER_MS[int(nonzero[-1])]),
        detail=detail,
    )


class Differ:
    """Turns cumulative per-key kernel counters into per-interval deltas.

    An entry that shrank was evicted (LRU) and recreated: its current value is the delta.
    Keys absent from a snapshot are forgotten so memory follows the map's size.
    """

    def __init__(self) -> None:
        self._prev: dict[Any, Any] = {}

    def delta(self, snapshot: dict[Any, Any]) -> dict[Any, Any]:
        out = {}
        for key, cur in snapshot.items():
            prev = self._prev.get(key)
            d = cur if prev is None or np.any(cur < prev) else cur - prev
            if np.any(d):
                out[key] = d
        self._prev = snapshot
        return out


def row_bytes(rows: Records) -> list[bytes]:
    """Each row's raw bytes, padding included: the exact key bytes a BPF map expects.

    (``rows[i].tobytes()`` on a structured row drops trailing padding.)
    """
    raw, size = rows.tobytes(), rows.dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(rows.shape[0])]


def retransmit_aggregates(
    keys: Records, counts: Any, differ: Differ, ts_ns: int
) -> list[RetransmitAggregate]:
    """Per-flow retransmit deltas from a ``retransmits`` map snapshot."""
    snapshot = {k: np.uint64(n) for k, n in zip(row_bytes(keys), counts, strict=True)}
    out = []
    for raw, n in differ.delta(snapshot).items():
        k = np.frombuffer(raw, dtype=abi.RETRANS_KEY)[0]
        out.append(
            RetransmitAggregate(
                ts_ns=ts_ns,
                cgroup_id=int(k["cgroup_id"]),
                conn=conn_tuple(k["flow"]),
                syn=bool(k["syn"]),
                count=int(n),
            )
        )
    return out
