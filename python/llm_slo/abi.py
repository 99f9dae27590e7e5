"""numpy mirrors of the records in ``bpf/llm_slo.h``.

One dtype per C struct, with explicit offsets and sizes; ``tests/unit/test_abi.py``
checks every one against the BTF of the built objects, so the two sides cannot drift
silently. Decoders reject records whose ``kind``, ``version`` or ``size`` disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ABI_VERSION = 1
HIST_SLOTS = 40
DNS_QUESTION_LEN = 128
HOST_LEN = 64

EVENT_DNS_RESPONSE = 1
EVENT_DNS_RESOLVER = 2
EVENT_RUNQ_SLOW = 3
EVENT_CONNECT = 4
EVENT_TLS_HANDSHAKE = 5
EVENT_RECLAIM = 6

COUNTER_RINGBUF_DROPPED = 0
COUNTER_RATE_LIMITED = 1
COUNTER_MAP_FULL = 2
COUNTER_MAX = 4


def _struct(fields: list[tuple[str, Any, int]], size: int) -> np.dtype[Any]:
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": size,
        }
    )


EVENT_HEADER = _struct(
    [
        ("kind", "<u2", 0),
        ("version", "<u2", 2),
        ("size", "<u4", 4),
        ("ts_ns", "<u8", 8),
        ("cgroup_id", "<u8", 16),
        ("pid_tgid", "<u8", 24),
        ("comm", "S16", 32),
    ],
    48,
)

FLOW = _struct(
    [
        ("saddr", ("u1", 16), 0),
        ("daddr", ("u1", 16), 16),
        ("sport", "<u2", 32),
        ("dport", "<u2", 34),
        ("family", "<u2", 36),
        ("protocol", "u1", 38),
    ],
    40,
)

HIST = _struct(
    [("slots", ("<u8", HIST_SLOTS), 0), ("count", "<u8", 320), ("sum_ns", "<u8", 328)], 336
)

DNS_CONFIG = _struct([("slow_ns", "<u8", 0), ("sample_every", "<u4", 8),
                      ("max_slow_per_sec", "<u4", 12)], 16)

DNS_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("flow", FLOW, 48),
        ("latency_ns", "<u8", 88),
        ("dns_id", "<u2", 96),
        ("rcode", "u1", 98),
        ("flags", "u1", 99),
        ("question_len", "<u2", 100),
        ("question", ("u1", DNS_QUESTION_LEN), 104),
    ],
    232,
)

DNS_QUERY = _struct(
    [
        ("ts_ns", "<u8", 0),
        ("cgroup_id", "<u8", 8),
        ("pid_tgid", "<u8", 16),
        ("comm", "S16", 24),
        ("flow", FLOW, 40),
        ("question_len", "<u2", 80),
        ("flags", "u1", 82),
        ("question", ("u1", DNS_QUESTION_LEN), 88),
    ],
    216,
)

DNS_QUERY_KEY = _struct([("sock_cookie", "<u8", 0), ("dns_id", "<u2", 8)], 16)

RESOLVER_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("latency_ns", "<u8", 48),
        ("ret", "<i4", 56),
        ("host", f"S{HOST_LEN}", 64),
    ],
    128,
)

RETRANS_KEY = _struct([("cgroup_id", "<u8", 0), ("flow", FLOW, 8), ("syn", "u1", 48)], 56)

RUNQ_CONFIG = _struct([("slow_ns", "<u8", 0), ("max_events_per_sec", "<u4", 8)], 16)

RUNQ_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("delay_ns", "<u8", 48),
        ("prev_cgroup_id", "<u8", 56),
        ("cpu", "<u4", 64),
    ],
    72,
)

CONNECT_CONFIG = _struct([("slow_ns", "<u8", 0)], 8)

TLS_CONFIG = _struct([("slow_ns", "<u8", 0)], 8)

CONNECT_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("flow", FLOW, 48),
        ("latency_ns", "<u8", 88),
        ("err", "<i4", 96),
        ("outcome", "u1", 100),
        ("syn_retrans", "<u4", 104),
    ],
    112,
)

CONNECT_STATS = _struct([("hist", HIST, 0), ("outcomes", ("<u8", 8), 336)], 400)

TLS_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("ssl", "<u8", 48),
        ("latency_ns", "<u8", 56),
        ("calls", "<u4", 64),
        ("ret", "<i4", 68),
        ("outcome", "u1", 72),
        ("role", "u1", 73),
    ],
    80,
)

RECLAIM_CONFIG = _struct([("slow_ns", "<u8", 0)], 8)

RECLAIM_KEY = _struct([("cgroup_id", "<u8", 0), ("kind", "<u4", 8)], 16)

RECLAIM_EVENT = _struct(
    [
        ("hdr", EVENT_HEADER, 0),
        ("latency_ns", "<u8", 48),
        ("nr_reclaimed", "<u8", 56),
        ("kind", "<u4", 64),
        ("order", "<i4", 68),
    ],
    72,
)

U64 = np.dtype("<u8")

# C struct name -> dtype, for the BTF cross-check.
MIRRORS: dict[str, np.dtype[Any]] = {
    "event_header": EVENT_HEADER,
    "flow": FLOW,
    "hist": HIST,
    "dns_config": DNS_CONFIG,
    "dns_event": DNS_EVENT,
    "dns_query": DNS_QUERY,
    "dns_query_key": DNS_QUERY_KEY,
    "resolver_event": RESOLVER_EVENT,
    "retrans_key": RETRANS_KEY,
    "runq_config": RUNQ_CONFIG,
    "runq_event": RUNQ_EVENT,
    "connect_config": CONNECT_CONFIG,
    "connect_event": CONNECT_EVENT,
    "connect_stats": CONNECT_STATS,
    "tls_config": TLS_CONFIG,
    "tls_event": TLS_EVENT,
    "reclaim_config": RECLAIM_CONFIG,
    "reclaim_key": RECLAIM_KEY,
    "reclaim_event": RECLAIM_EVENT,
}
