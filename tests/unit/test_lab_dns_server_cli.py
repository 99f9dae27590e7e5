"""The DNS server's subprocess mode: port line, JSON-lines control with acks, clean exits."""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_lab_dns import make_query  # sibling test module: the same query builder

from llm_slo.lab.dns_server import DnsServer, dns_server_argv
from llm_slo.lab.processes import stop_process
from llm_slo.lab.workloads import wait_ready

ANSWERS = {"model.svc.cluster.local": "10.0.0.7"}
DEFAULTS = {"delay_s": 0.0, "rcode": 0, "fail_rate": 1.0, "drop": False}


def ask(port: int, name: str, qid: int = 1, timeout: float = 2.0) -> tuple[int, list[str]]:
    """One UDP query; (rcode, A record addresses), or TimeoutError if unanswered."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        query = make_query(name, qid=qid)
        s.sendto(query, ("127.0.0.1", port))
        resp = s.recv(512)
    rid, flags, _, ancount, _, _ = struct.unpack("!HHHHHH", resp[:12])
    assert rid == qid
    # each A record is 16 bytes (name pointer, type, class, ttl, length, address)
    addrs = [socket.inet_ntoa(resp[len(query) + 16 * i + 12:len(query) + 16 * (i + 1)])
             for i in range(ancount)]
    return flags & 0xF, addrs


def timed_ask(port: int, name: str) -> tuple[float, int, list[str]]:
    t0 = time.monotonic()
    rcode, addrs = ask(port, name)
    return time.monotonic() - t0, rcode, addrs


class Controlled:
    """A DNS server subprocess and its control pipe."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.port = wait_ready(proc, timeout=10)

    def send(self, line: bytes | str | dict[str, Any], timeout: float = 5.0
             ) -> dict[str, Any]:
        """Write one command line, wait for its reply line."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        raw = line if isinstance(line, bytes) else \
            (line if isinstance(line, str) else json.dumps(line)).encode()
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no reply to {raw!r}"
        return json.loads(self.proc.stdout.readline())


@pytest.fixture
def dns() -> Iterator[Controlled]:
    proc = subprocess.Popen(dns_server_argv("127.0.0.1", 0, ANSWERS, max_s=60),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield Controlled(proc)
    finally:
        stop_process(proc)


def test_answers_and_acknowledged_delay(dns) -> None:
    took, rcode, addrs = timed_ask(dns.port, "model.svc.cluster.local")
    assert (rcode, addrs) == (0, ["10.0.0.7"]) and took < 0.1
    assert ask(dns.port, "nope.example")[0] == 3  # NXDOMAIN
    assert dns.send({"delay_s": 0.2}) == {**DEFAULTS, "delay_s": 0.2}
    took, rcode, addrs = timed_ask(dns.port, "model.svc.cluster.local")
    assert (rcode, addrs) == (0, ["10.0.0.7"]) and 0.19 <= took < 0.4, took
    assert dns.send({"delay_s": 0}) == DEFAULTS
    assert timed_ask(dns.port, "model.svc.cluster.local")[0] < 0.1


def test_fail_rate_mixes_servfail_and_answers_then_resets(dns) -> None:
    assert dns.send({"rcode": 2, "fail_rate": 0.5}) == {**DEFAULTS, "rcode": 2,
                                                        "fail_rate": 0.5}
    rcodes = [ask(dns.port, "model.svc.cluster.local", qid=i)[0] for i in range(60)]
    assert set(rcodes) == {0, 2}
    assert 15 <= rcodes.count(2) <= 45, rcodes.count(2)
    assert dns.send({"drop": True})["drop"] is True
    with pytest.raises(TimeoutError):
        ask(dns.port, "model.svc.cluster.local", timeout=0.3)
    assert dns.send({"delay_s": 0, "rcode": 0, "fail_rate": 0, "drop": False}) == \
        {**DEFAULTS, "fail_rate": 0.0}
    assert {ask(dns.port, "model.svc.cluster.local", qid=i)[0] for i in range(10)} == {0}


def test_bad_commands_get_an_error_line_and_change_nothing(dns) -> None:
    for bad in ('{"bogus": 1}', '{"delay_s": 0.1, "bogus": 1}', '{"rcode": 16}',
                '{"rcode": true}', '{"fail_rate": 1.5}', '{"drop": "yes"}',
                '{"delay_s": -1}', '{"delay_s": NaN}', "[1]", "not json", b"\xff{}"):
        reply = dns.send(bad)
        assert list(reply) == ["error"] and reply["error"], (bad, reply)
    assert "bogus" in dns.send('{"bogus": 1}')["error"]
    assert dns.send("{}") == DEFAULTS  # still running, nothing half-applied
    assert ask(dns.port, "model.svc.cluster.local") == (0, ["10.0.0.7"])


def test_eof_sigterm_and_max_s_exit_zero() -> None:
    argv = dns_server_argv("127.0.0.1", 0, ANSWERS, max_s=60)
    for ending in ("eof", "sigterm"):
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            port = wait_ready(proc, timeout=10)
            assert ask(port, "model.svc.cluster.local")[0] == 0
            if ending == "eof":
                assert proc.stdin is not None
                proc.stdin.close()
            else:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(3) == 0, ending
        finally:
            stop_process(proc)
    proc = subprocess.Popen(dns_server_argv("127.0.0.1", 0, ANSWERS, max_s=0.3),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        wait_ready(proc, timeout=10)
        assert proc.wait(3) == 0  # its own deadline, stdin still open
    finally:
        stop_process(proc)


def test_bad_answer_argument_is_a_usage_error() -> None:
    argv = [*dns_server_argv("127.0.0.1", 0, max_s=5), "--answer", "x.lab=10.0.0"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "NAME=IPV4" in r.stderr and r.stdout == ""


def test_in_process_fail_rate_is_seeded_and_validated() -> None:
    def pattern(seed: int) -> list[int]:
        with DnsServer(answers=ANSWERS, rcode=2, fail_rate=0.3, seed=seed) as srv:
            return [ask(srv.port, "model.svc.cluster.local", qid=i)[0] for i in range(40)]

    first = pattern(7)
    assert first == pattern(7) != pattern(8)
    assert set(first) == {0, 2}
    with DnsServer(answers=ANSWERS, rcode=2) as srv:  # default fail_rate 1.0: all fail
        assert {ask(srv.port, "model.svc.cluster.local", qid=i)[0] for i in range(5)} == {2}
        with pytest.raises(ValueError, match="fail_rate"):
            srv.configure(rcode=3, fail_rate=2)
        assert srv.settings() == {**DEFAULTS, "rcode": 2}
    with pytest.raises(ValueError, match="delay_s"):
        DnsServer(delay_s=-0.1)
