"""NftDrop: real packet loss on the way to a netns server, removed on exit."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from llm_slo.lab import nft
from llm_slo.lab._util import unique_name
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.nft import NftDrop, NftError
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


@pytest.mark.parametrize("kw", [{"percent": 101}, {"percent": -1}, {"dport": 0},
                                {"direction": "sideways"}, {"daddr": "not-an-ip"}])
def test_bad_arguments_rejected(kw) -> None:
    args = {"daddr": "127.0.0.1", "dport": 80, "percent": 10, **kw}
    with pytest.raises(ValueError):
        NftDrop(PREFIX, **args)
