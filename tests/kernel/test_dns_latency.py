"""dns_latency_ms on a real DNS server on loopback, with real clients (dig, libc)."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_slo.events import DnsEvent, LatencyAggregate, ResolverEvent
from llm_slo.lab.cgroups import V2Cgroup, spawn_in
from llm_slo.lab.dns_server import DnsServer
from llm_slo.probes.kernel import DnsLatency

pytestmark = pytest.mark.kernel


@pytest.fixture
def server_addr() -> str:
    # A random loopback address: port 53 must be ours, not a host resolver's.
    return f"127.53.{random.randint(1, 250)}.{random.randint(2, 250)}"


def dig(addr: str, name: str, *extra: str, cgroup: V2Cgroup | None = None,
        timeout_s: int = 3) -> subprocess.Popen[str]:
    argv = ["dig", f"@{addr}", "+tries=1", f"+time={timeout_s}", name, *extra]
    if cgroup is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    return spawn_in([cgroup], argv, stdout=subprocess.PIPE, text=True)


def test_udp_latency_pid_and_cgroup(open_probe, collect, server_addr: str) -> None:
    """A 200 ms answer is measured within 20 %, charged to the querying pid and cgroup."""
    probe = open_probe(DnsLatency, dns_slow_ms=0)
    with DnsServer(server_addr, 53, delay_s=0.2, answers={"api.lab.": "10.0.0.7"}) as srv, \
            V2Cgroup(f"llm-slo-test-dns-{random.randint(0, 1 << 30)}") as cg:
        cg_id = cg.id
        client = dig(server_addr, "api.lab", cgroup=cg)
        assert "10.0.0.7" in client.communicate(timeout=10)[0]
        records = collect(probe, lambda r: isinstance(r, DnsEvent) and r.qname == "api.lab")
        assert srv.queries_answered == 1
    ev = next(r for r in records if isinstance(r, DnsEvent) and r.qname == "api.lab")
    assert 160 <= ev.latency_ms <= 240
    assert (ev.rcode, ev.qtype, ev.timeout) == (0, 1, False)
    assert ev.pid == client.pid and ev.comm  # comm is the sending thread (isc-net-*)
    assert ev.cgroup_id == cg_id
    assert ev.conn.dst_ip == server_addr and ev.conn.dst_port == 53
    assert ev.conn.protocol == "udp"
    aggs = [r for r in records if isinstance(r, LatencyAggregate) and r.detail == "wire"
            and r.cgroup_id == cg_id]
    assert aggs and aggs[0].count == 1 and 160 <= aggs[0].mean_ms <= 240


def test_tcp_query_and_servfail(open_probe, collect, server_addr: str) -> None:
    """DNS over TCP is matched after the length prefix; SERVFAIL is reported as rcode 2."""
    probe = open_probe(DnsLatency, dns_slow_ms=0)
    with DnsServer(server_addr, 53, delay_s=0.05, rcode=2):
        dig(server_addr, "broken.lab", "+tcp").communicate(timeout=10)
        records = collect(probe, lambda r: isinstance(r, DnsEvent) and r.qname == "broken.lab")
    ev = next(r for r in records if isinstance(r, DnsEvent) and r.qname == "broken.lab")
    assert ev.conn.protocol == "tcp" and ev.rcode == 2
    assert 40 <= ev.latency_ms <= 200


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_ipv6_query(open_probe, collect, proto: str) -> None:
    """Over IPv6 (::1) the port check and parse find the query and its answer too."""
    probe = open_probe(DnsLatency, dns_slow_ms=0)
    name = f"v6-{proto}.lab"
    with DnsServer("::1", 53, delay_s=0.05, answers={f"{name}.": "10.0.0.9"}):
        out = dig("::1", name, *(["+tcp"] if proto == "tcp" else [])).communicate(timeout=10)
        assert "10.0.0.9" in out[0]
        records = collect(probe, lambda r: isinstance(r, DnsEvent) and r.qname == name)
    ev = next(r for r in records if isinstance(r, DnsEvent) and r.qname == name)
    assert ev.conn.dst_ip == "::1" and ev.conn.protocol == proto and ev.rcode == 0
    assert 40 <= ev.latency_ms <= 200


def test_unanswered_query_is_a_timeout(open_probe, collect, server_addr: str) -> None:
    """A query the server never answers is aged out of the kernel map as a timeout."""
    probe = open_probe(DnsLatency, dns_slow_ms=0, dns_timeout_s=1.0)
    with DnsServer(server_addr, 53, drop=True) as srv:
        dig(server_addr, "void.lab", timeout_s=1).communicate(timeout=10)
        records = collect(probe, lambda r: isinstance(r, DnsEvent) and r.timeout)
        assert srv.queries_received >= 1
    ev = next(r for r in records if isinstance(r, DnsEvent) and r.timeout)
    assert ev.qname == "void.lab" and ev.latency_ms >= 1000


def test_loaded_probe_never_drops_traffic(open_probe, collect, server_addr: str) -> None:
    """With the cgroup_skb programs attached, 300 queries get 300 answers."""
    open_probe(DnsLatency, dns_slow_ms=0)
    with DnsServer(server_addr, 53, answers={"x.lab.": "10.0.0.1"}) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(2)
        answered = 0
        for qid in range(300):
            query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x01x\x03lab\x00" + \
                struct.pack(">HH", 1, 1)
            sock.sendto(query, (server_addr, 53))
            reply, _ = sock.recvfrom(512)
            answered += struct.unpack(">H", reply[:2])[0] == qid
        sock.close()
        assert answered == 300 and srv.queries_received == 300


RESOLVE = textwrap.dedent("""
    import socket, sys
    socket.getaddrinfo(sys.argv[1], 443, socket.AF_INET, socket.SOCK_STREAM)
