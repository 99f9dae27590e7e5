"""`sloctl agent` stops cleanly on SIGINT and SIGTERM: it exits 0, writes its final
stats, and leaves nothing of itself in the kernel. A link or program that outlives the
process (a legacy cgroup attachment, a pin, a leaked reference) would keep tracing every
packet and scheduling event of the node after the agent is gone."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bpf_ids(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, link ids) behind the process's open file descriptors."""
    progs: set[int] = set()
    links: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except OSError:  # closed meanwhile
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "link_id":
                links.add(int(value))
    return progs, links


def _exists(kind: str, ident: int) -> bool:
    return subprocess.run(["bpftool", kind, "show", "id", str(ident)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_agent_and_frees_every_link(tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "llm_slo.cli", "agent", "--output-dir", str(out),
         "--listen", f"127.0.0.1:{_free_port()}"],
        stderr=open(log, "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and b"agent running" not in log.read_bytes():
            assert agent.poll() is None, log.read_text()[-2000:]
            time.sleep(0.2)
        assert b"agent running" in log.read_bytes(), log.read_text()[-2000:]
        progs, links = _bpf_ids(agent.pid)
        # Every signal's programs are attached through links the agent holds (a program
        # attached at two places, a uprobe in two libraries, has two links).
        assert len(links) >= 5 and len(progs) >= 5, (progs, links)
        agent.send_signal(sig)
        agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, log.read_text()[-2000:]
    assert b"agent stopped" in log.read_bytes()
    stats = json.loads((out / "agent-stats.json").read_text())
    assert stats["bpf"], "the final stats name the programs that ran"
    # The kernel frees a program after its last reference goes (an RCU grace period).
    deadline = time.monotonic() + 10
    left = [("link", i) for i in links] + [("prog", i) for i in progs]
    while left and time.monotonic() < deadline:
        left = [(kind, i) for kind, i in left if _exists(kind, i)]
        time.sleep(0.2)
    assert not left, f"still in the kernel after the agent exited: {left}"
