"""``sloctl lab run``: build the lab, run the real agent against real load, inject the
scenario's faults on a schedule, and score what the agent said against what was done.

One run = one topology and workload, then ``reps`` repetitions. Each repetition starts a
fresh ``sloctl agent`` (so it learns its baseline from scratch), runs the load generator
for the whole schedule (baseline, then fault/recovery per scenario step) and writes the
agent's outputs, the client's results and the ground truth into ``rep-NN/``. The run
directory gets the combined artifacts (see :func:`write_artifacts`).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import msgspec

from llm_slo.bpf.libbpf import held_prog_ids, prog_run_time_ns
from llm_slo.errors import LabError
from llm_slo.lab import cleanup_all
from llm_slo.lab.faults import FAULTS, Scenario, undo_all
from llm_slo.lab.join_truth import run_truth
from llm_slo.lab.lab_score import (
    REQUEST_LATENCY_BREACH_MS,
    TTFT_BREACH_MS,
    RepResult,
    latency_overhead,
    pooled_score,
    score_rep,
    summarize,
    write_predictions,
)
from llm_slo.lab.processes import stop_process
from llm_slo.lab.services import LabServices
from llm_slo.lab.topology import NODE, Topology, check_environment, clean_netns_etc
from llm_slo.machine import describe

PHASE_RE = re.compile(r"^(baseline|fault|recovery)=(\d+(?:\.\d+)?)s?$")


class Phases(msgspec.Struct, frozen=True):
    """Seconds of calm before the first fault, of each fault, and of calm after each."""

    baseline: float = 20.0
    fault: float = 20.0
    recovery: float = 10.0

    @classmethod
    def parse(cls, text: str) -> Phases:
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            m = PHASE_RE.match(part)
            if not m:
                raise LabError(f"--phases {text!r}: expected e.g. baseline=20s,fault=20s,"
                               f"recovery=10s (bad part {part!r})")
            values[m[1]] = float(m[2])
        phases = msgspec.structs.replace(cls(), **values)
        if phases.baseline < 5 or phases.fault < 1:
            raise LabError("--phases: baseline needs at least 5 s (the agent learns its "
                           "baseline there) and fault at least 1 s")
        return phases

    def total(self, steps: int) -> float:
        return self.baseline + steps * (self.fault + self.recovery)


def agent_config(rep_dir: Path, listen: str, pods_file: Path) -> dict[str, Any]:
    """The agent's configuration in the lab: fast windows, the lab's TTFT objective."""
    return {
        # The agent's own interval (1 s), so the lab measures what ships. A breach wakes
        # the agent at once, so the interval only paces baseline windows and aggregate
        # reads; at 0.5 s those were a sixth of the agent's CPU in `none` (docs/lab.md).
        "node": NODE,
        "identity": {"pods_file": str(pods_file)},
        "intake": {"listen": listen},
        # Spans too: `sloctl lab rescore` can then replay a repetition with other
        # engine settings, without rerunning the lab.
        "outputs": {"jsonl_dir": str(rep_dir), "probe_events": True, "spans": True},
        "engine": {
            # abstain_retry_s = cooldown_s: every attribution is a scored case, and
            # retrying abstentions 4x as often made them 4x the named answers (CI).
            "window_s": 1.0, "cooldown_s": 1.0, "abstain_retry_s": 1.0,
            "correlation_delay_s": 0.5,
            "baseline": {"warmup": 8},
            # The lab's objectives: TTFT is ~135 ms when healthy; a whole answer of up
            # to 128 tokens at the provider's 50 tokens/s takes ~3 s by design.
            "thresholds": {"services": {"rag": {
                "ttft_ms": {"warning": 400.0, "breach": TTFT_BREACH_MS},
                "request_latency_ms": {"warning": 5000.0,
                                       "breach": REQUEST_LATENCY_BREACH_MS}}}},
        },
    }


class Progress:
    """One status line per second on a terminal, one line per phase otherwise."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()
        self._last = ""

    def status(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K" + text)
            self.out.flush()
        elif text.split(" ·")[0] != self._last:
            self.out.write(text + "\n")
            self.out.flush()
        self._last = text.split(" ·")[0]

    def line(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        self.out.flush()


def _proc_cpu_s(pid: int | None) -> float:
    """utime + stime of ``pid`` in seconds (0 if it is gone or None)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mib(pid: int | None) -> float:
    """VmRSS of ``pid`` in MiB (0 if it is gone or None)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _AgentUsage:
    """The agent's CPU from one moment on: its process's own time, and the run time of
    the BPF programs it holds. Those run in whatever task hits the hook (a connect, a
    context switch), so they never show in the agent's /proc times but are its cost."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = _proc_cpu_s(pid)
        self.bpf0 = prog_run_time_ns(held_prog_ids(pid)) if pid is not None else {}

    def since(self) -> tuple[float, float]:
        """(process CPU s, BPF run s) since construction."""
        if self.pid is None:
            return 0.0, 0.0
        now = prog_run_time_ns(held_prog_ids(self.pid) | set(self.bpf0))
        bpf_ns = sum(ns - self.bpf0.get(prog, 0) for prog, ns in now.items())
        return _proc_cpu_s(self.pid) - self.cpu0, bpf_ns / 1e9


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def bound_to_parent(cmd: list[str]) -> list[str]:
    """``cmd`` made to get SIGTERM when the process that starts it exits, however it
    exits (a second Ctrl-C during cleanup, SIGKILL): ``setpriv --pdeathsig`` sets it
    before exec, with no code run in the forked child of a threaded parent."""
    if shutil.which("setpriv") is None:  # util-linux: present wherever the lab runs
        return cmd
    return ["setpriv", "--pdeathsig", "TERM", "--", *cmd]


class AgentProcess:
    """``sloctl agent`` as a subprocess with its config and log in the rep directory.

    The agent runs outside the lab's cgroups (it is the node's agent, not a pod), so
    ``sloctl lab clean`` cannot find it: it is bound to the run's life instead."""

    def __init__(self, rep_dir: Path, config: dict[str, Any]) -> None:
        self.rep_dir = rep_dir
        (rep_dir / "agent.json").write_text(json.dumps(config, indent=1))
        self.log = rep_dir / "agent.log"
        self.proc = subprocess.Popen(
            bound_to_parent([sys.executable, "-m", "llm_slo.cli", "agent", "--config",
                             str(rep_dir / "agent.json")]),
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "agent running" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-1500:]
        raise LabError(f"the agent did not start (exit {self.proc.poll()}); its log:\n{tail}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(5)


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a span sink has nothing to say per request."""


class OtlpSink:
    """Stands in for the agent in ``--no-agent`` runs: accepts the workload's spans at
    the agent's address and keeps nothing, so the workload does exactly what it does
    with the agent, minus the agent (probes, engine)."""

    pid: int | None = None

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self.server = http.server.ThreadingHTTPServer((host, int(port)), _SinkHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_ready(self) -> None:
        pass

    def stop(self) -> int:
        self.server.shutdown()
        self.server.server_close()
        return 0


class LabRun:
    """One ``sloctl lab run``; see the module docstring."""

    def __init__(self, scenario: Scenario, params: dict[str, float], *, reps: int,
                 phases: Phases, seed: int, out: Path, command: str,
                 with_agent: bool = True, paired_no_agent: Path | None = None,
                 progress: Progress | None = None) -> None:
        self.scenario, self.params, self.reps = scenario, params, reps
        self.phases, self.seed, self.out, self.command = phases, seed, out, command
        self.with_agent = with_agent
        self.paired_no_agent = paired_no_agent
        self.progress = progress or Progress()
        self.results: list[RepResult] = []
        self.paired_results: list[RepResult] = []

    def run(self) -> dict[str, Any]:
        check_environment()
        removed = cleanup_all("llm-slo-lab") + clean_netns_etc()
        if removed:
            self.progress.line(f"removed {len(removed)} leftovers of an earlier lab run")
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.time()
        total = self.phases.total(len(self.scenario.steps))
        runs = self.reps * (2 if self.paired_no_agent else 1)
        max_s = runs * (total + 120) + 300  # every lab process ends by itself
        self.progress.line(f"lab: scenario {self.scenario.name}, {runs} rep(s) of "
                           f"{total:.0f} s, output in {self.out}"
                           + (f" and {self.paired_no_agent} (no agent)"
                              if self.paired_no_agent else ""))
        try:
            with Topology(self.out / "lab") as topo:
                services = LabServices(topo, seed=self.seed, max_s=max_s,
                                       workload=self.params)
                services.start(self.out / "lab")
                for rep in range(1, self.reps + 1):
                    if self.paired_no_agent is None:
                        self.results.append(self._rep(rep, topo, services, self.out,
                                                      with_agent=self.with_agent))
                        continue
                    # Each repetition twice on the same load, with and without the
                    # agent, the order alternating: a slow stretch of the machine then
                    # falls on both sides of the comparison instead of on one run.
                    for with_agent in (True, False) if rep % 2 else (False, True):
                        out = self.out if with_agent else self.paired_no_agent
                        (self.results if with_agent else self.paired_results).append(
                            self._rep(rep, topo, services, out, with_agent=with_agent))
        except KeyboardInterrupt:
            # The lab is gone by now; the repetitions that finished are still worth
            # their scores (a long benchmark stopped at rep 8 of 10 keeps 7).
            if self.results:
                self._write(started, interrupted=True)
            raise
        return self._write(started)

    def _write(self, started: float, *, interrupted: bool = False) -> dict[str, Any]:
        """Score the finished repetitions into the run's artifacts; the summary."""
        provenance = _provenance(self.seed, started, time.time(), self.command)
        summary = summarize(self.results, scenario=self.scenario.name, params=self.params)
        if interrupted:
            summary["interrupted"] = {"reps_done": len(self.results),
                                      "reps_planned": self.reps}
        if self.paired_no_agent is not None and not interrupted:
            overhead = latency_overhead(self.results, self.paired_results)
            summary.update(latency_overhead={**overhead, "no_agent_run":
                                             str(self.paired_no_agent)},
                           latency_overhead_pct=overhead["pct"],
                           request_latency_overhead_pct=overhead["request_pct"])
            write_artifacts(self.paired_no_agent, self.paired_results,
                            summarize(self.paired_results, scenario=self.scenario.name,
                                      params=self.params),
                            provenance, self.command)
        write_artifacts(self.out, self.results, summary, provenance, self.command)
        return summary

    def _rep(self, rep: int, topo: Topology, services: LabServices, out: Path, *,
             with_agent: bool) -> RepResult:
        rep_dir = out / f"rep-{rep:02d}"
        rep_dir.mkdir(parents=True, exist_ok=True)
        for stale in rep_dir.glob("*.jsonl"):
            stale.unlink()
        tag = f"[rep {rep}/{self.reps}{'' if with_agent else ', no agent'}]"
        agent: AgentProcess | OtlpSink = (
            AgentProcess(rep_dir, agent_config(rep_dir, services.otlp_listen,
                                               topo.pods_file))
            if with_agent else OtlpSink(services.otlp_listen))
        undos: list[Callable[[], None]] = []
        faults: list[dict[str, Any]] = []
        phases: list[dict[str, Any]] = []
        loadgen: subprocess.Popen[bytes] | None = None
        try:
            self.progress.status(f"{tag} starting agent")
            agent.wait_ready()
            total = self.phases.total(len(self.scenario.steps))
            loadgen = topo.spawn("loadgen", [
                sys.executable, "-m", "llm_slo.lab.loadgen", "--url", services.rag_url,
                "--duration", str(total), "--seed", str(self.seed + rep),
                "--rate", repr(services.workload["load.rps"]),
                "--out", str(rep_dir / "requests.jsonl")],
                stdout=subprocess.PIPE, stderr=(rep_dir / "loadgen.log").open("wb"))
            services.pids["loadgen"].add(loadgen.pid)
            usage, t0 = _AgentUsage(agent.pid), time.monotonic()
            schedule: list[tuple[str, float, tuple[str, ...]]] = [
                ("baseline", self.phases.baseline, ())]
            for step in self.scenario.steps:
                schedule += [("fault", self.phases.fault, step),
                             ("recovery", self.phases.recovery, ())]
            for name, seconds, step in schedule:
                start = time.time()
                for fault in step:
                    undos.append(FAULTS[fault].inject(services, self.params))
                t_on = time.time()
                self._wait(seconds, f"{tag} {name}"
                           + (f" ({'+'.join(step)})" if step else ""), rep_dir, start)
                errors = undo_all(undos)
                if errors:
                    raise LabError(f"undoing {'+'.join(step)} failed: {'; '.join(errors)}")
                t_off = time.time()
                phases.append({"name": name, "start": start, "end": time.time()})
                faults += [{"name": f, "domain": FAULTS[f].domain, "start": t_on,
                            "end": t_off, "params": {k: v for k, v in self.params.items()
                                                     if k in FAULTS[f].params}}
                           for f in step]
            (cpu_s, bpf_s), wall_s = usage.since(), time.monotonic() - t0
            rss_mib = _proc_rss_mib(agent.pid)
            self.progress.status(f"{tag} draining")
            try:
                loadgen.wait(60)
            except subprocess.TimeoutExpired:
                loadgen.send_signal(signal.SIGTERM)
                loadgen.wait(30)
            time.sleep(2.0)  # the agent joins the last spans after its correlation delay
        finally:
            undo_all(undos)
            if loadgen is not None:
                stop_process(loadgen)
            code = agent.stop()
        if code != 0 and isinstance(agent, AgentProcess):
            tail = agent.log.read_text(errors="replace")[-1500:]
            raise LabError(f"{tag} the agent exited with {code}; its log:\n{tail}")
        (rep_dir / "faults.json").write_text(json.dumps(faults, indent=1))
        (rep_dir / "phases.json").write_text(json.dumps(phases, indent=1))
        result = score_rep(rep, rep_dir, faults, phases, services.pids,
                           pods_file=topo.pods_file, agent_cpu_s=cpu_s, agent_bpf_s=bpf_s,
                           wall_s=wall_s, rss_mb=rss_mib,
                           truth=run_truth(self.out) if with_agent else None)
        s = result.score
        self.progress.line(
            f"{tag} done: {s.cases} cases, macro-F1 "
            f"{'n/a' if s.macro_f1 is None else f'{s.macro_f1:.2f}'}, FPR "
            f"{'n/a' if s.fpr is None else f'{s.fpr:.3f}'}, agent CPU {result.cpu_pct:.2f} %")
        return result

    def _wait(self, seconds: float, label: str, rep_dir: Path, start: float) -> None:
        end = start + seconds
        while (left := end - time.time()) > 0:
            atts = _count_lines(rep_dir / "attributions.jsonl")
            slo = _count_lines(rep_dir / "slo-events.jsonl")
            self.progress.status(f"{label} · {seconds - left:4.0f}/{seconds:.0f} s · "
                                 f"slo events {slo} · attributions {atts}")
            time.sleep(min(1.0, left))


def git_output(*args: str) -> str:
    """What ``git ARGS`` prints about the toolkit's own checkout; "" outside one."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    return ""


def _provenance(seed: int, started: float, finished: float, command: str) -> dict[str, Any]:
    host = describe(("msgspec", "numpy", "aiohttp", "opentelemetry-sdk"))
    del host["loadavg"]  # the lab's own load is what runs: not a property of the machine
    return {
        "command": command, "commit": git_output("rev-parse", "HEAD"),
        "dirty": bool(git_output("status", "--porcelain", "--untracked-files=no")), **host,
        "seed": seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
    }


def write_artifacts(out: Path, results: list[RepResult], summary: dict[str, Any],
                    provenance: dict[str, Any], command: str) -> list[Path]:
    """Combined artifacts of a run in ``out`` (per-rep files stay in ``rep-NN/``)."""
    from llm_slo.lab.report import write_run_report

    for name in ("slo-events.jsonl", "attributions.jsonl"):
        with (out / name).open("wb") as dst:
            for r in results:
                with contextlib.suppress(FileNotFoundError):
                    dst.write((r.rep_dir / name).read_bytes())
    write_predictions(out / "predictions.csv",
                      ((r.rep, p) for r in results for p in r.predictions))
    pooled = pooled_score(results)
    pooled.write_confusion_csv(out / "confusion-matrix.csv")
    pooled.write_csv(out / "metrics.csv")  # the scores as rows, for tools that read CSV
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1))
    return [out / "summary.json",
            *write_run_report(out, command=command, rep_dirs=[r.rep_dir for r in results])]


