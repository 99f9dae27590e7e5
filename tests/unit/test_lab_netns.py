"""NetnsPair: a real namespace reachable over a veth pair, and nothing left after exit."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time

import pytest

from llm_slo.lab import netns
from llm_slo.lab.naming import unique_name
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.workloads import echo_server_argv, wait_ready

pytestmark = pytest.mark.kernel
PREFIX = "llm-slo-t-netns"


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split(" ", 1)[0] for line in out.splitlines()]


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return [link["ifname"] for link in json.loads(out)]


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ping(addr: str, timeout: float = 2.0) -> bool:
    """One ICMP echo over a raw socket (no ping binary on this host); True on reply."""
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!HH", ident, 1) + b"llm-slo-lab"
    pkt = struct.pack("!BBH", 8, 0, _icmp_checksum(b"\x08\x00\0\0" + body)) + body
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        s.sendto(pkt, (addr, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data, (src, _) = s.recvfrom(2048)
            icmp = data[(data[0] & 0x0F) * 4:]
            if src == addr and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def test_pair_is_reachable_and_fully_removed() -> None:
    with NetnsPair(PREFIX) as pair:
        assert pair.ns.startswith(f"{PREFIX}-srv-")
        assert pair.ns in _netns_names()
        assert pair.host_if in _link_names()
        assert pair.host_addr.rsplit(".", 1)[0] == pair.ns_addr.rsplit(".", 1)[0]
        assert _ping(pair.ns_addr)
        srv = pair.run(echo_server_argv(pair.ns_addr), stdout=subprocess.PIPE)
        port = wait_ready(srv)
        # The server really runs in the other namespace.
        assert os.readlink(f"/proc/{srv.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with socket.create_connection((pair.ns_addr, port), timeout=2) as sock:
            sock.sendall(b"hello")
            assert sock.recv(16) == b"hello"
            # Traffic came from the root-side address of the veth.
            assert sock.getsockname()[0] == pair.host_addr
    assert srv.poll() is not None
    assert pair.ns not in _netns_names()
    assert pair.host_if not in _link_names()


def test_cleanup_when_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), NetnsPair(PREFIX) as pair:
        proc = pair.run(["sleep", "30"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert pair.ns not in _netns_names()
    assert pair.host_if not in _link_names()


def test_two_pairs_get_distinct_names_and_subnets() -> None:
    with NetnsPair(PREFIX) as a, NetnsPair(PREFIX) as b:
        assert a.ns != b.ns and a.host_if != b.host_if
        assert a.ns_addr != b.ns_addr


def test_cleanup_stale_spares_live_owner_unless_asked() -> None:
    # A prefix of its own: include_live must not hit a concurrent test session.
    prefix = unique_name(PREFIX)
    pair = NetnsPair(prefix).__enter__()  # simulate a run that never reached __exit__
    try:
        assert netns.cleanup_stale(prefix) == []  # owner (this process) is alive
        assert pair.ns in _netns_names()
        removed = netns.cleanup_stale(prefix, include_live=True)
        assert pair.ns in removed
        assert pair.ns not in _netns_names()
    finally:
        pair.close()
    assert pair.host_if not in _link_names()
