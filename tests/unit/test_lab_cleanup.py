"""cleanup_all removes what a crashed run left behind (owner process gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llm_slo.lab import cleanup_all
from llm_slo.lab.naming import check_prefix, owner_alive, pid_alive, unique_name

# Unique per session: a concurrent session's cleanup_all must not race this one's.
PREFIX = unique_name("llm-slo-t-crash")

# A run that creates one object of each kind and dies without any cleanup.
_CRASHING_RUN = f"""
import json, os, subprocess
from llm_slo.lab.naming import unique_name
from llm_slo.lab.cgroups import V1Cgroup, V2Cgroup, spawn_in
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.nft import NftDrop
pair = NetnsPair("{PREFIX}").__enter__()
drop = NftDrop("{PREFIX}", daddr=pair.ns_addr, dport=9, percent=50).__enter__()
v2 = V2Cgroup(unique_name("{PREFIX}")).__enter__()
cpu = V1Cgroup("cpu", unique_name("{PREFIX}"), {{"cpu.cfs_quota_us": "10000"}}).__enter__()
orphan = spawn_in([v2, cpu], ["sleep", "30"], stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)  # must not hold the parent's pipes open
print(json.dumps([pair.ns, pair.host_if, drop.table, str(v2.path), str(cpu.path),
                  orphan.pid]), flush=True)
os._exit(0)
"""


@pytest.mark.kernel
def test_cleanup_all_removes_leftovers_of_dead_owner() -> None:
    try:
        out = subprocess.run([sys.executable, "-c", _CRASHING_RUN], capture_output=True,
                             text=True, timeout=20)
    finally:
        removed = cleanup_all(PREFIX)  # runs even if the crashing run half-failed
    assert out.returncode == 0, out.stderr
    ns, host_if, table, v2_path, cpu_path, orphan = json.loads(out.stdout)
    assert {ns, table, v2_path, cpu_path} <= set(removed)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert ns not in netns
    assert subprocess.run(["ip", "link", "show", host_if], capture_output=True).returncode
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert table not in tables
    # The orphan in the cgroups was killed (init may take a moment to reap it).
    deadline = time.monotonic() + 2
    while pid_alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(orphan)
    assert cleanup_all(PREFIX) == []


def test_names_carry_owner_and_validate_prefix() -> None:
    name = unique_name("llm-slo-x")
    assert name.startswith("llm-slo-x-") and owner_alive(name)
    assert unique_name("llm-slo-x") != name
    assert not owner_alive("llm-slo-x-no-owner")
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not pid_alive(proc.pid)
    for bad in ("", "1abc", "has space", "a/b", "x" * 65):
        with pytest.raises(ValueError):
            check_prefix(bad)


def test_the_agent_does_not_outlive_a_killed_run() -> None:
    """The lab's agent runs outside its cgroups, where cleanup cannot find it: started
    through bound_to_parent, it is sent SIGTERM when the run dies, even by SIGKILL."""
    run = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         "from llm_slo.lab.runner import bound_to_parent\n"
         "child = subprocess.Popen(bound_to_parent(['sleep', '30']))\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert run.stdout is not None
        child = int(run.stdout.readline())
        time.sleep(0.3)  # setpriv has set the signal and exec'd sleep
        assert pid_alive(child)
        run.kill()
        run.wait(5)
        deadline = time.monotonic() + 5
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(child), "the agent outlived the run that started it"
    finally:
        run.kill()
        run.wait(5)
        if child and pid_alive(child):
            os.kill(child, signal.SIGKILL)
