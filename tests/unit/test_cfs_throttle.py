"""Tests for the cgroup cpu.stat throttle reader (signal cfs_throttled_ms)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from llm_slo.cfs_throttle import (
    SIGNAL,
    CfsThrottleReader,
    CfsThrottleSample,
    CpuStat,
    detect_cpu_root,
    parse_cpu_stat,
    throttle_between,
)

V1_CPU_STAT = """\
nr_periods 120
nr_throttled 90
throttled_time 7123456789
nr_bursts 0
burst_time 0
"""

V2_CPU_STAT = """\
usage_usec 54764141
user_usec 36274931
system_usec 18489209
core_sched.force_idle_usec 0
nr_periods 120
nr_throttled 90
throttled_usec 7123456
nr_bursts 0
burst_usec 0
"""

# What the v2 root (or a v2 cgroup without the cpu controller) shows.
V2_NO_CPU_CONTROLLER = """\
usage_usec 54764141
user_usec 36274931
system_usec 18489209
nice_usec 0
"""

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_signal_name() -> None:
    assert SIGNAL == "cfs_throttled_ms"


def test_parse_v1() -> None:
    assert parse_cpu_stat(V1_CPU_STAT) == CpuStat(
        nr_periods=120, nr_throttled=90, throttled_ns=7123456789
    )


def test_parse_v2_converts_usec_to_ns() -> None:
    assert parse_cpu_stat(V2_CPU_STAT) == CpuStat(
        nr_periods=120, nr_throttled=90, throttled_ns=7123456000
    )


def test_parse_v2_without_cpu_controller_is_zero() -> None:
    assert parse_cpu_stat(V2_NO_CPU_CONTROLLER) == CpuStat(
        nr_periods=0, nr_throttled=0, throttled_ns=0
    )
    assert parse_cpu_stat("") == CpuStat(nr_periods=0, nr_throttled=0, throttled_ns=0)


def test_parse_ignores_unknown_keys() -> None:
    text = "wait_sum 99\nnr_periods 3\nsome_future_key 12\nnr_throttled 1\nthrottled_time 5\n"
    assert parse_cpu_stat(text) == CpuStat(nr_periods=3, nr_throttled=1, throttled_ns=5)


@pytest.mark.parametrize("line", ["nr_periods ten", "nr_throttled", "nr_periods 1 2"])
def test_parse_malformed_names_the_line(line: str) -> None:
    with pytest.raises(ValueError, match=line):
        parse_cpu_stat(f"nr_bursts 0\n{line}\n")


def test_throttle_between_hand_computed() -> None:
    prev = CpuStat(nr_periods=100, nr_throttled=10, throttled_ns=1_000_000_000)
    # 15 periods, 12 throttled, 1.2345 s more throttled time
    cur = CpuStat(nr_periods=115, nr_throttled=22, throttled_ns=2_234_500_000)
    assert throttle_between("/kubepods/pod1", prev, cur, 1.5) == CfsThrottleSample(
        cgroup_path="/kubepods/pod1",
        throttled_ms=1234.5,
        throttled_periods=12,
        periods=15,
        throttled_share=0.8,
        interval_s=1.5,
    )


def test_throttle_between_idle_cgroup_has_zero_share() -> None:
    stat = CpuStat(nr_periods=7, nr_throttled=3, throttled_ns=42)
    out = throttle_between("/a", stat, stat, 1.0)
    assert out is not None
    assert (out.throttled_ms, out.periods, out.throttled_share) == (0.0, 0, 0.0)


@pytest.mark.parametrize(
    "cur",
    [
        CpuStat(nr_periods=5, nr_throttled=10, throttled_ns=100),
        CpuStat(nr_periods=50, nr_throttled=5, throttled_ns=100),
        CpuStat(nr_periods=50, nr_throttled=10, throttled_ns=10),
    ],
)
def test_throttle_between_backwards_is_none(cur: CpuStat) -> None:
    prev = CpuStat(nr_periods=10, nr_throttled=10, throttled_ns=100)
    assert throttle_between("/a", prev, cur, 1.0) is None


def test_detect_prefers_v1_cpu_mount() -> None:
    assert detect_cpu_root(HYBRID_MOUNTINFO) == "/sys/fs/cgroup/cpu,cpuacct"


def test_detect_unescapes_mount_point() -> None:
    line = r"32 31 0:29 / /mnt/my\040cg rw - cgroup cg rw,cpu" + "\n"
    assert detect_cpu_root(line) == "/mnt/my cg"


def test_detect_cgroup2_with_cpu_controller(tmp_path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = f"41 31 0:38 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    assert detect_cpu_root(mountinfo) == str(tmp_path)


def test_detect_fails_without_cpu_controller(tmp_path) -> None:
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    mountinfo = (
        "34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n"
        f"41 31 0:38 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    )
    with pytest.raises(FileNotFoundError, match="cpu controller"):
        detect_cpu_root(mountinfo)


def _fake_tree(root, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_reader_primes_forgets_and_reports(tmp_path) -> None:
    _fake_tree(tmp_path, {"cpu.stat": V1_CPU_STAT, "pod/cpu.stat": V1_CPU_STAT})
    ticks = iter([1.0, 2.0, 3.0, 4.0, 5.0])
    reader = CfsThrottleReader(str(tmp_path), clock=lambda: next(ticks))
    assert reader.sample(["/", "pod", "/gone"]) == []  # first sight primes
    (tmp_path / "pod/cpu.stat").write_text(
        "nr_periods 130\nnr_throttled 95\nthrottled_time 7223456789\n"
    )
    out = reader.sample(["/pod/", "/"])
    assert [s.cgroup_path for s in out] == ["/pod", "/"]
    assert out[0].throttled_ms == pytest.approx(100.0)
    assert (out[0].periods, out[0].throttled_periods, out[0].throttled_share) == (10, 5, 0.5)
    # each cgroup is timed at its own read: /pod at 2.0 then 3.0, / at 1.0 then 4.0
    assert (out[0].interval_s, out[1].interval_s) == (1.0, 3.0)
    assert out[1].throttled_ms == 0.0
    # recreated cgroup: counters restart, no sample, new baseline
    (tmp_path / "pod/cpu.stat").write_text("nr_periods 1\nnr_throttled 0\nthrottled_time 0\n")
    assert reader.sample(["/pod"]) == []


def test_reader_raises_permission_error_with_file_name(tmp_path) -> None:
    _fake_tree(tmp_path, {"locked/cpu.stat": V1_CPU_STAT})
    os.chmod(tmp_path / "locked/cpu.stat", 0)
    reader = CfsThrottleReader(str(tmp_path))
    if os.geteuid() == 0:
        # root ignores file modes; a directory in place of the file still fails
        (tmp_path / "locked/cpu.stat").unlink()
        (tmp_path / "locked/cpu.stat").mkdir()
    with pytest.raises(OSError, match=r"locked/cpu\.stat"):
        reader.sample(["/locked"])


def test_discover_v1_and_v2_fixtures(tmp_path) -> None:
    _fake_tree(
        tmp_path,
        {
            "cpu.cfs_quota_us": "-1\n",
            "a/cpu.cfs_quota_us": "20000\n",
            "a/b/cpu.cfs_quota_us": "-1\n",
            "c/cpu.max": "50000 100000\n",
            "d/cpu.max": "max 100000\n",
            "e/cgroup.procs": "",
        },
    )
    assert CfsThrottleReader(str(tmp_path)).discover() == ["/a", "/c"]


# ---- real kernel -------------------------------------------------------------------

BUSY_LOOP = "while True: pass"


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


@pytest.fixture
def quota_cgroup() -> Iterator[tuple[str, str]]:
    """A cgroup limited to 20 % of one CPU holding one busy-looping child.

    Yields (controller root, relative path). Cleanup kills and reaps the child and
    removes the cgroup whatever the test did; nothing else is moved.
    """
    try:
        root = detect_cpu_root()
    except FileNotFoundError:
        pytest.skip("no cgroup cpu controller on this host")
    name = f"llm-slo-test-{secrets.token_hex(4)}"
    path = os.path.join(root, name)
    v2 = os.path.exists(os.path.join(root, "cgroup.controllers"))
    enabled_cpu = False
    child: subprocess.Popen[bytes] | None = None
    try:
        if v2:
            with open(os.path.join(root, "cgroup.subtree_control"), encoding="ascii") as f:
                if "cpu" not in f.read().split():
                    _write(os.path.join(root, "cgroup.subtree_control"), "+cpu")
                    enabled_cpu = True
        os.mkdir(path)
        if v2:
            _write(os.path.join(path, "cpu.max"), "20000 100000")
        else:
            _write(os.path.join(path, "cpu.cfs_period_us"), "100000")
            _write(os.path.join(path, "cpu.cfs_quota_us"), "20000")
        child = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        _write(os.path.join(path, "cgroup.procs"), str(child.pid))
        yield root, "/" + name
    finally:
        if child is not None:
            child.kill()
            child.wait(timeout=10)
        if os.path.isdir(path):
            # The cgroup may linger as busy for a moment after its last task exits.
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.1)
        if enabled_cpu:
            _write(os.path.join(root, "cgroup.subtree_control"), "-cpu")


@pytest.mark.kernel
def test_real_cgroup_is_throttled(quota_cgroup: tuple[str, str]) -> None:
    root, rel = quota_cgroup
    reader = CfsThrottleReader()
    assert os.path.normpath(reader.cpu_root) == os.path.normpath(root)
    assert rel in reader.discover()
    assert reader.sample([rel]) == []
    time.sleep(1.5)
    out = reader.sample([rel])
    assert len(out) == 1
    sample = out[0]
    assert sample.cgroup_path == rel
    assert sample.throttled_ms > 0
    assert sample.periods >= 10
    assert sample.throttled_share > 0.5
    assert 1.4 <= sample.interval_s <= 5.0
