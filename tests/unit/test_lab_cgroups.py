"""V1Cgroup/V2Cgroup/spawn_in: processes land in real cgroups; nothing is left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from llm_slo.errors import LabError
from llm_slo.lab import cgroups
from llm_slo.lab.cgroups import V1Cgroup, V2Cgroup, cgroup1_mount, cgroup2_mount, spawn_in
from llm_slo.lab.naming import unique_name

pytestmark = pytest.mark.kernel
PREFIX = "llm-slo-t-cg"


def _cgroup_lines(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cgroup").read_text().splitlines()


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    try:
        proc.wait(2.0)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_mounts_detected_from_mountinfo() -> None:
    assert (cgroup2_mount() / "cgroup.controllers").exists()
    assert (cgroup1_mount("cpu") / "cpu.cfs_quota_us").exists()
    assert (cgroup1_mount("memory") / "memory.limit_in_bytes").exists()


def test_spawn_in_v2_cgroup_and_removal() -> None:
    name = unique_name(PREFIX)
    with V2Cgroup(name) as cg:
        assert cg.path == cgroup2_mount() / name
        assert cg.id == os.stat(cg.path).st_ino
        proc = spawn_in([cg], ["sleep", "30"])
        assert f"0::/{name}" in _cgroup_lines(proc.pid)
        assert cg.pids() == [proc.pid]
    assert not cg.path.exists()
    assert _gone(proc)  # kill_members=True is the default


def test_v1_settings_and_joint_spawn() -> None:
    with V2Cgroup(unique_name(PREFIX)) as v2, \
            V1Cgroup("cpu", unique_name(PREFIX), {"cpu.cfs_quota_us": "20000"}) as cpu, \
            V1Cgroup("memory", unique_name(PREFIX),
                     {"memory.limit_in_bytes": str(64 << 20)}) as mem:
        assert cpu.read("cpu.cfs_quota_us").strip() == "20000"
        assert int(mem.read("memory.limit_in_bytes")) == 64 << 20
        proc = spawn_in([v2, cpu, mem], ["sleep", "30"])
        lines = _cgroup_lines(proc.pid)
        assert f"0::/{v2.name}" in lines
        assert any(line.endswith(f":cpu:/{cpu.name}") for line in lines)
        assert any(line.endswith(f":memory:/{mem.name}") for line in lines)
    for cg in (v2, cpu, mem):
        assert not cg.path.exists()
    assert _gone(proc)


def test_removed_even_when_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), \
            V2Cgroup(unique_name(PREFIX)) as v2, \
            V1Cgroup("cpu", unique_name(PREFIX), {"cpu.cfs_quota_us": "50000"}) as cpu:
        proc = spawn_in([v2, cpu], ["sleep", "30"])
        raise RuntimeError("boom")
    assert not v2.path.exists() and not cpu.path.exists()
    assert _gone(proc)


def test_keep_members_moves_them_to_parent() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        with V2Cgroup(unique_name(PREFIX), kill_members=False) as cg:
            cg.add(proc.pid)
            assert cg.pids() == [proc.pid]
        assert not cg.path.exists()
        assert proc.poll() is None  # survived, now in the parent (the root here)
        assert "0::/" in _cgroup_lines(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_bad_setting_fails_and_cleans_up() -> None:
    name = unique_name(PREFIX)
    with pytest.raises(LabError, match=r"cpu\.cfs_quota_us"), \
            V1Cgroup("cpu", name, {"cpu.cfs_quota_us": "not-a-number"}):
        pass
    assert not (cgroup1_mount("cpu") / name).exists()


def test_cleanup_stale() -> None:
    # A prefix of its own: include_live must not hit a concurrent test session.
    prefix = unique_name(PREFIX)
    cg = V2Cgroup(unique_name(prefix))
    cg.__enter__()  # simulate a run that never reached __exit__
    try:
        proc = spawn_in([cg], ["sleep", "30"])
        assert cgroups.cleanup_stale(prefix) == []  # owner (us) alive
        assert cgroups.cleanup_stale(prefix, include_live=True) == [str(cg.path)]
        assert not cg.path.exists()
        assert _gone(proc)
    finally:
        cg.close()
