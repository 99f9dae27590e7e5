#!/usr/bin/env python3
"""The lab agent's resident memory over a long calm run, sampled from ``/proc``.

Runs ``sloctl lab run --scenario none --reps 1 --phases baseline=<minutes>m`` (20
requests a second, no fault, the agent with its JSONL recording on, as in every lab run)
into ``OUT/run`` and, from the agent's start to its end, reads ``VmRSS`` and its parts
(``RssAnon``, ``RssFile``, ``RssShmem``) from ``/proc/PID/status`` every ``--every``
seconds. Writes ``OUT/rss.txt`` (one line per sample, KiB, the columns of
docs/benchmarks/agent-rss/), prints one line a minute, and ends with a summary: first,
last and peak VmRSS, and the growth over the run's second half in MiB an hour (a
least-squares line: the retention fills in the first minutes, a leak shows after).
Ctrl-C stops the lab cleanly and still writes what was sampled.
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


def read_status(pid: int) -> dict[str, int] | None:
    """The memory fields of ``/proc/PID/status`` in KiB; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[name] = int(rest.split()[0])
    return out if len(out) == len(FIELDS) else None


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
    lab = subprocess.Popen(command)
    signal.signal(signal.SIGINT, lambda *_: lab.send_signal(signal.SIGINT))
    pid = agent_pid(run / "rep-01" / "agent.json", lab)
    if pid is None:
        sys.exit(f"the lab ended before its agent started (exit {lab.returncode})")
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    with (args.out / "rss.txt").open("w") as out:
        out.write(f"# scripts/bench_agent_rss.py --minutes {args.minutes:g} --every "
                  f"{args.every:g}: agent pid {pid}\n"
                  "# seconds_since_agent_start utc vmrss_kib rss_anon_kib rss_file_kib "
                  "rss_shmem_kib\n")
        next_print = 0.0
        while (status := read_status(pid)) is not None:
            t = time.monotonic() - started
            samples.append((t, status["VmRSS"]))
            out.write(f"{t:.0f} {time.strftime('%H:%M:%S', time.gmtime())} "
                      + " ".join(str(status[f]) for f in FIELDS) + "\n")
            out.flush()
            if t >= next_print:
                print(f"[rss] {t / 60:5.1f} min · VmRSS {status['VmRSS'] / 1024:.1f} MiB · "
                      f"anon {status['RssAnon'] / 1024:.1f} MiB", flush=True)
                next_print += 60.0
            time.sleep(args.every)
        growth = growth_mib_per_hour(samples)
        summary = ("no sample: the agent ended before the first read" if not samples else
                   f"{len(samples)} samples over {samples[-1][0] / 60:.1f} min: VmRSS first "
                   f"{samples[0][1] / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, "
                   f"peak {max(v for _, v in samples) / 1024:.1f} MiB; growth over the "
                   "second half "
                   + ("unknown (too few samples)" if growth is None
                      else f"{growth:+.2f} MiB an hour"))
        out.write(f"# {summary}\n")
    print(f"[rss] {summary}")
    if lab.wait():
        sys.exit(f"the lab run failed (exit {lab.returncode}); samples in {args.out}/rss.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
