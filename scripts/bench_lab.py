"""``make bench-lab``: every incident-lab scenario with N repetitions; one summary table.

Runs ``sloctl lab run`` per scenario into ``--raw/<scenario>/`` (every repetition's
files, about 1 GB a run: kept out of the repository), copies what a reader needs into
``--out/<scenario>/`` (summary, report, scores, predictions, confusion matrix,
provenance, the timelines), appends the run to ``--out/RUNS.md`` and writes
``--out/README.md``: the command, machine, date and the headline metrics per scenario,
straight from each run's summary.json. It refuses to run scenarios unless ``llm_slo``
is this checkout's and the checkout has no uncommitted changes: the rows name a commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import llm_slo
from llm_slo.lab.faults import SCENARIOS
from llm_slo.lab.lab_score import REQUEST_LATENCY_BREACH_MS, TTFT_BREACH_MS, read_predictions
from llm_slo.lab.runner import git_output
from llm_slo.scoring import score

SINGLE_FAULT = [name for name, sc in SCENARIOS.items()
                if len(sc.steps) == 1 and len(sc.steps[0]) == 1]


def _fmt(v: object, digits: int = 3) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v:.{digits}f}"


def _json(path: Path) -> dict[str, Any]:
    """A run's JSON file, or {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pooled_single_fault(out: Path) -> str:
    """The table's note on every single-fault scenario's cases scored as one run."""
    # The rows' runs: finished ones (summary.json is written last).
    present = [n for n in SINGLE_FAULT if (out / n / "summary.json").is_file()]
    if not present:
        return "Single-fault scenarios pooled: no single-fault runs here."
    pooled = score([c for n in present for c in read_predictions(out / n / "predictions.csv")])
    commits = sorted({str(_json(out / n / "provenance.json").get("commit", "?"))[:9]
                      for n in present})
    rules = sorted({_json(out / n / "summary.json").get("truth_rule", "active_faults")
                    for n in present})
    per_class = ", ".join(f"{d} {c.f1:.3f}" for d, c in sorted(pooled.per_class.items()))
    return (f"Single-fault scenarios pooled ({len(present)} of {len(SINGLE_FAULT)}; every "
            "repetition's cases scored as one run, from the runs' `predictions.csv`, at "
            f"{len(commits)} commit(s): {', '.join(commits)}; truths set by "
            f"{' and '.join(rules)}, docs/lab.md \"Scoring\"): macro-F1 "
            f"{_fmt(pooled.macro_f1)}, FPR {_fmt(pooled.fpr)}; F1 per domain: {per_class}. "
            "The per-scenario macro-F1 in the table averages over every domain that occurs "
            "as a truth or a prediction, so in a one-fault run a single stray prediction of "
            "another domain is a class with F1 0 and halves it; pooled, the stray costs "
            "that domain some precision instead.")


def _overhead_text(none: dict[str, Any]) -> str:
    """The p99 comparisons that ``none --paired-no-agent`` wrote into its summary: TTFT,
    and whole requests since they were measured (runs before the pairing had only
    ``latency_overhead_pct``, from separate runs)."""
    paired = none.get("latency_overhead")
    if isinstance(paired, dict) and paired.get("pct") is not None:
        median = paired.get("per_pair_pct_median")
        return (f"{paired['ttft_p99_ms_agent']:.1f} ms vs "
                f"{paired['ttft_p99_ms_no_agent']:.1f} ms, {paired['pct']:+.2f} % over all "
                "requests (target at most +2 %); the repetitions ran in pairs, agent on and "
                "off on the same load, alternating which went first; median of the "
                f"pairs' differences {_fmt(median, 2)} % "
                f"(per pair: {', '.join(f'{x:+.1f}' for x in paired['per_pair_pct'])})."
                + ("" if paired.get("request_pct") is None else
                   f" Whole requests (sent to last token): p99 "
                   f"{paired['request_p99_ms_agent']:.1f} ms vs "
                   f"{paired['request_p99_ms_no_agent']:.1f} ms, "
                   f"{paired['request_pct']:+.2f} % (target at most +2 %)."))
    if isinstance(none.get("latency_overhead_pct"), (int, float)):
        return (f"{none['latency_overhead_pct']:+.2f} % (target at most +2 %; from separate "
                "agent-on and agent-off runs).")
    return "not measured (no `none` run with `--paired-no-agent` here)."


