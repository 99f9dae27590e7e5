"""scripts/bench_lab.py's bookkeeping: what of a run goes into docs, and the run log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def bench(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("bench_lab")


def test_only_what_a_reader_needs_is_kept(bench: ModuleType, tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "docs/dns_latency"
    (raw / "rep-01").mkdir(parents=True)
    for name in (*bench.KEPT, "timeline.svg", "timeline-rep-01.svg", "slo-events.jsonl",
                 "rep-01/probe-events.jsonl"):
        (raw / name).write_text(name)
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("from an older run")
    bench._keep(raw, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*bench.KEPT, "timeline.svg", "timeline-rep-01.svg"])


def test_each_invocation_is_logged_newest_first(bench: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    (tmp_path / "none/provenance.json").write_text(json.dumps(
        {"commit": "0123456789abcdef", "hostname": "lab-1", "cpus": 2,
         "cpu_model": "AMD EPYC", "kernel": "6.18.0"}))
    bench._log_run(tmp_path, ["none"], "python scripts/bench_lab.py --scenarios none",
                   "2026-12-03 23:30")
    bench._log_run(tmp_path, ["none", "dns_latency"], "second", "2026-12-04 00:10")
    text = (tmp_path / "RUNS.md").read_text()
    assert text.startswith(bench.RUNS_HEADER + "\n\n- 012345678, 2026-12-04 00:10–")
    first, second = text.split("\n\n", 1)[1].splitlines()
    assert "none, dns_latency (`second`)" in first
    assert "kernel 6.18.0: none (`python scripts/bench_lab.py --scenarios none`)" in second
    assert "2026-12-03 23:30–" in second and "lab-1 (2 CPUs, AMD EPYC)" in second


def test_runs_only_this_checkouts_committed_code(bench: ModuleType, monkeypatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(bench, "git_output", lambda *args: "")
    assert bench._unfit_checkout() is None
    monkeypatch.setattr(bench, "git_output", lambda *args: " M python/llm_slo/agent.py")
    assert "uncommitted changes" in (bench._unfit_checkout() or "")
    # A virtualenv installed from another clone runs that clone's code.
    other = tmp_path / "clone/python/llm_slo/__init__.py"
    monkeypatch.setattr(bench.llm_slo, "__file__", str(other))
    why = bench._unfit_checkout() or ""
    assert str(tmp_path / "clone") in why and "not from this checkout" in why


def test_ctrl_c_lets_the_run_clean_up_then_stops(bench: ModuleType, monkeypatch,
                                                  tmp_path: Path) -> None:
    waits: list[str] = []

    class Run:  # a lab run that gets the terminal's Ctrl-C while the bench waits on it
        def __init__(self, argv: list[str]) -> None:
            self.name = argv[argv.index("--scenario") + 1]

        def wait(self) -> int:
            waits.append(self.name)
            if len(waits) == 1:
                raise KeyboardInterrupt
            return 130

    monkeypatch.setattr(bench.subprocess, "Popen", Run)
    monkeypatch.setattr(bench, "_unfit_checkout", lambda: None)
    monkeypatch.setattr("sys.argv", ["bench_lab.py", "--scenarios", "dns_latency,tls_slow",
                                     "--out", str(tmp_path / "docs"),
                                     "--raw", str(tmp_path / "raw")])
    assert bench.main() == 130
    assert waits == ["dns_latency", "dns_latency"]  # waited for it; tls_slow never ran
    assert (tmp_path / "docs/README.md").is_file() and not (tmp_path / "docs/RUNS.md").exists()
