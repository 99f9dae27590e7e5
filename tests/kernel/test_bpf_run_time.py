"""What the lab charges the agent for its BPF programs: the programs a process holds,
found from its fds, and their kernel run time, which must grow as the hook fires; and
the per-program statistics read where the kernel keeps them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from llm_slo.bpf.libbpf import (
    BpfObject,
    enable_run_time_stats,
    held_prog_ids,
    prog_run_time_ns,
    prog_stats,
)
from llm_slo.probes.base import BpfProbe
from llm_slo.probes.kernel import ConnectLatency

pytestmark = pytest.mark.kernel


def _refused_connects(n: int) -> None:
    for _ in range(n):
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", 1))


def test_run_time_of_held_programs_grows_with_their_hook(open_probe) -> None:
    stats_fd = enable_run_time_stats()
    assert stats_fd is not None, "BPF_ENABLE_STATS needs CAP_SYS_ADMIN"
    try:
        before_open = held_prog_ids(os.getpid())
        open_probe(ConnectLatency, attach_mode="tp_btf")
        ours = held_prog_ids(os.getpid()) - before_open
        assert ours, "the probe's program is not among this process's fds"
        start = prog_run_time_ns(ours)
        assert set(start) == ours
        _refused_connects(200)
        grown = {p: ns - start[p] for p, ns in prog_run_time_ns(ours).items()}
        assert any(d > 0 for d in grown.values()), grown
    finally:
        os.close(stats_fd)


def test_gone_process_and_unloaded_program_count_nothing() -> None:
    assert held_prog_ids(2**22 + 12345) == set()  # above pid_max's ceiling: no such pid
    assert prog_run_time_ns({2**31 - 1}) == {}


def _fdinfo(fd: int) -> dict[str, str]:
    lines = Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def test_program_statistics_read_where_the_kernel_keeps_them(open_probe) -> None:
    """The run time, run count and skipped-run count we read from the program's info
    (fixed offsets in ``struct bpf_prog_info``) are the ones the kernel shows in the
    program fd's fdinfo, after the hook has run. Other TCP traffic on the machine may
    run the hook between the reads, so fdinfo must fall between two of ours. A skipped
    run cannot be provoked on purpose, so the skip count is usually 0 on both sides:
    that still fails an offset that lands on a field the kernel fills (the verified
    instruction count beside it), not one it leaves 0."""
    stats_fd = enable_run_time_stats()
    assert stats_fd is not None, "BPF_ENABLE_STATS needs CAP_SYS_ADMIN"
    try:
        probe = open_probe(ConnectLatency, attach_mode="tp_btf")
        _refused_connects(50)
        assert isinstance(probe, BpfProbe) and isinstance(probe.obj, BpfObject)
        prog = next(p for p in probe.obj.programs.values() if p.autoload)
        before = prog_stats(prog.fd)
        info = _fdinfo(prog.fd)
        after = prog_stats(prog.fd)
        kernel = (int(info["run_time_ns"]), int(info["run_cnt"]), int(info["recursion_misses"]))
        assert before.run_cnt >= 100, "two state changes a refused connect"
        assert all(b <= k <= a for b, k, a in zip(before, kernel, after, strict=True)), (
            before, kernel, after)
        assert "recursion_missed" in probe.counters()
    finally:
        os.close(stats_fd)
