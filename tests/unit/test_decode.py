"""Tests for llm_slo.decode: hand-built abi records -> signal Structs."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_slo import abi, decode
from llm_slo.events import ConnTuple

AF_INET, AF_INET6 = 2, 10
TCP, UDP = 6, 17
TGID, TID = 4242, 4243
PID_TGID = TGID << 32 | TID
# "api.example.com" IN A, as it sits on the wire after the 12-byte DNS header.
QUESTION = b"\x03api\x07example\x03com\x00" + b"\x00\x01" + b"\x00\x01"


def _mapped(ip: str) -> bytes:
    return bytes(10) + b"\xff\xff" + ipaddress.IPv4Address(ip).packed


def _addr(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return a.packed if a.version == 6 else _mapped(ip)


def _records(dtype: np.dtype[Any], n: int = 1, **hdr: Any) -> np.ndarray[Any, Any]:
    """n zeroed records of ``dtype`` with a valid header for ``kind``; overrides per field."""
    recs = np.zeros(n, dtype=dtype)
    h = recs["hdr"]
    h["version"] = abi.ABI_VERSION
    h["size"] = dtype.itemsize
    h["ts_ns"] = 1_000_000_000
    h["cgroup_id"] = 77
    h["pid_tgid"] = PID_TGID
    h["comm"] = b"curl"
    for name, value in hdr.items():
        h[name] = value
    return recs


def _set_flow(flow: Any, i: int, src: str, sport: int, dst: str, dport: int,
              *, family: int = AF_INET, protocol: int = TCP) -> None:
    flow["saddr"][i] = np.frombuffer(_addr(src), dtype=np.uint8)
    flow["daddr"][i] = np.frombuffer(_addr(dst), dtype=np.uint8)
    flow["sport"][i] = sport
    flow["dport"][i] = dport
    flow["family"][i] = family
    flow["protocol"][i] = protocol


def _cat(*parts: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Concatenate records keeping the padded dtype (np.concatenate would repack it)."""
    out = np.zeros(sum(len(p) for p in parts), dtype=parts[0].dtype)
    i = 0
    for p in parts:
        out[i : i + len(p)] = p
        i += len(p)
    return out


def _dns_record(question: bytes = QUESTION, **hdr: Any) -> np.ndarray[Any, Any]:
    hdr.setdefault("kind", abi.EVENT_DNS_RESPONSE)
    recs = _records(abi.DNS_EVENT, **hdr)
    _set_flow(recs["flow"], 0, "10.0.0.5", 53124, "10.0.0.2", 53, protocol=UDP)
    recs["latency_ns"] = 12_345_678
    recs["dns_id"] = 0xBEEF
    recs["rcode"] = 2
    recs["question_len"] = len(question)
    recs["question"][0, : len(question)] = np.frombuffer(question, dtype=np.uint8)
    return recs


# ---- DNS responses -------------------------------------------------------------------


def test_dns_event_fields() -> None:
    """A DNS response record decodes to exact qname, qtype, flow, latency and ids."""
    stats = decode.DecodeStats()
    (ev,) = decode.dns_events(_dns_record(), stats)
    assert ev.qname == "api.example.com"
    assert ev.qtype == 1
    assert ev.conn == ConnTuple(src_ip="10.0.0.5", dst_ip="10.0.0.2", src_port=53124,
                                dst_port=53, protocol="udp")
    assert ev.conn.canonical() == "10.0.0.5:53124->10.0.0.2:53/udp"
    assert ev.latency_ms == 12.345678
    assert (ev.pid, ev.tid) == (TGID, TID)
    assert ev.comm == "curl"
    assert (ev.ts_ns, ev.cgroup_id) == (1_000_000_000, 77)
    assert (ev.dns_id, ev.rcode) == (0xBEEF, 2)
    assert not ev.timeout and not ev.truncated
    assert stats.bad_records == {}


def test_dns_truncated_flag() -> None:
    """DNS_FLAG_TRUNCATED (0x2) sets ``truncated``; DNS_FLAG_TCP (0x1) alone does not."""
    recs = _cat(_dns_record(), _dns_record(), _dns_record())
    recs["flags"] = [0x1, 0x2, 0x3]
    evs = decode.dns_events(recs, decode.DecodeStats())
    assert [e.truncated for e in evs] == [False, True, True]


