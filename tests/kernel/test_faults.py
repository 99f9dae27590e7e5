"""Faults: one probe failing (privilege, attach point, library) is reported by name while
the others keep running; the CLI says what is wrong in one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import jsonschema
import pytest

from llm_slo import contracts
from llm_slo.probes import ProbeSet
from llm_slo.probes import kernel as kernel_probes

pytestmark = pytest.mark.kernel

SLOCTL = [sys.executable, "-m", "llm_slo.cli"]


def test_absent_tracepoint_disables_only_that_probe(monkeypatch) -> None:
    """A tracepoint missing from kernel BTF fails its probe; the others load and run."""
    monkeypatch.setattr(kernel_probes.RunqueueDelay, "tracepoints",
                        ("sched_switch", "sched_no_such_tracepoint"))
    with ProbeSet(["runqueue_delay_ms", "connect_latency_ms"]) as probes:
        assert list(probes.probes) == ["connect_latency_ms"]
        reason = probes.failures["runqueue_delay_ms"]
        assert "runqueue_delay_ms" in reason and "sched_no_such_tracepoint" in reason
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", 1), timeout=1)
        records = []
        for _ in range(20):
            records += probes.poll(time.monotonic_ns())
            if records:
                break
            time.sleep(0.1)
        assert any(getattr(r, "outcome", None) == "refused" for r in records)


def test_missing_libssl_reported_others_run(monkeypatch) -> None:
    """No libssl anywhere: tls_handshake_ms is unavailable with that reason, DNS still runs."""
    monkeypatch.setattr(kernel_probes, "find_libssl", lambda: [])
    with ProbeSet(["tls_handshake_ms", "dns_latency_ms"]) as probes:
        assert "no libssl found" in probes.failures["tls_handshake_ms"]
        assert list(probes.probes) == ["dns_latency_ms"]


def test_missing_getaddrinfo_library_is_a_gap(monkeypatch) -> None:
    """No libc to probe: the wire layer of dns_latency_ms runs, the resolver gap is listed."""
    monkeypatch.setattr(kernel_probes, "find_libc", lambda: [])
    with ProbeSet(["dns_latency_ms"]) as probes:
        assert "dns_latency_ms" in probes.probes
        assert any("getaddrinfo" in g for g in probes.gaps()["dns_latency_ms"])


def test_without_bpf_privilege_watch_reports_each_probe() -> None:
    """Root without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN: every BPF probe names EPERM and the
    fix; /proc signals keep working; no traceback."""
    if not shutil.which("setpriv"):
        pytest.fail("setpriv (util-linux) is required")
    r = subprocess.run(
        ["setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin", "--inh-caps=-all",
         *SLOCTL, "probe", "watch", "--duration", "1", "--output", "jsonl",
         "--signals", "runqueue_delay_ms,connect_latency_ms,cpu_steal_pct"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    unavailable = [json.loads(line) for line in r.stderr.splitlines()
                   if '"signal unavailable"' in line]
    assert {u["signal"] for u in unavailable} == {"runqueue_delay_ms", "connect_latency_ms"}
    assert all("Operation not permitted" in u["reason"] and "CAP_BPF" in u["reason"]
               for u in unavailable)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events and {e["signal"] for e in events} == {"cpu_steal_pct"}


def test_bad_btf_file_is_a_clear_error(tmp_path) -> None:
    """--btf pointing nowhere is rejected before anything loads."""
    r = subprocess.run([*SLOCTL, "probe", "watch", "--btf", str(tmp_path / "missing.btf")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "missing.btf: no such file" in r.stderr and "Traceback" not in r.stderr


def test_watch_jsonl_events_follow_the_contract() -> None:
    """`sloctl probe watch --output jsonl` prints contract-valid ProbeEvents only on stdout,
    for real kernel events, and exits 0 through its clean shutdown after --duration."""
    def refused() -> None:
        time.sleep(1.5)
        for _ in range(3):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", 1), timeout=1)

    t = threading.Thread(target=refused)
    t.start()
    r = subprocess.run([*SLOCTL, "probe", "watch", "--duration", "4", "--output", "jsonl"],
                       capture_output=True, text=True, timeout=90)
    t.join()
    assert r.returncode == 0, r.stderr
    schema = json.loads(contracts.render("v1alpha1/probe-event.schema.json"))
    validator = jsonschema.Draft202012Validator(schema)
    events = [json.loads(line) for line in r.stdout.splitlines()]
    for ev in events:
        validator.validate(ev)
    assert any(e["signal"] == "connect_latency_ms" and e.get("outcome") == "refused"
               and e["pid"] == os.getpid() for e in events)
    assert {e["signal"] for e in events} >= {"runqueue_delay_ms", "cpu_steal_pct"}
    assert any(json.loads(line).get("event") == "done" for line in r.stderr.splitlines())


def test_full_ring_drops_are_counted(open_probe) -> None:
    """A ring too small for the event rate loses records, and every loss is counted."""
    from llm_slo.lab.workloads import cpu_hogs
    from llm_slo.probes.kernel import RunqueueDelay

    probe = open_probe(RunqueueDelay, ringbuf_bytes=4096, runq_slow_ms=0.000001,
                       runq_max_events_per_sec=1_000_000)
    with cpu_hogs(3, max_s=10):
        time.sleep(1.0)  # no draining meanwhile: a 4 KiB ring holds ~50 records
    received = len([r for r in probe.poll(time.monotonic_ns())
                    if type(r).__name__ == "RunqueueEvent"])
    dropped = probe.counters()["ringbuf_dropped"]
    assert 0 < received <= 4096 // 80 + 1
    assert dropped > 0
