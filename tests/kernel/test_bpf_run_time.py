"""What the lab charges the agent for its BPF programs: the programs a process holds,
found from its fds, and their kernel run time, which must grow as the hook fires."""

from __future__ import annotations

import os
import socket

import pytest

from llm_slo.bpf.libbpf import enable_run_time_stats, held_prog_ids, prog_run_time_ns
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