def test_dns_question_len_limits_the_parse() -> None:
    """Only ``question_len`` bytes are parsed; an oversized length is clamped, not fatal."""
    short = _dns_record()
    short["question_len"] = 8  # "\x03api\x07exa"
    huge = _dns_record()
    huge["question_len"] = 0xFFFF
    evs = decode.dns_events(_cat(short, huge), decode.DecodeStats())
    assert [(e.qname, e.qtype) for e in evs] == [("api.exa", 0), ("api.example.com", 1)]


def test_pid_tgid_split_and_full_comm() -> None:
    """pid is the upper 32 bits, tid the lower; a 16-byte comm without NUL survives whole."""
    rec = _dns_record(pid_tgid=0xFFFF_FFFE << 32 | 0xFFFF_FFFF, comm=b"abcdefghijklmnop")
    (ev,) = decode.dns_events(rec, decode.DecodeStats())
    assert (ev.pid, ev.tid) == (0xFFFF_FFFE, 0xFFFF_FFFF)
    assert ev.comm == "abcdefghijklmnop"


def test_ipv6_flow() -> None:
    """An AF_INET6 flow keeps its v6 addresses; canonical() brackets them."""
    rec = _dns_record()
    _set_flow(rec["flow"], 0, "2001:db8::5", 40000, "2001:db8::2", 53,
              family=AF_INET6, protocol=UDP)
    (ev,) = decode.dns_events(rec, decode.DecodeStats())
    assert (ev.conn.src_ip, ev.conn.dst_ip) == ("2001:db8::5", "2001:db8::2")
    assert ev.conn.canonical() == "[2001:db8::5]:40000->[2001:db8::2]:53/udp"


def test_v4_mapped_on_a_v6_socket_reads_as_ipv4() -> None:
    """A dual-stack (AF_INET6) socket talking IPv4 decodes to dotted-quad addresses."""
    rec = _dns_record()
    rec["flow"]["family"] = AF_INET6
    (ev,) = decode.dns_events(rec, decode.DecodeStats())
    assert (ev.conn.src_ip, ev.conn.dst_ip) == ("10.0.0.5", "10.0.0.2")


def test_unknown_protocol_is_its_number() -> None:
    """A protocol other than TCP/UDP is carried as its number."""
    rec = _dns_record()
    rec["flow"]["protocol"] = 132
    (ev,) = decode.dns_events(rec, decode.DecodeStats())
    assert ev.conn.protocol == "132"


@pytest.mark.parametrize(
    "field,value",
    [("kind", abi.EVENT_CONNECT), ("version", abi.ABI_VERSION + 1),
     ("size", abi.DNS_EVENT.itemsize - 8)],
)
def test_bad_header_is_dropped_and_counted(field: str, value: int) -> None:
    """A record with the wrong kind, version or size is dropped and counted per kind."""
    good, bad = _dns_record(), _dns_record()
    bad["hdr"][field] = value
    stats = decode.DecodeStats()
    evs = decode.dns_events(_cat(good, bad, good), stats)
    assert len(evs) == 2
    assert stats.bad_records == {f"kind{abi.EVENT_DNS_RESPONSE}": 1}


def test_decode_stats_accumulate() -> None:
    """DecodeStats adds up across calls and keeps reasons apart."""
    stats = decode.DecodeStats()
    bad = _dns_record(kind=0)
    decode.dns_events(bad, stats)
    decode.dns_events(_cat(bad, bad), stats)
    decode.tls_events(_records(abi.TLS_EVENT, kind=0), stats)
    assert stats.bad_records == {"kind1": 3, "kind5": 1}


def test_empty_batch() -> None:
    """An empty batch decodes to nothing and counts nothing."""
    stats = decode.DecodeStats()
    assert decode.dns_events(np.zeros(0, dtype=abi.DNS_EVENT), stats) == []
    assert stats.bad_records == {}


