#!/usr/bin/env python3
"""Where the lab's agent spends its CPU: one ``sloctl lab run`` with py-spy on the agent.

Runs ``sloctl lab run --scenario S --reps 1 --phases P --out OUT/run``, attaches
``py-spy record --nonblocking`` (py-spy is not a dependency: ``pip install py-spy``) to
the agent once it is past its start-up (``--skip-s``), and when the run ends writes
``OUT/agent.raw`` (py-spy's collapsed stacks) and ``OUT/profile.md``: the share of the
agent's on-CPU samples in each stage of the pipeline (the most specific stage any frame
of a stack names) and the functions with the most samples of their own.
``--nonblocking`` reads the agent's memory without stopping it, so the agent's own CPU
is what it would be; py-spy itself takes CPU on the other core. Idle samples
(``epoll_wait`` with nothing to do) are not recorded.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Stage of a stack: the first of these that any of its frames names ("file" or
# "file:function"; py-spy names a frame "Class.function (path:line)"). Most specific
# first: span intake runs inside the receiver's aiohttp handler.
STAGES = (
    ("span intake: OTLP decode", "otlp_decode.py"),
    ("span intake: engine (SLIs, burn rates, SLO events)", "engine.py:add_spans"),
    ("span intake: pid/cgroup of spans", "span_process.py"),
    ("JSONL outputs", "agent.py:JsonlOutputs.write"),
    ("engine tick (joins, attribution)", "engine.py:tick"),
    ("probe polls (rings, maps, /proc)", "probes/"),
    ("probe events: identity", "probe_event.py"),
    ("OTLP receiver and aiohttp", "otlp_receiver.py"),
    ("OTLP receiver and aiohttp", "aiohttp/"),
)


def stage_of(stack: str) -> str:
    """The pipeline stage of a collapsed stack (``;``-separated frames)."""
    frames = stack.split(";")
    for stage, needle in STAGES:
        file, _, func = needle.partition(":")
        named = re.compile(rf"(^|\.){re.escape(func)} \(") if func else None
        if any(file in f and (named is None or named.search(f)) for f in frames):
            return stage
    return "other (event loop, start-up, unnamed)"


def leaf_function(stack: str) -> str:
    return stack.rsplit(";", 1)[-1]


def summarize(raw: Path) -> str:
    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stages[stage_of(stack)] += int(count)
        leaves[leaf_function(stack)] += int(count)
    total = sum(stages.values()) or 1
    out = [f"{total} on-CPU samples of the agent.", "", "| stage | share |", "|---|---|"]
    out += [f"| {s} | {100 * n / total:.1f} % |" for s, n in stages.most_common()]
    out += ["", "| function (own samples) | share |", "|---|---|"]
    out += [f"| `{f}` | {100 * n / total:.1f} % |" for f, n in leaves.most_common(25)]
    return "\n".join(out) + "\n"


def agent_pid(config: Path, lab: subprocess.Popen[bytes]) -> int | None:
    """The agent's pid once it runs with ``config``; None if the lab ended first."""
    while lab.poll() is None:
        pattern = re.escape(f"llm_slo.cli agent --config {config}")
        found = subprocess.run(["pgrep", "-f", pattern],
                               capture_output=True, text=True).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.2)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="dns_latency")
    ap.add_argument("--phases", default="baseline=30s,fault=40s,recovery=10s")
    ap.add_argument("--rate", type=int, default=400, help="py-spy samples a second")
    ap.add_argument("--skip-s", type=float, default=15.0,
                    help="start sampling this long after the agent starts: its start-up "
                         "(imports, loading BPF objects) is not what the lab charges it")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.out / "run"
    lab = subprocess.Popen([sys.executable, "-m", "llm_slo.cli", "lab", "run", "--scenario",
                            args.scenario, "--reps", "1", "--phases", args.phases,
                            "--out", str(run)])
    pid = agent_pid(run / "rep-01" / "agent.json", lab)
    if pid is None:
        sys.exit(f"the lab ended before its agent started (exit {lab.returncode})")
    time.sleep(args.skip_s)
    raw = args.out / "agent.raw"
    spied = subprocess.run([spy, "record", "--nonblocking", "--rate", str(args.rate),
                            "--format", "raw", "--output", str(raw), "--pid", str(pid)],
                           check=False, capture_output=True, text=True)
    if lab.wait():
        sys.exit(f"the lab run failed (exit {lab.returncode})")
    if not raw.exists() or not raw.stat().st_size:
        sys.exit(f"py-spy recorded nothing (exit {spied.returncode}): "
                 f"{spied.stderr.strip()[-500:]}")
    (args.out / "profile.md").write_text(
        f"`scripts/profile_lab_agent.py --scenario {args.scenario} --phases {args.phases}"
        f" --rate {args.rate} --skip-s {args.skip_s:g}`\n\n" + summarize(raw))
    print((args.out / "profile.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
