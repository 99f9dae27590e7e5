"""Workloads: CPU hogs burn CPU (and get throttled), echo and TLS servers work."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_slo.errors import LabError
from llm_slo.lab.cgroups import V1Cgroup, V2Cgroup
from llm_slo.lab.naming import unique_name
from llm_slo.lab.workloads import (
    TcpEchoServer,
    TlsServer,
    cpu_hogs,
    tls_client_handshake,
    wait_ready,
)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_cpu_hogs_burn_cpu_and_stop() -> None:
    with cpu_hogs(2) as hogs:
        time.sleep(0.3)
        assert all(_cpu_ticks(p.pid) > 0 for p in hogs)
    assert all(p.poll() is not None for p in hogs)


@pytest.mark.kernel
def test_cpu_hogs_in_quota_cgroup_get_throttled() -> None:
    with V2Cgroup(unique_name("llm-slo-t-wl")) as v2, \
            V1Cgroup("cpu", unique_name("llm-slo-t-wl"), {"cpu.cfs_quota_us": "10000"}) as cpu:
        with cpu_hogs(2, [v2, cpu]) as hogs:
            assert sorted(v2.pids()) == sorted(p.pid for p in hogs)
            time.sleep(0.5)
            stat = dict(line.split() for line in cpu.read("cpu.stat").splitlines())
        assert int(stat["nr_throttled"]) > 0
    assert not v2.path.exists() and not cpu.path.exists()


def test_tcp_echo_server() -> None:
    with TcpEchoServer() as srv, socket.create_connection(("127.0.0.1", srv.port), 2) as s:
        s.sendall(b"x" * 100_000)
        got = b""
        while len(got) < 100_000:
            got += s.recv(65536)
        assert got == b"x" * 100_000


def test_wait_ready_reports_dead_server() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE)
    try:
        with pytest.raises(LabError, match="echo server did not start"):
            wait_ready(proc, timeout=2)
    finally:
        proc.wait()
        proc.stdout.close()


def test_tls_handshake_fast_and_delayed() -> None:
    with TlsServer() as srv:
        assert Path(srv.cafile).read_text().startswith("-----BEGIN CERTIFICATE-----")
        fast = tls_client_handshake("127.0.0.1", srv.port, srv.cafile)
        assert fast < 0.5
        srv.handshake_delay_s = 0.3
        slow = tls_client_handshake("127.0.0.1", srv.port, srv.cafile)
        assert 0.3 <= slow < 1.5
        assert srv.handshakes == 2
        cert_dir = Path(srv.cafile).parent
    assert not cert_dir.exists()


def test_tls_handshake_uses_system_libssl() -> None:
    # A uprobe on libssl.so.3 SSL_do_handshake only sees us if Python's ssl uses it.
    assert ssl.OPENSSL_VERSION.startswith("OpenSSL 3")
    maps = Path(f"/proc/{os.getpid()}/maps").read_text()
    assert "libssl.so.3" in maps


def test_tls_rejects_untrusted_cert() -> None:
    with TlsServer() as a, TlsServer() as b, pytest.raises(ssl.SSLCertVerificationError):
        tls_client_handshake("127.0.0.1", a.port, b.cafile)


def test_tls_server_delay_param_and_quick_close() -> None:
    srv = TlsServer(handshake_delay_s=0.2)
    with srv:
        assert tls_client_handshake("localhost", srv.port, srv.cafile) >= 0.2
        srv.handshake_delay_s = 30  # a pending slow handshake must not block close()
        pending = socket.create_connection(("127.0.0.1", srv.port), 2)
        time.sleep(0.05)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 1.0
    pending.close()
