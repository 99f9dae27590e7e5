"""``make bench-lab``: every incident-lab scenario with N repetitions; one summary table.

Runs ``sloctl lab run`` per scenario into ``--out/<scenario>/`` (all artifacts kept) and
writes ``--out/README.md``: the command, machine, date and the headline metrics per
scenario, straight from each run's summary.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from llm_slo.lab.faults import SCENARIOS


def _fmt(v: object, digits: int = 3) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="docs/benchmarks/lab")
    p.add_argument("--phases", default="baseline=20s,fault=20s,recovery=10s")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in args.scenarios.split(","):
        run_dir = out / name
        print(f"== {name}", file=sys.stderr, flush=True)
        code = subprocess.call([sys.executable, "-m", "llm_slo.cli", "lab", "run",
                                "--scenario", name, "--reps", str(args.reps),
                                "--phases", args.phases, "--out", str(run_dir)])
        if code != 0:
            rows.append(f"| {name} | run failed (exit {code}) | | | | | | |")
            continue
        s = json.loads((run_dir / "summary.json").read_text())
        rows.append("| " + " | ".join([
            name, _fmt(s.get("macro_f1")), _fmt(s.get("fpr")),
            _fmt(s["detection_delay_s"].get("median"), 2),
            f"{s['detection_delay_s'].get('missed', 'n/a')}",
            _fmt((s.get("correlation") or {}).get("precision")),
            _fmt(s["overhead"].get("cpu_pct"), 2), _fmt(s["overhead"].get("rss_mb"), 1),
        ]) + " |")
    prov = {}
    first = next(iter(out.glob("*/provenance.json")), None)
    if first:
        prov = json.loads(first.read_text())
    doc = [f"# Incident lab benchmark ({started})", "",
           f"Command: `make bench-lab` (`scripts/bench_lab.py --reps {args.reps} "
           f"--phases {args.phases}`)", "",
           f"Machine: {prov.get('hostname', '?')}, {prov.get('cpus', '?')} CPUs "
           f"({prov.get('cpu_model', '?')}), kernel {prov.get('kernel', '?')}, "
           f"commit {prov.get('commit', '?')[:12]}", "",
           "| scenario | macro-F1 | FPR | delay median s | missed episodes | "
           "corr. precision | agent CPU % | RSS MB |",
           "|---|---|---|---|---|---|---|---|", *rows, "",
           "Per-scenario details: `<scenario>/report.md`, `summary.json`, timelines."]
    (out / "README.md").write_text("\n".join(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
