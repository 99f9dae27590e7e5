"""The lab's early check names what the host lacks before it creates anything."""

from __future__ import annotations

import os
import shutil

import pytest

from llm_slo import mounts
from llm_slo.errors import LabError
from llm_slo.lab import topology

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the check asks for root first")


def test_a_cgroup_v2_only_host_is_told_what_the_lab_needs(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(topology, "cgroup2_mount", lambda: "/sys/fs/cgroup")
    monkeypatch.setattr(mounts, "cgroup1_mount",
                        lambda c: "/sys/fs/cgroup/cpuset" if c == "cpuset" else "")
    with pytest.raises(LabError, match=r"mounts none for cpu, memory .*cgroup-v2-only host"):
        topology.check_environment()


def test_a_missing_tool_is_named(monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nft" else tool)
    with pytest.raises(LabError, match="needs `nft` on PATH"):
        topology.check_environment()
