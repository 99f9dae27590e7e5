"""Ring-buffer records and map snapshots -> signal Structs.

Pure functions over numpy arrays whose dtypes come from :mod:`llm_slo.abi`. Records with
a wrong ``kind``, ``version`` or ``size`` are counted in :class:`DecodeStats` and dropped,
never guessed at.
"""

from __future__ import annotations

import socket
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
    if family == socket.AF_INET or raw[:12] == _V4_PREFIX:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


def conn_tuple(flow: Any) -> ConnTuple:
    """ConnTuple from one ``struct flow`` record."""
    return conn_tuples(np.asarray(flow).reshape(1))[0]


def conn_tuples(flows: Records) -> list[ConnTuple]:
    """ConnTuples for a column of ``struct flow`` records."""
    src, dst = flows["saddr"].tobytes(), flows["daddr"].tobytes()
    out = []
    for i, (fam, sport, dport, proto) in enumerate(zip(
            flows["family"].tolist(), flows["sport"].tolist(), flows["dport"].tolist(),
            flows["protocol"].tolist(), strict=True)):
        out.append(ConnTuple(
            src_ip=ip_text(src[16 * i : 16 * i + 16], fam),
            dst_ip=ip_text(dst[16 * i : 16 * i + 16], fam),
            src_port=sport, dst_port=dport, protocol=_PROTOCOLS.get(proto, str(proto))))
    return out


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


# Decoders work on columns: one .tolist() per field, then a zip into Structs. Reading
# fields row by row as numpy scalars cost ~2.5 us per record (make bench); columns
# bring it well under 1 us.


def _head(r: Records) -> tuple[list[int], list[int], list[int], list[int], list[str]]:
    """ts_ns, cgroup_id, pid, tid and comm columns of the common header."""
    hdr = r["hdr"]
    pid_tgid = hdr["pid_tgid"]
    comm = [c.decode(errors="replace") for c in hdr["comm"].tolist()]
    return (hdr["ts_ns"].tolist(), hdr["cgroup_id"].tolist(), (pid_tgid >> 32).tolist(),
            (pid_tgid & 0xFFFFFFFF).tolist(), comm)


def _ms(ns: Any) -> list[float]:
    return (ns / 1e6).tolist()


def _questions(r: Records) -> list[tuple[str, int]]:
    raw, size = r["question"].tobytes(), r["question"].shape[1]
    return [parse_question(raw[size * i : size * i + n])
            for i, n in enumerate(r["question_len"].tolist())]


def dns_events(records: Records, stats: DecodeStats) -> list[DnsEvent]:
    """Answered queries streamed by the kernel (slow, failed or sampled)."""
    r = valid(records, abi.EVENT_DNS_RESPONSE, stats)
    return [
        DnsEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, latency_ms=lat,
                 dns_id=qid, rcode=rcode, qname=q[0], qtype=q[1], conn=conn,
                 truncated=bool(flags & 0x2))
        for ts, cg, pid, tid, comm, lat, qid, rcode, q, conn, flags in zip(
            *_head(r), _ms(r["latency_ns"]), r["dns_id"].tolist(), r["rcode"].tolist(),
            _questions(r), conn_tuples(r["flow"]), r["flags"].tolist(), strict=True)
    ]


def dns_timeouts(keys: Records, queries: Records, now_ns: int,
                 timeout_ns: int) -> tuple[list[DnsEvent], Any]:
    """Queries at least ``timeout_ns`` old as timeout events, plus the mask of those entries.

    ``keys`` (``dns_query_key``) and ``queries`` (``dns_query``) are the in-flight map's
    rows, in the same order.
    """
    old = (now_ns - queries["ts_ns"].astype(np.int64)) >= timeout_ns
    q, k = queries[old], keys[old]
    pid_tgid = q["pid_tgid"]
    events = [
        DnsEvent(ts_ns=now_ns, cgroup_id=cg, pid=pid, tid=tid,
                 comm=comm.decode(errors="replace"), latency_ms=(now_ns - ts) / 1e6,
                 dns_id=qid, rcode=-1, qname=question[0], qtype=question[1], conn=conn,
                 timeout=True)
        for ts, cg, pid, tid, comm, qid, question, conn in zip(
            q["ts_ns"].tolist(), q["cgroup_id"].tolist(), (pid_tgid >> 32).tolist(),
            (pid_tgid & 0xFFFFFFFF).tolist(), q["comm"].tolist(), k["dns_id"].tolist(),
            _questions(q), conn_tuples(q["flow"]), strict=True)
    ]
    return events, old


