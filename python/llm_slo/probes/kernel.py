"""The six BPF-backed probes, one class per signal, named as everywhere else.

Each loads its CO-RE object, or on kernels without BTF the BCC fallback's source of the
same name (``bcc_tracepoints``/``bcc_features`` say what that one hooks).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from llm_slo import abi, decode
from llm_slo.bpf.bcc import BccObject
from llm_slo.bpf.libbpf import possible_cpus
from llm_slo.errors import AttachPointMissing, LlmSloError
from llm_slo.events import RECLAIM_KINDS, LatencyAggregate
from llm_slo.libraries import find_libc, find_libssl
from llm_slo.mounts import cgroup2_mount
from llm_slo.probes.base import AttachPoint, BpfProbe, LoadedObject, _ms

# BCC fallback: how long a failed connect waits for its error report before it counts
# as closed by the application (the report follows tcp_done() within microseconds).
ABORT_GRACE_NS = 1_000_000_000


def _settings(obj: LoadedObject, dtype: np.dtype[Any], **values: int) -> None:
    rec = np.zeros(1, dtype=dtype)
    for k, v in values.items():
        rec[k] = v
    obj.maps["settings"].update(b"\0" * 4, rec.tobytes())


class HistReader:
    """A per-cgroup histogram map -> per-interval :class:`LatencyAggregate` records.

    Values may be ``struct hist`` (optionally per-CPU) or ``struct connect_stats``, whose
    non-established outcomes become ``failures``. Keys are a cgroup id or a
    ``reclaim_key`` (whose kind becomes ``detail``).
    """

    def __init__(self, signal: str, map_name: str, key: np.dtype[Any], value: np.dtype[Any],
                 *, percpu: bool = False, detail: str = "") -> None:
        self.signal = signal
        self.map_name = map_name
        self.key = key
        self.value = value
        self.percpu = percpu
        self.detail = detail
        self.differ = decode.Differ()

    def read(self, obj: LoadedObject, now_ns: int) -> list[LatencyAggregate]:
        ncpus = possible_cpus() if self.percpu else 0
        keys, vals = obj.maps[self.map_name].read_all(self.key, self.value, ncpus)
        if self.percpu:
            vals = _sum_percpu(vals)
        if "outcomes" in self.value.names:  # connect_stats: outcome 0 is "established"
            hist, fails = vals["hist"], vals["outcomes"][:, 1:].sum(axis=1)
        else:
            hist, fails = vals, np.zeros(len(keys), dtype=np.uint64)
        snapshot = {
            k: np.concatenate([hist["slots"][i], [hist["sum_ns"][i], fails[i]]])
            for i, k in enumerate(decode.row_bytes(keys))
        }
        out = []
        for raw, d in self.differ.delta(snapshot).items():
            key = np.frombuffer(raw, dtype=self.key)[0]
            named = self.key.names is not None
            cgroup_id = int(key["cgroup_id"]) if named else int(key)
            detail = decode.enum_name(RECLAIM_KINDS, key["kind"]) if named else self.detail
            agg = decode.hist_aggregate(self.signal, now_ns, cgroup_id, d[:-2], int(d[-2]),
                                        detail)
            failures = int(d[-1])
            if agg is None and failures:
                agg = LatencyAggregate(signal=self.signal, ts_ns=now_ns, cgroup_id=cgroup_id,
                                       count=0, mean_ms=0.0, p99_ms=0.0, max_ms=0.0,
                                       detail=detail)
            if agg is not None:
                out.append(msgspec.structs.replace(agg, failures=failures) if failures else agg)
        return out


def _sum_percpu(vals: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.zeros(vals.shape[0], dtype=vals.dtype)
    for name in vals.dtype.names or ():
        out[name] = vals[name].sum(axis=1)
    return out


class RunqueueDelay(BpfProbe):
    """runqueue_delay_ms: per-cgroup wait-for-CPU histograms plus rate-limited slow waits."""

    signal = "runqueue_delay_ms"
    object_name = "runqueue_delay"
    tracepoints = ("sched_switch",)  # the wait's start: the kernel's sched_info stamp
    bcc_tracepoints = ("sched/sched_wakeup", "sched/sched_wakeup_new", "sched/sched_switch")
    rings = {"events": abi.RUNQ_EVENT}  # noqa: RUF012

    def configure(self, obj: LoadedObject) -> None:
        _settings(obj, abi.RUNQ_CONFIG, slow_ns=_ms(self.options.runq_slow_ms),
                  max_events_per_sec=self.options.runq_max_events_per_sec)
        self.hists = HistReader(self.signal, "runq_hists", abi.U64, abi.HIST, percpu=True)

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        events: list[Any] = decode.runqueue_events(self.drain("events"), self.stats)
        return events + self.hists.read(self.obj, now_ns)


class ConnectLatency(BpfProbe):
    """connect_latency_ms: active TCP connects with outcome; failed and slow ones streamed."""

    signal = "connect_latency_ms"
    object_name = "connect_latency"
    tracepoints = ("inet_sock_set_state",)
    bcc_tracepoints = ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb")
    bcc_features = {"HAVE_RETRANSMIT_ERR": "tcp/tcp_retransmit_skb:err",  # noqa: RUF012
                    "HAVE_RECEIVE_RESET": "tcp/tcp_receive_reset",
                    "HAVE_SK_ERROR_REPORT": "sock/inet_sk_error_report"}
    rings = {"events": abi.CONNECT_EVENT}  # noqa: RUF012

    def configure(self, obj: LoadedObject) -> None:
        _settings(obj, abi.CONNECT_CONFIG, slow_ns=_ms(self.options.connect_slow_ms))
        self.hists = HistReader(self.signal, "connect_stats", abi.U64, abi.CONNECT_STATS)

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        events: list[Any] = decode.connect_events(self.drain("events"), self.stats)
        if isinstance(self.obj, BccObject):
            events += self._aborted(now_ns)
        return events + self.hists.read(self.obj, now_ns)

    def _aborted(self, now_ns: int) -> list[Any]:
        """BCC fallback: failed connects that no error report claimed within a second
        were closed by the application (bpf/bcc/connect_latency.bcc.c)."""
        assert self.obj is not None
        parked = self.obj.maps["unreported"]
        keys, events = parked.read_all(np.dtype((np.void, parked.key_size)), abi.CONNECT_EVENT)
        old = np.flatnonzero((now_ns - events["hdr"]["ts_ns"].astype(np.int64))
                             >= ABORT_GRACE_NS)
        # Only what this delete took: a report may claim an entry between read and delete.
        taken = [i for i, k in zip(old, decode.row_bytes(keys[old]), strict=True)
                 if parked.delete(k)]
        return decode.connect_events(events[taken], self.stats)


class TcpRetransmits(BpfProbe):
    """tcp_retransmits_total: per socket-cgroup and flow counts, SYNs apart."""

    signal = "tcp_retransmits_total"
    object_name = "tcp_retransmits"
    tracepoints = ("tcp_retransmit_skb",)
    bcc_tracepoints = ("sock/inet_sock_set_state", "tcp/tcp_retransmit_skb")
    bcc_features = {"HAVE_RETRANSMIT_ERR": "tcp/tcp_retransmit_skb:err"}  # noqa: RUF012

    def configure(self, obj: LoadedObject) -> None:
        self.differ = decode.Differ()

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        keys, counts = self.obj.maps["retransmits"].read_all(abi.RETRANS_KEY, abi.U64)
        return list(decode.retransmit_aggregates(keys, counts, self.differ, now_ns))


class MemReclaimLatency(BpfProbe):
    """mem_reclaim_latency_ms: direct and memcg reclaim stalls per cgroup."""

    signal = "mem_reclaim_latency_ms"
    object_name = "mem_reclaim_latency"
    tracepoints = ("mm_vmscan_direct_reclaim_begin", "mm_vmscan_direct_reclaim_end",
                   "mm_vmscan_memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_end")
    bcc_tracepoints = tuple(f"vmscan/{tp}" for tp in tracepoints)
    rings = {"events": abi.RECLAIM_EVENT}  # noqa: RUF012

    def configure(self, obj: LoadedObject) -> None:
        _settings(obj, abi.RECLAIM_CONFIG, slow_ns=_ms(self.options.reclaim_slow_ms))
        self.hists = HistReader(self.signal, "reclaim_hists", abi.RECLAIM_KEY, abi.HIST)

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        events: list[Any] = decode.reclaim_events(self.drain("events"), self.stats)
        return events + self.hists.read(self.obj, now_ns)


def _uprobe_points(signal: str, libs: list[str], symbols: tuple[str, ...],
                   required: bool) -> list[AttachPoint]:
    if not libs:
        return [AttachPoint(signal, "uprobe", f"<no library>:{s}", False, required)
                for s in symbols]
    return [AttachPoint(signal, "uprobe", f"{lib}:{s}", True, required)
            for lib in libs for s in symbols]


class TlsHandshake(BpfProbe):
    """tls_handshake_ms: whole OpenSSL handshakes keyed by SSL*, on every libssl found."""

    signal = "tls_handshake_ms"
    object_name = "tls_handshake"
    rings = {"events": abi.TLS_EVENT}  # noqa: RUF012
    entries = (("SSL_do_handshake", "tls_do_handshake"), ("SSL_connect", "tls_connect"),
               ("SSL_accept", "tls_accept"))

    def attach_points(self) -> list[AttachPoint]:
        symbols = (*(s for s, _ in self.entries), "SSL_free")
        return _uprobe_points(self.signal, find_libssl(), symbols, True)

    def configure(self, obj: LoadedObject) -> None:
        _settings(obj, abi.TLS_CONFIG, slow_ns=_ms(self.options.tls_slow_ms))
        self.hists = HistReader(self.signal, "tls_hists", abi.U64, abi.HIST)

    def attach(self, obj: LoadedObject) -> None:
        libs = find_libssl()
        if not libs:
            raise AttachPointMissing(self.signal, "no libssl found on the host or in "
                                     "container roots; TLS handshakes cannot be timed")
        attached = 0
        for lib in libs:
            before = len(obj.links)
            try:
                for symbol, prog in self.entries:
                    obj.programs[prog].attach_uprobe(lib, symbol)
                    obj.programs["tls_handshake_ret"].attach_uprobe(lib, symbol, retprobe=True)
                obj.programs["tls_free"].attach_uprobe(lib, "SSL_free")
                attached += 1
            except LlmSloError as e:
                obj.detach_since(before)  # half-probed library: no partial handshakes
                self.gaps.append(f"{lib}: {e}")
        if not attached:
            raise AttachPointMissing(self.signal, "; ".join(self.gaps))

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        events: list[Any] = decode.tls_events(self.drain("events"), self.stats)
        return events + self.hists.read(self.obj, now_ns)


class DnsLatency(BpfProbe):
    """dns_latency_ms: wire queries matched in the kernel, plus libc getaddrinfo."""

    signal = "dns_latency_ms"
    object_name = "dns_latency"
    rings = {"events": abi.DNS_EVENT, "resolver_events": abi.RESOLVER_EVENT}  # noqa: RUF012
    bcc_rings = ("resolver_events",)
    cgroup_programs = ("dns_egress", "dns_ingress", "dns_connect4", "dns_connect6",
                       "dns_sendmsg4", "dns_sendmsg6")

    def attach_points(self) -> list[AttachPoint]:
        if self.uses_bcc():  # the fallback has the resolver half only
            return _uprobe_points(self.signal, find_libc(), ("getaddrinfo",), True)
        root = cgroup2_mount()
        points = [AttachPoint(self.signal, "cgroup", root or "<no cgroup2 mount>", bool(root),
                              True)]
        return points + _uprobe_points(self.signal, find_libc(), ("getaddrinfo",), False)

    def configure(self, obj: LoadedObject) -> None:
        _settings(obj, abi.DNS_CONFIG, slow_ns=_ms(self.options.dns_slow_ms),
                  sample_every=self.options.dns_sample_every,
                  max_slow_per_sec=self.options.dns_max_slow_per_sec)
        self.wire = (None if isinstance(obj, BccObject) else
                     HistReader(self.signal, "dns_hists", abi.U64, abi.HIST, detail="wire"))
        self.resolver = HistReader(self.signal, "resolver_hists", abi.U64, abi.HIST,
                                   detail="resolver")

    def attach(self, obj: LoadedObject) -> None:
        if isinstance(obj, BccObject):
            self.gaps.append("wire DNS (cgroup_skb): not in the BCC fallback; getaddrinfo "
                             "latency only")
        else:
            root = cgroup2_mount()
            if not root:
                raise AttachPointMissing(self.signal,
                                         "no cgroup2 mount to attach cgroup_skb to")
            for name in self.cgroup_programs:
                obj.programs[name].attach_cgroup(root)
        libs = find_libc()
        if not libs:
            self.gaps.append("getaddrinfo: no libc found; resolver latency unavailable")
        for lib in libs:
            before = len(obj.links)
            try:
                obj.programs["resolver_enter"].attach_uprobe(lib, "getaddrinfo")
                obj.programs["resolver_exit"].attach_uprobe(lib, "getaddrinfo", retprobe=True)
            except LlmSloError as e:
                obj.detach_since(before)
                self.gaps.append(f"getaddrinfo in {lib}: {e}")
        if not obj.links:  # BCC without a libc: nothing left to measure
            raise AttachPointMissing(self.signal, "; ".join(self.gaps))

    def poll(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        out: list[Any] = []
        if self.wire is not None:
            out += decode.dns_events(self.drain("events"), self.stats)
        out += decode.resolver_events(self.drain("resolver_events"), self.stats)
        if self.wire is not None:
            out += self._timeouts(now_ns) + self.wire.read(self.obj, now_ns)
        return out + self.resolver.read(self.obj, now_ns)

    def _timeouts(self, now_ns: int) -> list[Any]:
        assert self.obj is not None
        queries = self.obj.maps["dns_queries"]
        keys, vals = queries.read_all(abi.DNS_QUERY_KEY, abi.DNS_QUERY)
        if not len(keys):
            return []
        events, old = decode.dns_timeouts(keys, vals, now_ns,
                                          int(self.options.dns_timeout_s * 1e9))
        for k in decode.row_bytes(keys[old]):
            queries.delete(k)
        return list(events)


KERNEL_PROBES: tuple[type[BpfProbe], ...] = (
    DnsLatency, TcpRetransmits, RunqueueDelay, ConnectLatency, TlsHandshake, MemReclaimLatency,
)
