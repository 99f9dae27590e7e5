"""Tests for the /proc/stat steal reader (signal cpu_steal_pct)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_slo.cpu_steal import (
    SIGNAL,
    CpuStealReader,
    CpuStealSample,
    CpuTimes,
    parse_proc_stat,
    steal_between,
)

# Shape of a 6.x /proc/stat (10 columns per cpu line, other keys after them).
MODERN = """\
cpu  3627 0 1814 200473 270 0 33 10 0 0
cpu0 671 0 566 101883 16 0 5 3 0 0
cpu1 2955 0 1248 98589 253 0 27 6 0 0
intr 136430 0 0 0 0 1
ctxt 278187
btime 1700000000
processes 4242
procs_running 1
procs_blocked 0
softirq 5000 1 2 3 4 5 6 7 8 9 10
"""

# 2.6.0 .. 2.6.10: seven columns, no steal.
OLD_7_COLUMNS = """\
cpu  100 2 30 1000 5 1 1
cpu0 100 2 30 1000 5 1 1
intr 1
"""


def _t(cpu: int, *, user: int = 0, idle: int = 0, steal: int = 0, iowait: int = 0) -> CpuTimes:
    return CpuTimes(cpu, user, 0, 0, idle, iowait, 0, 0, steal)


def test_signal_name() -> None:
    assert SIGNAL == "cpu_steal_pct"


def test_parse_modern_fixture() -> None:
    rows = parse_proc_stat(MODERN)
    assert [r.cpu for r in rows] == [-1, 0, 1]
    assert rows[0] == CpuTimes(-1, 3627, 0, 1814, 200473, 270, 0, 33, 10)
    assert rows[2].steal == 6
    # guest/guest_nice are inside user/nice and must not be in the total
    assert rows[0].total() == 3627 + 1814 + 200473 + 270 + 33 + 10


def test_parse_old_kernel_without_steal() -> None:
    rows = parse_proc_stat(OLD_7_COLUMNS)
    assert rows[0] == CpuTimes(-1, 100, 2, 30, 1000, 5, 1, 1, 0)
    assert rows[1].cpu == 0 and rows[1].steal == 0


def test_parse_four_column_kernel_fills_zeros() -> None:
    rows = parse_proc_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n")
    assert rows[1] == CpuTimes(0, 1, 2, 3, 4, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 x 4 5 6 7 8\n", "cpu0 1 2 x"),
        ("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2\n", "cpu0 1 2"),
        ("cpu  1 2 3 4 5 6 7 8\ncpuX 1 2 3 4 5 6 7 8\n", "cpuX"),
        ("cpu  1 2 3 4 5 6 7 8\ncpu0 1 -2 3 4 5 6 7 8\n", "cpu0 1 -2"),
        ("cpu  1 2 3 4 5 6 7 8\n\x00\x7f@@ garbage\n", "garbage"),
        ("cpu  1 2 3 4 5 6 7 8\ncpu  1 2 3 4 5 6 7 8\n", "cpu  1 2"),
    ],
)
def test_parse_garbage_names_the_line(text: str, bad: str) -> None:
    with pytest.raises(ValueError, match="line") as exc:
        parse_proc_stat(text)
    assert bad in str(exc.value)


def test_parse_without_aggregate_line_fails() -> None:
    with pytest.raises(ValueError, match="aggregate"):
        parse_proc_stat("intr 1\nctxt 2\n")
    with pytest.raises(ValueError):
        parse_proc_stat("")


def test_parse_real_proc_stat() -> None:
    with open("/proc/stat", encoding="ascii") as f:
        text = f.read()
    rows = parse_proc_stat(text)
    cpus = [r.cpu for r in rows]
    assert cpus[0] == -1
    assert cpus[1:] == sorted(cpus[1:]) and len(cpus) >= 2
    node, per_cpu = rows[0], rows[1:]
    assert all(v >= 0 for r in rows for v in (r.user, r.idle, r.steal))
    # The kernel sums the aggregate in a separate pass; allow a few ticks of drift.
    assert abs(node.steal - sum(r.steal for r in per_cpu)) <= 5 * len(per_cpu)


def test_real_proc_stat_has_steal() -> None:
    with open("/proc/stat", encoding="ascii") as f:
        node = parse_proc_stat(f.read())[0]
    if node.steal == 0:
        pytest.skip("no hypervisor steal clock on this host")
    assert node.steal > 0


def test_steal_between_hand_computed() -> None:
    prev = [_t(-1, user=100, idle=100, steal=0), _t(0, user=50, idle=50), _t(1, user=50, idle=50)]
    # cpu0: +30 user +60 idle +10 steal = 100 ticks, 10 % steal
    # cpu1: +75 user +25 steal = 100 ticks, 25 % steal
    # node: +105 user +60 idle +35 steal = 200 ticks, 17.5 % steal
    cur = [
        _t(-1, user=205, idle=160, steal=35),
        _t(0, user=80, idle=110, steal=10),
        _t(1, user=125, idle=50, steal=25),
    ]
    out = steal_between(prev, cur, 1.0)
    assert out == [
        CpuStealSample(cpu=-1, steal_pct=17.5, interval_s=1.0),
        CpuStealSample(cpu=0, steal_pct=10.0, interval_s=1.0),
        CpuStealSample(cpu=1, steal_pct=25.0, interval_s=1.0),
    ]


def test_steal_between_all_steal_and_no_steal() -> None:
    out = steal_between([_t(0, steal=5)], [_t(0, steal=15)], 0.5)
    assert out == [CpuStealSample(cpu=0, steal_pct=100.0, interval_s=0.5)]
    out = steal_between([_t(0, idle=5)], [_t(0, idle=15)], 0.5)
    assert out[0].steal_pct == 0.0


def test_steal_between_skips_hotplugged_cpus() -> None:
    prev = [_t(-1, idle=10), _t(0, idle=10), _t(1, idle=10)]
    cur = [_t(-1, idle=30, steal=2), _t(0, idle=18, steal=2), _t(2, idle=10)]
    out = steal_between(prev, cur, 1.0)
    # cpu1 went offline, cpu2 came online: only node and cpu0 remain
    assert [s.cpu for s in out] == [-1, 0]
    assert out[1].steal_pct == pytest.approx(20.0)


def test_steal_between_skips_counters_going_backwards() -> None:
    prev = [_t(-1, idle=100, steal=10), _t(0, idle=100, steal=10), _t(1, user=9, idle=100)]
    cur = [_t(-1, idle=200, steal=20), _t(0, idle=150, steal=5), _t(1, user=8, idle=150)]
    out = steal_between(prev, cur, 1.0)
    assert [s.cpu for s in out] == [-1]


def test_steal_between_tolerates_iowait_dip() -> None:
    # proc(5) documents that iowait may decrease; that must not drop the CPU.
    prev = [_t(0, idle=100, iowait=10, steal=0)]
    cur = [_t(0, idle=190, iowait=8, steal=10)]
    assert steal_between(prev, cur, 1.0)[0].steal_pct == pytest.approx(10.0)


def test_steal_between_skips_cpu_without_ticks() -> None:
    same = [_t(-1, idle=10), _t(0, idle=10)]
    assert steal_between(same, same, 0.001) == []


_counter = st.integers(min_value=0, max_value=2**40)


@st.composite
def _times_pair(draw: st.DrawFn) -> tuple[CpuTimes, CpuTimes]:
    before = [draw(_counter) for _ in range(8)]
    # mostly forward, sometimes backwards, to exercise the skip path too
    after = [max(0, b + draw(st.integers(min_value=-10, max_value=2**30))) for b in before]
    cpu = draw(st.integers(min_value=-1, max_value=255))
    return CpuTimes(cpu, *before), CpuTimes(cpu, *after)


@given(pairs=st.lists(_times_pair(), max_size=8), interval=st.floats(0.001, 3600))
def test_steal_pct_always_within_bounds(
    pairs: list[tuple[CpuTimes, CpuTimes]], interval: float
) -> None:
    prev = {p.cpu: p for p, _ in pairs}
    cur = {c.cpu: c for _, c in pairs}
    for s in steal_between(list(prev.values()), list(cur.values()), interval):
        assert 0.0 <= s.steal_pct <= 100.0
        assert s.interval_s == interval


def test_reader_with_fake_file_and_clock(tmp_path) -> None:
    path = tmp_path / "stat"
    path.write_text("cpu  0 0 0 100 0 0 0 0\ncpu0 0 0 0 100 0 0 0 0\n")
    ticks = iter([10.0, 12.5])
    reader = CpuStealReader(str(path), clock=lambda: next(ticks))
    assert reader.sample() == []
    path.write_text("cpu  0 0 0 190 0 0 0 10\ncpu0 0 0 0 190 0 0 0 10\n")
    out = reader.sample()
    assert out == [
        CpuStealSample(cpu=-1, steal_pct=10.0, interval_s=2.5),
        CpuStealSample(cpu=0, steal_pct=10.0, interval_s=2.5),
    ]


@pytest.mark.kernel
def test_reader_on_real_proc_stat() -> None:
    reader = CpuStealReader()
    assert reader.sample() == []
    time.sleep(1.0)
    out = reader.sample()
    with open("/proc/stat", encoding="ascii") as f:
        online = [r.cpu for r in parse_proc_stat(f.read())]
    assert [s.cpu for s in out] == online  # one per online CPU plus the node, sorted
    for s in out:
        assert 0.0 <= s.steal_pct <= 100.0
        assert 0.9 <= s.interval_s <= 5.0