def resolver_events(records: Records, stats: DecodeStats) -> list[ResolverEvent]:
    """Slow or failed ``getaddrinfo`` calls."""
    r = valid(records, abi.EVENT_DNS_RESOLVER, stats)
    return [
        ResolverEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, latency_ms=lat,
                      host=host.decode(errors="replace"), ret=ret)
        for ts, cg, pid, tid, comm, lat, host, ret in zip(
            *_head(r), _ms(r["latency_ns"]), r["host"].tolist(), r["ret"].tolist(),
            strict=True)
    ]


def runqueue_events(records: Records, stats: DecodeStats) -> list[RunqueueEvent]:
    """Slow run-queue waits."""
    r = valid(records, abi.EVENT_RUNQ_SLOW, stats)
    return [
        RunqueueEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, delay_ms=delay,
                      prev_cgroup_id=prev, cpu=cpu)
        for ts, cg, pid, tid, comm, delay, prev, cpu in zip(
            *_head(r), _ms(r["delay_ns"]), r["prev_cgroup_id"].tolist(), r["cpu"].tolist(),
            strict=True)
    ]


def connect_events(records: Records, stats: DecodeStats) -> list[ConnectEvent]:
    """Failed or slow TCP connects."""
    r = valid(records, abi.EVENT_CONNECT, stats)
    return [
        ConnectEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, latency_ms=lat,
                     outcome=enum_name(CONNECT_OUTCOMES, outcome), errno=err,
                     syn_retransmits=syn, conn=conn)
        for ts, cg, pid, tid, comm, lat, outcome, err, syn, conn in zip(
            *_head(r), _ms(r["latency_ns"]), r["outcome"].tolist(), r["err"].tolist(),
            r["syn_retrans"].tolist(), conn_tuples(r["flow"]), strict=True)
    ]


def tls_events(records: Records, stats: DecodeStats) -> list[TlsHandshakeEvent]:
    """Completed or failed TLS handshakes."""
    r = valid(records, abi.EVENT_TLS_HANDSHAKE, stats)
    return [
        TlsHandshakeEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, latency_ms=lat,
                          outcome=enum_name(TLS_OUTCOMES, outcome),
                          role=enum_name(TLS_ROLES, role), calls=calls)
        for ts, cg, pid, tid, comm, lat, outcome, role, calls in zip(
            *_head(r), _ms(r["latency_ns"]), r["outcome"].tolist(), r["role"].tolist(),
            r["calls"].tolist(), strict=True)
    ]


def reclaim_events(records: Records, stats: DecodeStats) -> list[ReclaimEvent]:
    """Long reclaim stalls."""
    r = valid(records, abi.EVENT_RECLAIM, stats)
    return [
        ReclaimEvent(ts_ns=ts, cgroup_id=cg, pid=pid, tid=tid, comm=comm, latency_ms=lat,
                     kind=enum_name(RECLAIM_KINDS, kind), nr_reclaimed=n, order=order)
        for ts, cg, pid, tid, comm, lat, kind, n, order in zip(
            *_head(r), _ms(r["latency_ns"]), r["kind"].tolist(), r["nr_reclaimed"].tolist(),
            r["order"].tolist(), strict=True)
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
    Keys absent from a snapshot are forgotten so memory follows the map's size. Values are
    Python ints (one counter per key) or numpy arrays (histograms, compared element-wise).
    """

    def __init__(self) -> None:
        self._prev: dict[Any, Any] = {}

    def delta(self, snapshot: dict[Any, Any]) -> dict[Any, Any]:
        out = {}
        prev_of = self._prev.get
        for key, cur in snapshot.items():
            prev = prev_of(key)
            if type(cur) is int:
                # The common case by far (a retransmit counter per flow, thousands of
                # flows under loss): numpy's any() on a scalar costs ~20x this.
                d = cur if prev is None or cur < prev else cur - prev
                if d:
                    out[key] = d
                continue
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
    snapshot = dict(zip(row_bytes(keys), counts.tolist(), strict=True))
    out = []
    for raw, n in differ.delta(snapshot).items():
        k = np.frombuffer(raw, dtype=abi.RETRANS_KEY)[0]
        out.append(
            RetransmitAggregate(
                ts_ns=ts_ns,
                cgroup_id=int(k["cgroup_id"]),
                conn=conn_tuple(k["flow"]),
                syn=bool(k["syn"]),
                count=n,
            )
        )
    return out
