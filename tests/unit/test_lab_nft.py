"""NftDrop: real packet loss on the way to a netns server, removed on exit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_slo.lab import nft
from llm_slo.lab.naming import unique_name
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.nft import NftDrop, NftError
from llm_slo.lab.processes import run_cmd
from llm_slo.lab.workloads import echo_server_argv, wait_ready

PREFIX = "llm-slo-t-nft"


def _tables() -> list[str]:
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    return [e["table"]["name"] for e in json.loads(out.stdout)["nftables"] if "table" in e]


def _echo_transfer(addr: str, port: int, nbytes: int, timeout: float) -> int:
    """Send ``nbytes`` through the echo server and read them back; bytes returned."""
    data = bytes(range(256)) * (nbytes // 256)
    got = 0
    with socket.create_connection((addr, port), timeout=timeout) as sock:
        sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
        sender.start()
        while got < len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        sender.join(timeout)
    return got


@pytest.fixture
def echo_ns() -> Iterator[tuple[NetnsPair, int]]:
    with NetnsPair(PREFIX) as pair:
        srv = pair.run(echo_server_argv(pair.ns_addr), stdout=subprocess.PIPE)
        yield pair, wait_ready(srv)


@pytest.mark.kernel
def test_syn_drop_makes_connect_time_out_until_exit(echo_ns) -> None:
    pair, port = echo_ns
    with NftDrop(PREFIX, daddr=pair.ns_addr, dport=port, percent=100, syn_only=True) as drop:
        assert drop.table in _tables()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            socket.create_connection((pair.ns_addr, port), timeout=2).close()
        assert time.monotonic() - t0 >= 1.9
        assert drop.dropped() >= 2  # first SYN plus at least the 1 s retry
    assert drop.table not in _tables()
    with socket.create_connection((pair.ns_addr, port), timeout=2) as sock:
        sock.sendall(b"back")
        assert sock.recv(4) == b"back"


@pytest.mark.kernel
def test_random_drop_slows_but_bulk_transfer_completes(echo_ns) -> None:
    pair, port = echo_ns
    nbytes = 256 << 10
    with NftDrop(PREFIX, daddr=pair.ns_addr, dport=port, percent=30) as drop:
        assert _echo_transfer(pair.ns_addr, port, nbytes, timeout=15) == nbytes
        assert drop.dropped() > 0  # loss really happened; TCP recovered from it
    assert drop.table not in _tables()


# A connect from inside a namespace: "ok", or "timeout" when the SYNs go unanswered.
_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except TimeoutError:
    print("timeout")
"""


def _connect_from(pair: NetnsPair, addr: str, port: int, timeout: float = 2.0) -> str:
    argv = ["ip", "netns", "exec", pair.ns, sys.executable, "-S", "-c", _CONNECT, addr,
            str(port), str(timeout)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5,
                          check=True).stdout.strip()


@pytest.mark.kernel
def test_forward_drop_between_namespaces_matches_source() -> None:
    with NetnsPair(PREFIX) as a, NetnsPair(PREFIX) as b:
        for pair, peer in ((a, b), (b, a)):
            # Forwarding for packets arriving on our own veth only, rather than the
            # global net.ipv4.ip_forward: nothing to restore, it goes with the link.
            Path(f"/proc/sys/net/ipv4/conf/{pair.host_if}/forwarding").write_text("1")
            run_cmd(["ip", "-n", pair.ns, "route", "add", peer.ns_addr, "via",
                     pair.host_addr])
        srv = b.run(echo_server_argv(b.ns_addr, max_s=30), stdout=subprocess.PIPE)
        port = wait_ready(srv)
        assert _connect_from(a, b.ns_addr, port) == "ok"  # routed through this host
        with NftDrop(PREFIX, saddr=b.host_addr, daddr=b.ns_addr, dport=port, percent=100,
                     direction="forward"):
            assert _connect_from(a, b.ns_addr, port) == "ok"  # another source
        with NftDrop(PREFIX, saddr=a.ns_addr, daddr=b.ns_addr, dport=port, percent=100,
                     syn_only=True, direction="forward") as drop:
            assert _connect_from(a, b.ns_addr, port, timeout=1.2) == "timeout"
            # this host's own connects take the output hook, not forward
            socket.create_connection((b.ns_addr, port), timeout=2).close()
            assert drop.dropped() >= 1
        assert drop.table not in _tables()
        assert _connect_from(a, b.ns_addr, port) == "ok"


@pytest.mark.kernel
def test_nft_error_carries_nft_message() -> None:
    with pytest.raises(NftError, match="syntax error"):
        nft._nft("table inet llm-slo-t-nft-bad { this is not nft }\n")


@pytest.mark.kernel
def test_cleanup_stale_tables() -> None:
    # A prefix of its own: include_live must not hit a concurrent test session.
    prefix = unique_name(PREFIX)
    drop = NftDrop(prefix, daddr="127.0.0.9", dport=9, percent=50).__enter__()
    try:
        assert nft.cleanup_stale(prefix) == []  # owner alive
        assert nft.cleanup_stale(prefix, include_live=True) == [drop.table]
        assert drop.table not in _tables()
    finally:
        drop.close()  # tolerates the table being gone already


def test_rule_rendering() -> None:
    drop = NftDrop(PREFIX, daddr="10.253.1.2", dport=8080, percent=30, syn_only=True,
                   direction="both")
    script = drop._script()
    assert "hook output" in script and "hook input" in script
    assert ("ip daddr 10.253.1.2 meta l4proto tcp tcp dport 8080 "
            "tcp flags & (syn | ack) == syn numgen random mod 100 < 30 counter drop") in script
    v6 = NftDrop(PREFIX, daddr="fd00::/64", dport=None, percent=100)
    assert "ip6 daddr fd00::/64 meta l4proto tcp counter drop" in v6._script()
    assert "numgen" not in v6._script()
    fwd = NftDrop(PREFIX, saddr="10.253.4.2", daddr="10.253.5.2", dport=8443, percent=10,
                  direction="forward")
    script = fwd._script()
    assert "hook forward" in script and "hook output" not in script \
        and "hook input" not in script
    assert ("ip saddr 10.253.4.2 ip daddr 10.253.5.2 meta l4proto tcp tcp dport 8443 "
            "numgen random mod 100 < 10 counter drop") in script
    v6_src = NftDrop(PREFIX, saddr="fd00:1::1/64", daddr="fd00:2::7", dport=None,
                     percent=100, syn_only=True)
    assert ("ip6 saddr fd00:1::/64 ip6 daddr fd00:2::7 meta l4proto tcp "
            "tcp flags & (syn | ack) == syn counter drop") in v6_src._script()


@pytest.mark.parametrize("kw", [{"percent": 101}, {"percent": -1}, {"dport": 0},
                                {"direction": "sideways"}, {"daddr": "not-an-ip"},
                                {"saddr": "10.0.0.300"}, {"saddr": "fd00::1"}])
def test_bad_arguments_rejected(kw) -> None:
    args = {"daddr": "127.0.0.1", "dport": 80, "percent": 10, **kw}
    with pytest.raises(ValueError):
        NftDrop(PREFIX, **args)