# ---- parse_question ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw,expected",
    [
        (QUESTION, ("api.example.com", 1)),
        (b"\x03api\x07example\x03com\x00\x00\x1c", ("api.example.com", 28)),
        (b"\x00\x00\x02\x00\x01", ("", 2)),  # root name, qtype NS
        (b"", ("", 0)),
        (b"\x03api\x00", ("api", 0)),  # qtype cut off entirely
        (b"\x03api\x00\x00", ("api", 0)),  # qtype cut off after one byte
        (b"\x03api\x07exa", ("api.exa", 0)),  # label cut short
        (b"\x03api\x07example", ("api.example", 0)),  # no terminator
        (b"\x03api\xc0\x0c\x00\x01", ("api", 0)),  # compression pointer ends the name
        (b"\xc0\x0c\x00\x01\x00\x01", ("", 0)),
        (b"\x03api\x40abc", ("api", 0)),  # extended label type (0x40) is not a length
    ],
)
def test_parse_question(raw: bytes, expected: tuple[str, int]) -> None:
    """Full, partial, truncated and compressed names parse to (qname, qtype)."""
    assert decode.parse_question(raw) == expected


def test_parse_question_non_ascii_label() -> None:
    """Non-ASCII label bytes become replacement characters instead of raising."""
    qname, qtype = decode.parse_question(b"\x02a\xff\x00\x00\x01")
    assert qname == "a\ufffd"
    assert qtype == 1


@given(st.binary(max_size=300))
def test_parse_question_never_raises(raw: bytes) -> None:
    """Any byte string parses to a str and a 16-bit qtype."""
    qname, qtype = decode.parse_question(raw)
    assert isinstance(qname, str)
    assert 0 <= qtype <= 0xFFFF


# ---- DNS timeouts --------------------------------------------------------------------

NOW = 50_000_000_000
TIMEOUT = 5_000_000_000


def _queries(ages_ns: list[int]) -> np.ndarray[Any, Any]:
    q = np.zeros(len(ages_ns), dtype=abi.DNS_QUERY)
    q["ts_ns"] = [NOW - a for a in ages_ns]
    q["cgroup_id"] = 77
    q["pid_tgid"] = PID_TGID
    q["comm"] = b"resolver"
    q["question_len"] = len(QUESTION)
    q["question"][:, : len(QUESTION)] = np.frombuffer(QUESTION, dtype=np.uint8)
    for i in range(len(ages_ns)):
        _set_flow(q["flow"], i, "10.0.0.5", 53124 + i, "10.0.0.2", 53, protocol=UDP)
    return q


def _keys(n: int) -> np.ndarray[Any, Any]:
    k = np.zeros(n, dtype=abi.DNS_QUERY_KEY)
    k["sock_cookie"] = 9
    k["dns_id"] = [0x1000 + i for i in range(n)]
    return k


def test_dns_timeouts_ages_only_old_entries() -> None:
    """Only queries older than the timeout become events; the mask marks exactly those."""
    ages = [TIMEOUT + 1, TIMEOUT - 1, 3 * TIMEOUT, 0, -1_000]  # the last is in the future
    events, mask = decode.dns_timeouts(_keys(len(ages)), _queries(ages), NOW, TIMEOUT)
    assert mask.dtype == np.bool_
    assert mask.tolist() == [True, False, True, False, False]
    assert [e.conn.src_port for e in events] == [53124, 53126]


def test_dns_timeout_event_fields() -> None:
    """A timed-out query carries its age, question, flow and ids, rcode -1 and timeout."""
    (ev,), _ = decode.dns_timeouts(_keys(1), _queries([6_000_000_000]), NOW, TIMEOUT)
    assert ev.timeout
    assert ev.ts_ns == NOW
    assert ev.latency_ms == 6000.0
    assert (ev.rcode, ev.dns_id) == (-1, 0x1000)  # the id from the map key
    assert (ev.qname, ev.qtype) == ("api.example.com", 1)
    assert ev.conn.canonical() == "10.0.0.5:53124->10.0.0.2:53/udp"
    assert (ev.pid, ev.tid, ev.comm, ev.cgroup_id) == (TGID, TID, "resolver", 77)


