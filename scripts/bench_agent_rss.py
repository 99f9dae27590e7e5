#!/usr/bin/env python3
"""The lab agent's resident memory over a long calm run, sampled from ``/proc``.

Runs ``sloctl lab run --scenario none --reps 1 --phases
baseline=<seconds>s,fault=1s,recovery=1s`` (20 requests a second, no fault, the agent
with its JSONL recording on, as in every lab run: about 20 MB a minute on disk under
``OUT/run``) and, from the agent's start to its end, reads ``VmRSS`` and its parts
(``RssAnon``, ``RssFile``, ``RssShmem``) from ``/proc/PID/status`` every ``--every``
seconds. Writes ``OUT/rss.txt`` (one line per sample, KiB, the columns of
docs/benchmarks/agent-rss/), prints one line a minute, and ends with a summary: first,
last and peak VmRSS, and the growth over the run's second half in MiB an hour (a
least-squares line: the retention fills in the first minutes, a leak shows after).
Ctrl-C (or SIGTERM) stops the lab once, which cleans up, and still writes what was
sampled. An agent that exits before the lab ends is reported, and the exit is non-zero.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from profile_lab_agent import agent_pid  # scripts/: the same way to find the lab's agent

FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def read_status(path: Path) -> dict[str, int] | None:
    """The memory fields of a ``/proc/PID/status`` file in KiB; None once the process is
    gone (no file, or a zombie's status without them)."""
    try:
        text = path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[name] = int(rest.split()[0])
    return out if len(out) == len(FIELDS) else None


def start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks since boot): tells the
    agent from a later process that was given its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError):
        return None


def growth_mib_per_hour(samples: list[tuple[float, int]]) -> float | None:
    """Least-squares slope of (seconds, KiB) over the second half of ``samples``, in MiB
    an hour; None with fewer than 4 samples in that half."""
    half = samples[len(samples) // 2:]
    if len(half) < 4:
        return None
    n = len(half)
    mean_t = sum(t for t, _ in half) / n
    mean_v = sum(v for _, v in half) / n
    var = sum((t - mean_t) ** 2 for t, _ in half)
    if var == 0:
        return None
    slope = sum((t - mean_t) * (v - mean_v) for t, v in half) / var  # KiB a second
    return slope * 3600 / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of load (default 60)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.minutes < 1 or args.every <= 0:
        sys.exit("--minutes must be at least 1 and --every positive")
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.out / "run"
    phases = f"baseline={round(args.minutes * 60)}s,fault=1s,recovery=1s"
    command = [sys.executable, "-m", "llm_slo.cli", "lab", "run", "--scenario", "none",
               "--reps", "1", "--phases", phases, "--out", str(run)]
    # Its own session: a Ctrl-C at the terminal reaches the lab once, from here, not
    # twice (a second SIGINT would interrupt its clean-up).
    lab = subprocess.Popen(command, start_new_session=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if not stopping and lab.poll() is None:
            stopping = True
            lab.send_signal(signal.SIGINT)  # the lab's Ctrl-C: it stops and cleans up

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    samples: list[tuple[float, int]] = []
    early = False
    try:
        pid = agent_pid(run / "rep-01" / "agent.json", lab)
        if pid is None:
            sys.exit(f"the lab ended before its agent started (exit {lab.returncode})")
        born = start_time(pid)
        started = time.monotonic()
        status_path = Path(f"/proc/{pid}/status")
        with (args.out / "rss.txt").open("w") as out:
            out.write(f"# scripts/bench_agent_rss.py --minutes {args.minutes:g} --every "
                      f"{args.every:g}: agent pid {pid}\n"
                      "# seconds_since_agent_start utc vmrss_kib rss_anon_kib rss_file_kib "
                      "rss_shmem_kib\n")
            next_print = 0.0
            while start_time(pid) == born and (status := read_status(status_path)):
                t = time.monotonic() - started
                samples.append((t, status["VmRSS"]))
                out.write(f"{t:.0f} {time.strftime('%H:%M:%S', time.gmtime())} "
                          + " ".join(str(status[f]) for f in FIELDS) + "\n")
                out.flush()
                if t >= next_print:
                    print(f"[rss] {t / 60:5.1f} min · VmRSS {status['VmRSS'] / 1024:.1f} MiB "
                          f"· anon {status['RssAnon'] / 1024:.1f} MiB", flush=True)
                    next_print += 60.0
                time.sleep(args.every)
            summary = _summary(samples)
            out.write(f"# {summary}\n")
        print(f"[rss] {summary}")
        early = lab.poll() is None and not stopping
        if early:
            print(f"[rss] the agent exited after {samples[-1][0] / 60 if samples else 0:.1f} "
                  "min, before the lab's end: see run/rep-01/agent.log", file=sys.stderr)
    finally:
        stop()  # also the lab whose agent exited early
        lab.wait()
    if stopping and not early:
        print(f"[rss] stopped; samples in {args.out}/rss.txt", file=sys.stderr)
        return 130
    if early or lab.returncode:
        return 1
    return 0


def _summary(samples: list[tuple[float, int]]) -> str:
    if not samples:
        return "no sample: the agent ended before the first read"
    growth = growth_mib_per_hour(samples)
    return (f"{len(samples)} samples over {samples[-1][0] / 60:.1f} min: VmRSS first "
            f"{samples[0][1] / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, peak "
            f"{max(v for _, v in samples) / 1024:.1f} MiB; growth over the second half "
            + ("unknown (too few samples)" if growth is None
               else f"{growth:+.2f} MiB an hour"))


if __name__ == "__main__":
    sys.exit(main())