""")


def test_getaddrinfo_includes_search_path(open_probe, collect, server_addr: str,
                                          tmp_path: Path) -> None:
    """libc resolver latency covers ndots search expansion: two delayed queries, not one."""
    probe = open_probe(DnsLatency, dns_slow_ms=0)
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {server_addr}\nsearch ns1.svc.lab\noptions ndots:5 attempts:1\n")
    with DnsServer(server_addr, 53, delay_s=0.1, answers={"api.lab.": "10.0.0.9"}):
        # A private mount namespace sees our resolv.conf; libc is the same inode.
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c",
             f"mount --bind {conf} /etc/resolv.conf && exec {sys.executable} -c '{RESOLVE}' "
             "api.lab"], capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, proc.stderr
        records = collect(probe, lambda r: isinstance(r, ResolverEvent) and r.host == "api.lab")
    res = next(r for r in records if isinstance(r, ResolverEvent) and r.host == "api.lab")
    wire = [r for r in records if isinstance(r, DnsEvent) and r.qname.startswith("api.lab")]
    names = {r.qname for r in wire}
    assert "api.lab.ns1.svc.lab" in names and "api.lab" in names  # search list tried first
    assert res.ret == 0 and res.latency_ms >= 190  # >= two 100 ms round trips
    assert res.latency_ms >= max(r.latency_ms for r in wire)


BURST = textwrap.dedent("""
    import socket, struct, sys
    addr, name, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    qname = b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\\0"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for qid in range(n):
        sock.sendto(struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname
                    + struct.pack(">HH", 1, 1), (addr, 53))
        sock.recvfrom(512)
""")


def test_slow_answers_stream_within_a_per_cgroup_budget(open_probe, collect,
                                                         server_addr: str) -> None:
    """Every answer "slow" (dns_slow_ms 0), a budget of 10 a second: of a burst of 100
    answers one cgroup streams at most the budget of the seconds the burst touched, the
    histogram still counts all 100 and the rest are counted as rate_limited. SERVFAILs
    of the same cgroup in the same seconds all stream: failures never wait."""
    probe = open_probe(DnsLatency, dns_slow_ms=0, dns_max_slow_per_sec=10)
    fail_addr = server_addr.rsplit(".", 1)[0] + f".{int(server_addr.rsplit('.', 1)[1]) % 250 + 1}"
    with DnsServer(server_addr, 53, answers={"x.lab.": "10.0.0.1"}) as ok_srv, \
            DnsServer(fail_addr, 53, rcode=2) as fail_srv, \
            V2Cgroup(f"llm-slo-test-dns-{random.randint(0, 1 << 30)}") as cg:
        cg_id = cg.id
        started = time.monotonic()
        for addr, name, n in ((server_addr, "x.lab", 100), (fail_addr, "bad.lab", 30)):
            proc = spawn_in([cg], [sys.executable, "-c", BURST, addr, name, str(n)])
            assert proc.wait(timeout=20) == 0
        seconds = time.monotonic() - started
        records = collect(probe, lambda r: False, timeout=1.5)
        assert (ok_srv.queries_answered, fail_srv.queries_received) == (100, 30)
    mine = [r for r in records if getattr(r, "cgroup_id", None) == cg_id]
    ok = [r for r in mine if isinstance(r, DnsEvent) and r.qname == "x.lab"]
    failed = [r for r in mine if isinstance(r, DnsEvent) and r.qname == "bad.lab"]
    budget = 10 * (int(seconds) + 2)  # every one-second window the burst may touch
    assert 10 <= len(ok) <= budget, (len(ok), seconds)
    assert len(failed) == 30 and all(r.rcode == 2 for r in failed)
    wire = [r for r in mine if isinstance(r, LatencyAggregate) and r.detail == "wire"]
    assert sum(r.count for r in wire) == 130
    assert probe.counters()["rate_limited"] >= 100 - len(ok)