def test_dns_timeouts_empty() -> None:
    """No in-flight queries: no events and an empty mask."""
    events, mask = decode.dns_timeouts(_keys(0), np.zeros(0, dtype=abi.DNS_QUERY), NOW,
                                       TIMEOUT)
    assert events == []
    assert mask.shape == (0,)


# ---- other streamed records ----------------------------------------------------------


def test_connect_outcomes() -> None:
    """Outcomes 0..5 map to the CONNECT_OUTCOMES names; errno and SYN retransmits carried."""
    recs = _records(abi.CONNECT_EVENT, 6, kind=abi.EVENT_CONNECT)
    for i in range(6):
        _set_flow(recs["flow"], i, "10.0.0.5", 40000 + i, "10.0.0.9", 443)
    recs["outcome"] = range(6)
    recs["err"] = [0, 111, 110, 104, 113, 0]
    recs["syn_retrans"] = [0, 0, 6, 1, 2, 0]
    recs["latency_ns"] = 250_000_000
    evs = decode.connect_events(recs, decode.DecodeStats())
    assert [e.outcome for e in evs] == [
        "established", "refused", "timeout", "reset", "error", "aborted"]
    assert [e.errno for e in evs] == [0, 111, 110, 104, 113, 0]
    assert [e.syn_retransmits for e in evs] == [0, 0, 6, 1, 2, 0]
    assert evs[1].conn.canonical() == "10.0.0.5:40001->10.0.0.9:443/tcp"
    assert evs[0].latency_ms == 250.0
    assert (evs[0].pid, evs[0].tid, evs[0].comm) == (TGID, TID, "curl")


def test_tls_events() -> None:
    """TLS outcome and role indices map to names; calls and latency carried."""
    recs = _records(abi.TLS_EVENT, 3, kind=abi.EVENT_TLS_HANDSHAKE)
    recs["outcome"] = [0, 1, 0]
    recs["role"] = [0, 1, 2]
    recs["calls"] = [1, 4, 2]
    recs["latency_ns"] = [1_500_000, 2_000_000, 3_000_000]
    evs = decode.tls_events(recs, decode.DecodeStats())
    assert [(e.outcome, e.role, e.calls, e.latency_ms) for e in evs] == [
        ("ok", "unknown", 1, 1.5), ("failed", "client", 4, 2.0), ("ok", "server", 2, 3.0)]


def test_reclaim_events() -> None:
    """Reclaim kind names, pages reclaimed, allocation order and latency carried."""
    recs = _records(abi.RECLAIM_EVENT, 2, kind=abi.EVENT_RECLAIM)
    recs["kind"] = [0, 1]
    recs["nr_reclaimed"] = [32, 0]
    recs["order"] = [0, 3]
    recs["latency_ns"] = [7_000_000, 21_000_000]
    evs = decode.reclaim_events(recs, decode.DecodeStats())
    assert [(e.kind, e.nr_reclaimed, e.order, e.latency_ms) for e in evs] == [
        ("direct", 32, 0, 7.0), ("memcg", 0, 3, 21.0)]


def test_runqueue_events() -> None:
    """Run-queue delay, CPU and the previous holder's cgroup carried."""
    recs = _records(abi.RUNQ_EVENT, kind=abi.EVENT_RUNQ_SLOW)
    recs["delay_ns"] = 30_000_000
    recs["prev_cgroup_id"] = 99
    recs["cpu"] = 3
    (ev,) = decode.runqueue_events(recs, decode.DecodeStats())
    assert (ev.delay_ms, ev.prev_cgroup_id, ev.cpu) == (30.0, 99, 3)
    assert (ev.ts_ns, ev.cgroup_id, ev.pid, ev.tid) == (1_000_000_000, 77, TGID, TID)


def test_resolver_events() -> None:
    """getaddrinfo host, return code (negative EAI_*) and latency carried."""
    recs = _records(abi.RESOLVER_EVENT, 2, kind=abi.EVENT_DNS_RESOLVER)
    recs["host"] = [b"api.example.com", b"x" * abi.HOST_LEN]
    recs["ret"] = [0, -2]
    recs["latency_ns"] = [45_000_000, 1_000]
    evs = decode.resolver_events(recs, decode.DecodeStats())
    assert [(e.host, e.ret, e.latency_ms) for e in evs] == [
        ("api.example.com", 0, 45.0), ("x" * abi.HOST_LEN, -2, 0.001)]


