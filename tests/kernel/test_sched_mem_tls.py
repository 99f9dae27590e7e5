"""runqueue_delay_ms, mem_reclaim_latency_ms and tls_handshake_ms, provoked for real:
CPU hogs in one cgroup delaying a victim in another, a memory-limited cgroup forced to
reclaim, and OpenSSL handshakes against a local TLS server."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from llm_slo.events import LatencyAggregate, ReclaimEvent, RunqueueEvent, TlsHandshakeEvent
from llm_slo.lab.cgroups import V1Cgroup, V2Cgroup, spawn_in
from llm_slo.lab.workloads import TlsServer, cpu_hogs
from llm_slo.probes.kernel import MemReclaimLatency, RunqueueDelay, TlsHandshake

pytestmark = pytest.mark.kernel


def _name(kind: str) -> str:
    return f"llm-slo-test-{kind}-{random.randint(0, 1 << 30)}"


@pytest.fixture
def two_cgroups() -> Iterator[tuple[V2Cgroup, V2Cgroup]]:
    with V2Cgroup(_name("victim")) as victim, V2Cgroup(_name("noisy")) as noisy:
        yield victim, noisy


# A request handler: ~2 ms of CPU work, then a 1 ms wait on I/O, over and over.
VICTIM = textwrap.dedent("""
    import time
    end = time.monotonic() + 10
    while time.monotonic() < end:
        busy = time.monotonic() + 0.002
        while time.monotonic() < busy:
            pass
        time.sleep(0.001)
""")


def _victim_waits(probe, victim_id: int, seconds: float) -> tuple[list, int, float]:
    """Poll for ``seconds``; all records, and the victim's wait count and mean (ms)."""
    records: list = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        records += probe.poll(time.monotonic_ns())
    aggs = [r for r in records if isinstance(r, LatencyAggregate) and r.cgroup_id == victim_id]
    waits = sum(r.count for r in aggs)
    return records, waits, sum(r.mean_ms * r.count for r in aggs) / max(waits, 1)


def test_noisy_neighbour_delay_charged_to_victim(open_probe, two_cgroups,
                                                 attach_mode: str) -> None:
    """Hogs in one cgroup make a busy/sleeping victim in another wait far longer than it
    did alone; the waits are charged to the victim's cgroup, with the hogs as the
    previous holders of the CPU."""
    probe = open_probe(RunqueueDelay, runq_slow_ms=2, runq_max_events_per_sec=50,
                       attach_mode=attach_mode)
    victim, noisy = two_cgroups
    victim_id, noisy_id = victim.id, noisy.id
    proc = spawn_in([victim], [sys.executable, "-S", "-c", VICTIM])
    try:
        _, calm_waits, calm_mean = _victim_waits(probe, victim_id, 2.0)
        with cpu_hogs(4, [noisy], max_s=30):
            records, waits, mean = _victim_waits(probe, victim_id, 3.0)
    finally:
        proc.kill()
        proc.wait()
    assert calm_waits > 100 and waits > 100, "the victim wakes often; waits must be counted"
    assert mean >= max(5 * calm_mean, 0.3), (
        f"4 hogs on 2 CPUs should delay the victim: {calm_mean:.3f} ms alone, {mean:.3f} ms"
    )
    slow = [r for r in records if isinstance(r, RunqueueEvent) and r.cgroup_id == victim_id]
    assert slow and all(r.pid == proc.pid for r in slow)
    # Whoever held the CPU before the victim ran: mostly the hogs' cgroup.
    assert sum(r.prev_cgroup_id == noisy_id for r in slow) >= len(slow) // 2
    assert any(isinstance(r, LatencyAggregate) and r.cgroup_id == noisy_id for r in records)


def test_slow_events_are_rate_limited(open_probe) -> None:
    """At most max_events_per_sec slow events per cgroup; the rest are counted."""
    probe = open_probe(RunqueueDelay, runq_slow_ms=0.001, runq_max_events_per_sec=5)
    with V2Cgroup(_name("rl")) as cg:
        cg_id = cg.id
        with cpu_hogs(3, [cg], max_s=30):
            time.sleep(1.5)
        records = probe.poll(time.monotonic_ns())
    slow = [r for r in records if isinstance(r, RunqueueEvent) and r.cgroup_id == cg_id]
    assert 1 <= len(slow) <= 5 * 3  # 1.5 s spans at most 3 one-second windows
    assert probe.counters()["rate_limited"] > 0


