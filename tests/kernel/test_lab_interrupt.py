"""A lab run stopped by Ctrl-C (or `kill`) removes everything it made and exits 130; one
killed outright leaves its namespaces, cgroups, tables and servers behind, and
`sloctl lab clean` removes them all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def _start(out: Path, *, reps: int = 1,
           phases: str = "baseline=60s,fault=10s,recovery=5s") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "llm_slo.cli", "lab", "run", "--scenario", "dns_latency",
         "--reps", str(reps), "--phases", phases, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_load(run: subprocess.Popen[str], out: Path, rep: int = 1) -> None:
    """Until repetition ``rep``'s load generator has answers: the lab and agent are up."""
    requests = out / f"rep-{rep:02d}" / "requests.jsonl"
    deadline = time.monotonic() + 120
    while not (requests.is_file() and requests.stat().st_size > 0):
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the lab never started its load"
        time.sleep(0.5)


@pytest.fixture
def no_lab(lab_leftovers) -> Iterator[None]:
    """Starts with nothing of a lab around, and removes whatever a failure left."""
    assert not lab_leftovers(), f"a lab is already here: {lab_leftovers()}"
    yield
    subprocess.run([sys.executable, "-m", "llm_slo.cli", "lab", "clean"], check=False,
                   capture_output=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_removes_what_it_made_and_keeps_finished_reps(
        tmp_path: Path, no_lab: None, lab_leftovers, sig: int) -> None:
    out = tmp_path / "lab"
    run = _start(out, reps=3, phases="baseline=5s,fault=4s,recovery=2s")
    _wait_for_load(run, out, rep=2)  # rep 1 is finished and scored
    assert lab_leftovers()  # the lab is up: namespaces, cgroups, servers
    run.send_signal(sig)
    _, err = run.communicate(timeout=90)
    assert run.returncode == 130, err[-3000:]
    assert "interrupted; everything it made was removed; its 1 finished" in err
    assert not lab_leftovers(), lab_leftovers()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] == {"reps_done": 1, "reps_planned": 3}
    assert summary["reps"] == 1 and (out / "report.md").is_file()


def test_lab_clean_after_a_crash(tmp_path: Path, no_lab: None, lab_leftovers) -> None:
    run = _start(tmp_path / "lab")
    _wait_for_load(run, tmp_path / "lab")
    run.kill()  # no clean-up path at all
    run.communicate(timeout=30)
    time.sleep(1.0)  # the agent's parent-death signal
    left = lab_leftovers()
    assert any("llm-slo-lab" in x for x in left), left
    clean = subprocess.run([sys.executable, "-m", "llm_slo.cli", "lab", "clean"],
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    assert "removed" in clean.stdout
    assert not lab_leftovers(), lab_leftovers()
