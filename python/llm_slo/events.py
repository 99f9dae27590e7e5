"""Typed records of what the kernel saw, one Struct per signal, before identity.

Timestamps here are kernel ``CLOCK_MONOTONIC`` nanoseconds (``ts_ns``); the export stage
converts them to wall-clock once per batch. ``gc=False``: these are flat and numerous.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

SIGNALS = (
    "dns_latency_ms",
    "tcp_retransmits_total",
    "runqueue_delay_ms",
    "connect_latency_ms",
    "tls_handshake_ms",
    "cpu_steal_pct",
    "mem_reclaim_latency_ms",
    "cfs_throttled_ms",
)


class ConnTuple(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True):
    """A flow from the side of the local socket: src is local, dst is the peer."""

    src_ip: str
    dst_ip: str
    src_port: Port
    dst_port: Port
    protocol: str  # "tcp" | "udp"

    def canonical(self) -> str:
        """``src:port->dst:port/proto`` with IPv6 in brackets, the join key for spans."""
        src = f"[{self.src_ip}]" if ":" in self.src_ip else self.src_ip
        dst = f"[{self.dst_ip}]" if ":" in self.dst_ip else self.dst_ip
        return f"{src}:{self.src_port}->{dst}:{self.dst_port}/{self.protocol}"


class _Base(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    ts_ns: int
    cgroup_id: int
    pid: int = 0
    tid: int = 0
    comm: str = ""


class DnsEvent(_Base, frozen=True, kw_only=True, gc=False):
    """One DNS query on the wire: answered (with rcode) or timed out."""

    latency_ms: float
    dns_id: int
    rcode: int
    qname: str
    qtype: int
    conn: ConnTuple
    timeout: bool = False
    truncated: bool = False


class ResolverEvent(_Base, frozen=True, kw_only=True, gc=False):
    """One libc ``getaddrinfo`` call as the application waited for it."""

    latency_ms: float
    host: str
    ret: int


class RunqueueEvent(_Base, frozen=True, kw_only=True, gc=False):
    """A slow wait for a CPU by a runnable task (rate-limited per cgroup in the kernel)."""

    delay_ms: float
    prev_cgroup_id: int
    cpu: int


CONNECT_OUTCOMES = ("established", "refused", "timeout", "reset", "error", "aborted")


class ConnectEvent(_Base, frozen=True, kw_only=True, gc=False):
    """A TCP connect that failed or was slow."""

    latency_ms: float
    outcome: str
    errno: int
    syn_retransmits: int
    conn: ConnTuple


TLS_OUTCOMES = ("ok", "failed")
TLS_ROLES = ("unknown", "client", "server")


class TlsHandshakeEvent(_Base, frozen=True, kw_only=True, gc=False):
    """A whole OpenSSL handshake, first call to completion or to ``SSL_free``."""

    latency_ms: float
    outcome: str
    role: str
    calls: int


RECLAIM_KINDS = ("direct", "memcg")


class ReclaimEvent(_Base, frozen=True, kw_only=True, gc=False):
    """A direct or memcg reclaim stall in the allocating task."""

    latency_ms: float
    kind: str
    nr_reclaimed: int
    order: int


class LatencyAggregate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One interval of an in-kernel per-cgroup latency histogram.

    ``p99_ms`` is the upper bound of the log2 bucket holding the 99th percentile.
    ``detail`` tells sub-series apart (DNS wire/resolver, reclaim kind); ``failures``
    counts connects that did not establish.
    """

    signal: str
    ts_ns: int
    cgroup_id: int
    count: int
    mean_ms: float
    p99_ms: float
    max_ms: float
    detail: str = ""
    failures: int = 0


class RetransmitAggregate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Retransmitted segments of one flow in one interval, charged to the socket's cgroup."""

    ts_ns: int
    cgroup_id: int
    conn: ConnTuple
    syn: bool
    count: int


KernelRecord = (
    DnsEvent
    | ResolverEvent
    | RunqueueEvent
    | ConnectEvent
    | TlsHandshakeEvent
    | ReclaimEvent
    | LatencyAggregate
    | RetransmitAggregate
)