# Page cache charged to a 32 MiB memory cgroup: writing 160 MiB forces memcg reclaim.
FILL = textwrap.dedent("""
    import os, sys
    path = sys.argv[1]
    with open(path, "wb") as f:
        for _ in range(160):
            f.write(b"\\0" * (1 << 20))
    os.unlink(path)
""")


def test_memcg_reclaim_in_limited_cgroup(open_probe, collect, tmp_path,
                                         attach_mode: str) -> None:
    """A memory-limited cgroup filling the page cache stalls in memcg reclaim, per cgroup."""
    probe = open_probe(MemReclaimLatency, reclaim_slow_ms=0, attach_mode=attach_mode)
    with V2Cgroup(_name("mem")) as v2, \
            V1Cgroup("memory", _name("mem"), {"memory.limit_in_bytes": str(32 << 20)}) as v1:
        v2_id = v2.id
        proc = spawn_in([v1, v2], [sys.executable, "-S", "-c", FILL, str(tmp_path / "fill")])
        assert proc.wait(timeout=60) == 0
        records = collect(probe, lambda r: isinstance(r, LatencyAggregate)
                          and r.cgroup_id == v2_id)
    aggs = [r for r in records if isinstance(r, LatencyAggregate) and r.cgroup_id == v2_id]
    assert aggs and all(r.detail == "memcg" for r in aggs)
    assert sum(r.count for r in aggs) >= 5
    events = [r for r in records if isinstance(r, ReclaimEvent) and r.cgroup_id == v2_id]
    assert events and all(r.pid == proc.pid and r.kind == "memcg" for r in events)
    assert any(r.nr_reclaimed > 0 for r in events)


HANDSHAKE = textwrap.dedent("""
    import socket, ssl, sys
    ctx = ssl.create_default_context(cafile=sys.argv[3])
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:
                print("ok", tls.version(), flush=True)
        except ssl.SSLError as e:
            print("failed", e.reason, flush=True)
""")


def test_tls_handshake_time_and_failure(open_probe, collect, uprobe_loader: str) -> None:
    """A handshake the server delays by 300 ms is timed whole (within 20 %) for the client
    process; a handshake that fails verification is reported as failed."""
    probe = open_probe(TlsHandshake, attach_mode=uprobe_loader)
    with TlsServer("127.0.0.1", handshake_delay_s=0.3) as srv, V2Cgroup(_name("tls")) as cg:
        cg_id = cg.id
        ok = spawn_in([cg], [sys.executable, "-c", HANDSHAKE, str(srv.port), "localhost",
                             srv.cafile], stdout=subprocess.PIPE, text=True)
        assert ok.communicate(timeout=20)[0].startswith("ok")
        bad = spawn_in([cg], [sys.executable, "-c", HANDSHAKE, str(srv.port), "wrong.example",
                              srv.cafile], stdout=subprocess.PIPE, text=True)
        assert bad.communicate(timeout=20)[0].startswith("failed")
        records = collect(probe, lambda r: isinstance(r, TlsHandshakeEvent)
                          and r.pid == bad.pid)
    client = [r for r in records if isinstance(r, TlsHandshakeEvent) and r.pid == ok.pid]
    assert len(client) == 1
    ev = client[0]
    assert ev.outcome == "ok" and ev.cgroup_id == cg_id
    assert 300 <= ev.latency_ms <= 360 and ev.calls >= 1
    failed = [r for r in records if isinstance(r, TlsHandshakeEvent) and r.pid == bad.pid]
    assert [r.outcome for r in failed] == ["failed"]


def test_fast_handshakes_are_counted_but_not_streamed(open_probe, collect) -> None:
    """Below tls_slow_ms a completed handshake only enters its cgroup's histogram: a
    connection-per-request client would otherwise stream one record per request."""
    probe = open_probe(TlsHandshake, tls_slow_ms=100)
    with TlsServer("127.0.0.1") as srv, V2Cgroup(_name("tls-fast")) as cg:
        cg_id = cg.id
        fast = spawn_in([cg], [sys.executable, "-c", HANDSHAKE, str(srv.port), "localhost",
                               srv.cafile], stdout=subprocess.PIPE, text=True)
        assert fast.communicate(timeout=20)[0].startswith("ok")
        records = collect(probe, lambda r: isinstance(r, LatencyAggregate)
                          and r.cgroup_id == cg_id)
    assert not [r for r in records if isinstance(r, TlsHandshakeEvent) and r.pid == fast.pid]
    hist = [r for r in records if isinstance(r, LatencyAggregate) and r.cgroup_id == cg_id]
    assert sum(r.count for r in hist) == 1 and hist[0].max_ms < 100