# ---- histograms ----------------------------------------------------------------------


def _slots(**counts: int) -> np.ndarray[Any, Any]:
    s = np.zeros(abi.HIST_SLOTS, dtype=np.uint64)
    for k, v in counts.items():
        s[int(k[1:])] = v
    return s


def test_hist_aggregate() -> None:
    """count, mean, p99 (bucket upper bound 2**(slot+1) ns) and max bucket, hand-computed."""
    agg = decode.hist_aggregate("dns_latency_ms", 123, 77, _slots(s10=90, s12=9, s20=1),
                                250_000_000, detail="wire")
    assert agg is not None
    assert (agg.signal, agg.ts_ns, agg.cgroup_id, agg.detail) == ("dns_latency_ms", 123, 77,
                                                                  "wire")
    assert agg.count == 100
    assert agg.mean_ms == 2.5
    assert agg.p99_ms == 2**13 / 1e6  # 99th value is the last one in slot 12
    assert agg.max_ms == 2**21 / 1e6
    assert agg.failures == 0


@pytest.mark.parametrize(
    "slots,p99_slot,max_slot",
    [
        (_slots(s5=99, s30=1), 5, 30),
        (_slots(s5=98, s30=2), 30, 30),
        (_slots(s0=1), 0, 0),
        (_slots(s39=3), 39, 39),
    ],
)
def test_hist_aggregate_p99_bucket(slots: Any, p99_slot: int, max_slot: int) -> None:
    """p99 is the first bucket whose cumulative count reaches 99% of the total."""
    agg = decode.hist_aggregate("runqueue_delay_ms", 0, 1, slots, 0)
    assert agg is not None
    assert agg.p99_ms == 2 ** (p99_slot + 1) / 1e6
    assert agg.max_ms == 2 ** (max_slot + 1) / 1e6


def test_hist_aggregate_empty() -> None:
    """An interval with no observations yields None."""
    assert decode.hist_aggregate("dns_latency_ms", 0, 1, _slots(), 0) is None


# ---- Differ and retransmits ----------------------------------------------------------


def test_differ_first_snapshot_passes_through() -> None:
    """The first snapshot is its own delta, minus zero entries."""
    d = decode.Differ()
    assert d.delta({"a": 5, "b": 0, "c": 1}) == {"a": 5, "c": 1}


def test_differ_deltas_and_zero_omission() -> None:
    """Later snapshots yield increases only; unchanged keys are omitted."""
    d = decode.Differ()
    d.delta({"a": 5, "b": 3})
    assert d.delta({"a": 8, "b": 3}) == {"a": 3}
    assert d.delta({"a": 8, "b": 3}) == {}


def test_differ_shrunk_counter_is_a_new_entry() -> None:
    """A counter that went down was evicted and recreated: its current value is the delta."""
    d = decode.Differ()
    d.delta({"a": np.uint64(10)})
    assert d.delta({"a": np.uint64(4)}) == {"a": 4}
    assert d.delta({"a": np.uint64(6)}) == {"a": 2}


def test_differ_forgets_absent_keys() -> None:
    """A key missing from a snapshot is forgotten; when it returns it counts from zero."""
    d = decode.Differ()
    d.delta({"a": 10, "b": 1})
    assert d.delta({"b": 2}) == {"b": 1}
    assert d.delta({"a": 12, "b": 2}) == {"a": 12}


def test_differ_arrays() -> None:
    """Array values difference element-wise; any shrunk element makes the whole value new."""
    d = decode.Differ()
    d.delta({"k": np.array([1, 2, 3], dtype=np.uint64)})
    out = d.delta({"k": np.array([1, 5, 3], dtype=np.uint64)})
    assert out["k"].tolist() == [0, 3, 0]
    out = d.delta({"k": np.array([0, 6, 4], dtype=np.uint64)})
    assert out["k"].tolist() == [0, 6, 4]


