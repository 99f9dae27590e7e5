"""DnsServer answers real dig queries over UDP and TCP, late, wrongly or never."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_slo.lab.dns_server import DnsServer
from llm_slo.lab.dns_wire import DnsFormatError, build_response, parse_query

ANSWERS = {"model.svc.cluster.local": "10.0.0.7", "Upper.Example.": "10.0.0.8"}
dig_required = pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed")


def dig(port: int, name: str, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    """One dig query to 127.0.0.1:port, no retries (each query counted exactly once)."""
    return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "+tries=1",
                           "+time=2", *args], capture_output=True, text=True, timeout=timeout)


def status(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    return m.group(1) if m else ""


def query_ms(out: str) -> int:
    return int(re.search(r"Query time: (\d+) msec", out).group(1))


def make_query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


@dig_required
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_answers_over_udp_and_tcp(transport) -> None:
    with DnsServer(answers=ANSWERS) as dns:
        assert dns.port > 0
        r = dig(dns.port, "model.svc.cluster.local", transport)
        assert status(r.stdout) == "NOERROR"
        assert re.search(r"model\.svc\.cluster\.local\.\s+60\s+IN\s+A\s+10\.0\.0\.7", r.stdout)
        assert ("(TCP)" in r.stdout) == (transport == "+tcp")
        short = dig(dns.port, "upper.example", transport, "+short").stdout.split()
        assert short == ["10.0.0.8"]  # names match case-insensitively
        assert dns.queries_received == dns.queries_answered == 2


@dig_required
def test_nxdomain_nodata_and_servfail() -> None:
    with DnsServer(answers=ANSWERS) as dns:
        assert status(dig(dns.port, "nope.example").stdout) == "NXDOMAIN"
        r = dig(dns.port, "model.svc.cluster.local", "AAAA")
        assert status(r.stdout) == "NOERROR" and "ANSWER: 0" in r.stdout
        dns.rcode = 2  # mutable at runtime
        assert status(dig(dns.port, "model.svc.cluster.local").stdout) == "SERVFAIL"
        assert status(dig(dns.port, "model.svc.cluster.local", "+tcp").stdout) == "SERVFAIL"


@dig_required
def test_delay_measured_by_dig() -> None:
    with DnsServer(answers=ANSWERS) as dns:
        assert query_ms(dig(dns.port, "model.svc.cluster.local").stdout) < 100
        dns.delay_s = 0.2
        for transport in ("+notcp", "+tcp"):
            ms = query_ms(dig(dns.port, "model.svc.cluster.local", transport).stdout)
            assert 160 <= ms <= 240, ms


@dig_required
def test_drop_means_timeout() -> None:
    with DnsServer(answers=ANSWERS, drop=True) as dns:
        r = dig(dns.port, "model.svc.cluster.local", "+time=1")
        assert r.returncode == 9 and "timed out" in r.stdout
        assert dns.queries_received == 1 and dns.queries_answered == 0
        dns.drop = False
        assert status(dig(dns.port, "model.svc.cluster.local").stdout) == "NOERROR"


@dig_required
def test_concurrent_delayed_queries_overlap() -> None:
    with DnsServer(answers=ANSWERS, delay_s=0.5) as dns:
        t0 = time.monotonic()
        procs = [subprocess.Popen(["dig", "@127.0.0.1", "-p", str(dns.port),
                                   "model.svc.cluster.local", "+short", "+tries=1", "+time=3",
                                   "+tcp" if i % 2 else "+notcp"],
                                  stdout=subprocess.PIPE, text=True) for i in range(6)]
        outs = [p.communicate(timeout=5)[0].split() for p in procs]
        elapsed = time.monotonic() - t0
    assert outs == [["10.0.0.7"]] * 6
    assert 0.5 <= elapsed < 1.5  # serialized delays would take 3 s


def test_raw_udp_formerr_and_echoed_question() -> None:
    with DnsServer(answers=ANSWERS) as dns, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        bad = struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0)  # two questions
        s.sendto(bad, ("127.0.0.1", dns.port))
        resp = s.recv(512)
        assert resp[:2] == b"\x00\x07" and resp[3] & 0x0F == 1  # FORMERR
        query = make_query("model.svc.cluster.local", qid=99)
        s.sendto(query, ("127.0.0.1", dns.port))
        resp = s.recv(512)
        assert resp[12:len(query)] == query[12:]  # question echoed byte for byte
        assert resp[-4:] == socket.inet_aton("10.0.0.7")


def test_parse_and_build_round_trip() -> None:
    q = parse_query(make_query("a.b.example", qtype=28, qid=5))
    assert (q.id, q.qname, q.qtype, q.qclass) == (5, "a.b.example", 28, 1)
    resp = build_response(q, 0, ["192.0.2.1"])
    qid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", resp[:12])
    assert (qid, qd, an) == (5, 1, 1) and flags & 0x8000 and flags & 0x0100
    for broken in (b"", b"\0" * 11, make_query("x")[:-2], b"\0" * 4 + b"\0\1" + b"\0" * 6):
        with pytest.raises(DnsFormatError):
            parse_query(broken)


@given(st.binary(max_size=300))
def test_parser_rejects_garbage_cleanly(data) -> None:
    # Any input either parses into something answerable or raises DnsFormatError.
    try:
        q = parse_query(data)
    except DnsFormatError:
        return
    assert build_response(q, 3, [])[12:12 + len(q.wire)] == q.wire