KEPT = ("summary.json", "report.md", "metrics.csv", "predictions.csv",
        "confusion-matrix.csv", "provenance.json")


def _keep(raw: Path, out: Path) -> None:
    """The files of run ``raw`` a reader needs, into ``out`` (replacing what was there)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in [*(raw / n for n in KEPT), *sorted(raw.glob("*.svg"))]:
        if path.is_file():
            shutil.copy2(path, out / path.name)


def _log_run(out: Path, names: list[str], command: str, started: str) -> None:
    """One line per invocation in RUNS.md, newest first under its header."""
    runs = out / "RUNS.md"
    prov = _json(out / names[0] / "provenance.json") if names else {}
    line = (f"- {str(prov.get('commit', '?'))[:9]}, {started}–"
            f"{time.strftime('%H:%M', time.gmtime())} UTC, {prov.get('hostname', '?')} "
            f"({prov.get('cpus', '?')} CPUs, {prov.get('cpu_model', '?')}), kernel "
            f"{prov.get('kernel', '?')}: {', '.join(names)} (`{command}`).")
    old = runs.read_text().split("\n\n", 1) if runs.is_file() else [RUNS_HEADER, ""]
    runs.write_text(f"{old[0]}\n\n{line}\n{old[1] if len(old) > 1 else ''}".rstrip() + "\n")


RUNS_HEADER = ("The runs behind the rows, newest first: each `make bench-lab` (or "
               "`python scripts/bench_lab.py`) invocation adds its line; notes on what ran "
               "beside a run are added by hand under it.")


def _row(name: str, run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    prov = _json(run_dir / "provenance.json")
    return "| " + " | ".join([
        name, _fmt(s.get("macro_f1")), _fmt(s.get("fpr")),
        _fmt(((s.get("fpr_by_phase") or {}).get("baseline") or {}).get("fpr")),
        _fmt(s["detection_delay_s"].get("median"), 2),
        _fmt((s.get("detection_after_break_s") or {}).get("median"), 2),
        f"{s['detection_delay_s'].get('missed', 'n/a')}",
        # Runs before the rag's truth log judged span joins called ProbeEvent -> pod
        # "correlation": not comparable, so not shown.
        *((_fmt(c.get("precision")), _fmt(c.get("recall")))
          if "identity" in s and (c := s.get("correlation") or {}) else ("n/a", "n/a")),
        _fmt(s["overhead"].get("cpu_pct"), 2), _fmt(s["overhead"].get("cpu_pct_with_bpf"), 2),
        _fmt(s["overhead"].get("rss_mb"), 1), _fmt(s["overhead"].get("rss_peak_mb"), 1),
        str(prov.get("commit", "?"))[:9], str(prov.get("started", "?"))[:16],
        s.get("truth_rule", "active_faults"),
    ]) + " |"


def _unfit_checkout() -> str | None:
    """Why the runs would not be of this checkout's committed code, if they would not:
    the rows name a commit, so the agent must be that commit's, unchanged."""
    here = Path(__file__).resolve().parents[1]
    used = Path(llm_slo.__file__).resolve().parents[2]
    if used != here:
        return (f"llm_slo is imported from {used}, not from this checkout ({here}): "
                "install it here (`make deps`, or `pip install --no-deps -e .` in this "
                "checkout's virtualenv)")
    if git_output("status", "--porcelain", "--untracked-files=no"):
        return f"{here} has uncommitted changes: commit them, or run from a clean clone"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="docs/benchmarks/lab-reps10",
                   help="the table and each scenario's kept artifacts")
    p.add_argument("--raw", default="out/bench-lab",
                   help="the runs themselves, every repetition's files (large)")
    p.add_argument("--phases", default="baseline=20s,fault=20s,recovery=10s")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="which to (re)run; the table covers every scenario in --out "
                   "('' reruns nothing and rewrites the table)")
    args = p.parse_args()
    out, raw = Path(args.out), Path(args.raw)
    failed, done = [], []
    names = [n for n in args.scenarios.split(",") if n]
    if names and (why := _unfit_checkout()):
        print(f"bench_lab: {why}", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    interrupted = False
    for name in names:
        run_dir = raw / name
        print(f"== {name}", file=sys.stderr, flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        # `none` also gives the agent's latency overhead: each repetition again without it
        paired = [] if name != "none" else ["--paired-no-agent", str(raw / "none-no-agent")]
        if paired:
            shutil.rmtree(raw / "none-no-agent", ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "llm_slo.cli", "lab", "run",
                                 "--scenario", name, "--reps", str(args.reps),
                                 "--phases", args.phases, "--out", str(run_dir), *paired])
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            # The run got the same Ctrl-C from the terminal: let it clean up, then stop.
            proc.wait()
            interrupted = True
            print(f"bench_lab: interrupted in {name}; its run is not kept", file=sys.stderr)
            break
        if code != 0:
            failed.append(f"| {name} | run failed (exit {code}) |" + " |" * 13)
            continue
        for kept in [name] + (["none-no-agent"] if paired else []):
            _keep(raw / kept, out / kept)
        done.append(name)
    if done:
        _log_run(out, done, f"python {shlex.join(sys.argv)}", started)
    rows = [_row(name, out / name) for name in SCENARIOS
            if (out / name / "summary.json").is_file()] + failed
    machines = sorted({f"{p.get('hostname', '?')}, {p.get('cpus', '?')} CPUs "
                       f"({p.get('cpu_model', '?')}), kernel {p.get('kernel', '?')}"
                       for p in map(_json, sorted(out.glob("*/provenance.json"))) if p})
    doc = [f"# Incident lab benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
           "", f"Last command: `python {shlex.join(sys.argv)}` (`make bench-lab` runs every "
           "scenario with `--reps 10`). The table covers every scenario directory here; "
           "each row says the commit and start time (UTC) of its run, so a scenario rerun "
           "after a change is visible as such.", "",
           ("Machine: " if len(machines) < 2 else "Machines (each run's provenance.json "
            "says which): ") + ("; ".join(machines) or "?"), "",
           "| scenario | macro-F1 | FPR | FPR baseline | delay median s | after SLO broke s | "
           "missed episodes | joins precision | joins recall | agent CPU % | with BPF % | "
           "RSS MiB | peak RSS MiB | commit | run started | truths by |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
           "Joins: the correlator's span joins of the kernel events whose request the rag's "
           "own truth log names (its lookups by thread, its connections by address), "
           "judged by trace (docs/lab.md, \"Span joins\"); n/a for runs before that log. "
           "FPR: fault domains named in calm cases (baseline, recovery, and the calm part of "
           "a fault phase); FPR baseline: the baseline phase alone. Agent CPU: the agent "
           "process over the load, % of all the machine's CPUs; with BPF: plus the run "
           "time of the BPF programs it holds (they run in the tasks that hit their hooks, "
           "so the process's own time never shows it; n/a for runs before it was "
           "measured). RSS: resident at the end of the load; peak: the agent's own VmHWM "
           "(n/a for runs that recorded ru_maxrss, which was the forking runner's peak: "
           "docs/lab.md, \"Scoring\").",
           "",
           "Delay: fault start to the first attribution naming its domain. After SLO broke: "
           "that attribution's time minus the first moment a request sent during the fault "
           f"visibly broke the SLO (its first token {TTFT_BREACH_MS:g} ms or more after "
           f"sending, its failure, or its end {REQUEST_LATENCY_BREACH_MS / 1000:g} s or "
           "more after sending), per episode: span export plus "
           "what the agent adds. Truths by: how an attribution's truth was set "
           "(docs/lab.md, \"Scoring\"): `requests` (TTFT, error and, since dc43518, "
           "whole-request latency attributions by the faults their bad requests ran "
           "through) or "
           "`active_faults` (every attribution by the faults on at its time; all runs "
           "scored before 2026-12-03).", "",
           _pooled_single_fault(out), "",
           "Per-scenario details: `<scenario>/report.md`, `summary.json`, timelines.", "",
           "Workload TTFT p99 with the agent (scenario `none`) versus without it "
           "(`none-no-agent`, a plain span sink in its place), same seed and load: "
           + _overhead_text(_json(out / "none" / "summary.json"))]
    runs = out / "RUNS.md"  # hand-kept: which run, commit and host each row came from
    if runs.is_file():
        doc += ["", "## Runs (RUNS.md)", "", runs.read_text().rstrip()]
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text("\n".join(doc) + "\n")
    return 130 if interrupted else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