def _retrans_keys(n: int) -> np.ndarray[Any, Any]:
    keys = np.zeros(n, dtype=abi.RETRANS_KEY)
    keys["cgroup_id"] = 77
    for i in range(n):
        _set_flow(keys["flow"], i, "10.0.0.5", 40000 + i, "10.0.0.9", 443)
    keys["syn"] = [i % 2 for i in range(n)]
    return keys


def test_retransmit_aggregates() -> None:
    """Per-flow counts become per-interval deltas; flows without new retransmits vanish."""
    keys = _retrans_keys(2)
    differ = decode.Differ()
    first = decode.retransmit_aggregates(keys, np.array([3, 1], dtype=np.uint64), differ, 10)
    assert [(a.conn.src_port, a.syn, a.count, a.ts_ns, a.cgroup_id) for a in first] == [
        (40000, False, 3, 10, 77), (40001, True, 1, 10, 77)]
    assert first[0].conn.canonical() == "10.0.0.5:40000->10.0.0.9:443/tcp"
    second = decode.retransmit_aggregates(keys, np.array([7, 1], dtype=np.uint64), differ, 20)
    assert [(a.conn.src_port, a.count, a.ts_ns) for a in second] == [(40000, 4, 20)]


# ---- robustness ----------------------------------------------------------------------

_DECODERS: list[tuple[np.dtype[Any], int, Callable[..., list[Any]]]] = [
    (abi.DNS_EVENT, abi.EVENT_DNS_RESPONSE, decode.dns_events),
    (abi.RESOLVER_EVENT, abi.EVENT_DNS_RESOLVER, decode.resolver_events),
    (abi.RUNQ_EVENT, abi.EVENT_RUNQ_SLOW, decode.runqueue_events),
    (abi.CONNECT_EVENT, abi.EVENT_CONNECT, decode.connect_events),
    (abi.TLS_EVENT, abi.EVENT_TLS_HANDSHAKE, decode.tls_events),
    (abi.RECLAIM_EVENT, abi.EVENT_RECLAIM, decode.reclaim_events),
]


@given(st.data())
@pytest.mark.parametrize("dtype,kind,decoder", _DECODERS,
                         ids=[d[2].__name__ for d in _DECODERS])
def test_arbitrary_bytes_only_drop(dtype: Any, kind: int, decoder: Any, data: Any) -> None:
    """Random bytes viewed as records never raise: each is decoded or counted as dropped."""
    n = data.draw(st.integers(0, 4))
    blob = data.draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    recs = np.frombuffer(blob, dtype=dtype).copy()
    # Give some records a valid header so the field decoding runs on random payloads too.
    forced = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    for i, force in enumerate(forced):
        if force:
            recs["hdr"]["kind"][i] = kind
            recs["hdr"]["version"][i] = abi.ABI_VERSION
            recs["hdr"]["size"][i] = dtype.itemsize
    hdr = recs["hdr"]
    expect = int(np.count_nonzero((hdr["kind"] == kind) & (hdr["version"] == abi.ABI_VERSION)
                                  & (hdr["size"] == dtype.itemsize)))
    stats = decode.DecodeStats()
    out = decoder(recs, stats)
    assert len(out) == expect
    assert sum(stats.bad_records.values()) == n - expect


@given(st.binary(min_size=0, max_size=3 * abi.DNS_QUERY.itemsize))
def test_dns_timeouts_arbitrary_bytes(blob: bytes) -> None:
    """Random in-flight query entries never make dns_timeouts raise."""
    n = len(blob) // abi.DNS_QUERY.itemsize
    q = np.frombuffer(blob[: n * abi.DNS_QUERY.itemsize], dtype=abi.DNS_QUERY).copy()
    events, mask = decode.dns_timeouts(_keys(n), q, NOW, TIMEOUT)
    assert len(events) == int(np.count_nonzero(mask))


def test_differ_int_counters_take_the_plain_path() -> None:
    """Python ints (retransmit counters): deltas, zero omission and an evicted entry
    recreated with a smaller count, without numpy."""
    d = decode.Differ()
    d.delta({"a": 10, "b": 2})
    out = d.delta({"a": 4, "b": 5})
    assert out == {"a": 4, "b": 3} and all(type(v) is int for v in out.values())
    assert d.delta({"a": 4, "b": 5}) == {}
