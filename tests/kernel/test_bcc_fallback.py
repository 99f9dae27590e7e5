"""The BCC fallback loader, for kernels without BTF, forced here (this kernel has BTF).

The tracepoint probes run every test of test_tcp and test_sched_mem_tls with
``attach_mode="bcc"`` too (the ``attach_mode`` fixture), and TLS runs through
``uprobe_loader``; this file covers what only the fallback does: DNS from getaddrinfo
alone with the wire half reported as a gap, a whole probe set on BCC, and clear errors.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llm_slo.bpf.bcc import BccObject
from llm_slo.errors import ProbeError
from llm_slo.events import SIGNALS, LatencyAggregate, ResolverEvent
from llm_slo.lab.cgroups import V2Cgroup, spawn_in
from llm_slo.lab.dns_server import DnsServer
from llm_slo.probes import ProbeOptions, ProbeSet
from llm_slo.probes.kernel import DnsLatency, RunqueueDelay

pytestmark = pytest.mark.kernel

RESOLVE = textwrap.dedent("""
    import socket, sys
    socket.getaddrinfo(sys.argv[1], 443, socket.AF_INET, socket.SOCK_STREAM)
""")


def test_resolver_latency_without_wire_half(open_probe, collect, tmp_path: Path) -> None:
    """getaddrinfo against a DNS server that answers after 150 ms is timed for the
    calling process and its cgroup; the missing wire half is reported as a gap."""
    probe = open_probe(DnsLatency, dns_slow_ms=0, attach_mode="bcc")
    assert any("wire DNS" in g for g in probe.gaps)
    addr = "127.53.77.9"
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"nameserver {addr}\noptions ndots:1 attempts:1\n")
    with DnsServer(addr, 53, delay_s=0.15, answers={"vdb.lab.": "10.0.0.7"}), \
            V2Cgroup("llm-slo-test-bcc-dns") as cg:
        cg_id = cg.id
        proc = spawn_in([cg], ["unshare", "-m", "sh", "-c",
                               f"mount --bind {conf} /etc/resolv.conf && exec "
                               f"{sys.executable} -c '{RESOLVE}' vdb.lab"],
                        stderr=subprocess.PIPE, text=True)
        assert proc.wait(timeout=20) == 0, proc.stderr.read() if proc.stderr else ""
        records = collect(probe, lambda r: isinstance(r, ResolverEvent) and r.host == "vdb.lab")
        hists = collect(probe, lambda r: isinstance(r, LatencyAggregate) and r.cgroup_id == cg_id)
    ev = next(r for r in records if isinstance(r, ResolverEvent) and r.host == "vdb.lab")
    assert ev.ret == 0 and 150 <= ev.latency_ms < 1000 and ev.cgroup_id == cg_id
    agg = [r for r in records + hists if isinstance(r, LatencyAggregate)
           and r.cgroup_id == cg_id]
    assert agg and all(r.detail == "resolver" for r in agg)


def test_every_probe_opens_on_bcc(bcc_headers: str | None) -> None:
    """A whole probe set on the fallback: every BPF probe compiles, loads and attaches
    (the /proc readers are unchanged), and polls cleanly."""
    options = ProbeOptions(attach_mode="bcc", kernel_headers=bcc_headers)
    with ProbeSet(SIGNALS, options) as probes:
        assert probes.failures == {}
        bcc = [s for s, p in probes.probes.items() if isinstance(getattr(p, "obj", None),
                                                                 BccObject)]
        assert len(bcc) == 6
        probes.poll(0)
        assert all(set(c) >= {"ringbuf_dropped", "rate_limited", "map_full", "recursion_missed"}
                   for s, c in probes.counters().items() if s in bcc)
        assert set(probes.run_stats()) >= set(bcc)


def test_bad_header_tree_is_a_clear_error(bcc_headers: str | None, tmp_path: Path) -> None:
    """A header directory without kconfig.h fails that probe with the path named."""
    probe = RunqueueDelay(ProbeOptions(attach_mode="bcc", kernel_headers=str(tmp_path)))
    with pytest.raises(ProbeError, match=f"kernel headers {tmp_path}: no include/linux"):
        probe.open()
    probe.close()
