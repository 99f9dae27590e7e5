"""``sloctl lab rescore``: the engine again over a finished lab run's recordings.

Each repetition of ``sloctl lab run`` keeps what the agent received: its ProbeEvents
(``probe-events.jsonl``) and spans (``spans.jsonl``). This replays them through the
engine (:func:`llm_slo.replay.replay`) with the run's own agent config or another
engine section, and scores the new attributions against the same ground truth
(``faults.json``, ``phases.json``) with the lab's scoring. It answers "what would this
setting have said about these faults" in seconds instead of a rerun.

With ``recorded=True`` (``--recorded``) nothing is replayed: the live agent's own
attributions are scored again with this version's scoring, which is what a change of
the scoring (not of the agent) does to a finished run. The figures that do not depend
on the scoring (overhead, identity, the client's) are carried over from the run's
summary.json, and the run's report is written again beside it. Span joins are judged
again (both ways) when the run kept the rag's truth log, and burn-rate errors against
the client's results, whose judged SLIs are the scoring's.

A replay is an approximation of the live agent, and says so in its output: the engine ticks
every ``interval_s`` of recorded time instead of also waking on a breach, records count
at their timestamps rather than when they arrived (so detection delays lack the span
export time), and a service's cgroups come from the recorded events' own pid/cgroup
pairs instead of /proc. Lab results stay those of live runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec

from llm_slo.config import AgentConfig
from llm_slo.errors import ConfigError
from llm_slo.lab.join_truth import judge_joins, run_truth
from llm_slo.lab.lab_score import (
    GRACE_S,
    RepResult,
    abstentions,
    build_cases,
    burn_rate_errors,
    calm_by_phase,
    fault_episodes,
    fpr_by_phase,
    peak_rss_mib,
    pooled_correlation,
    read_agent_stats,
    read_records,
    read_requests,
    recorded_correlation_config,
    slo_break_delays,
    summarize,
    truth_rule,
    write_predictions,
)
from llm_slo.lab.runner import git_output, write_artifacts
from llm_slo.replay import replay
from llm_slo.scoring import CorrelationScore, correlation_scores, score

APPROXIMATION = ("replayed, not live: ticks every interval_s of recorded time (no wake on "
                 "a breach), records at their timestamps (delays lack span export), "
                 "cgroups from the recorded events")


def _cgroup_of_pid(probe_events: Path) -> dict[int, int]:
    """pid -> cgroup id as the kernel reported them: what the live agent read in /proc
    (a pid's latest cgroup, as /proc would say after a move)."""
    out: dict[int, int] = {}
    dec = msgspec.json.Decoder()
    with probe_events.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ev = dec.decode(line)
            except msgspec.DecodeError as e:
                raise ConfigError(f"{probe_events}:{n}: not JSON: {e}") from e
            if ev.get("pid") and ev.get("cgroup_id"):
                out[ev["pid"]] = ev["cgroup_id"]
    return out


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged key by key, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def _reps(run_dir: Path, out_dir: Path) -> list[Path]:
    """The run's repetition directories, once it is clear ``out_dir`` overwrites none."""
    reps = sorted(p for p in run_dir.glob("rep-*") if p.is_dir())
    if not reps:
        raise ConfigError(f"{run_dir}: no rep-NN directories (not a `sloctl lab run` output)")
    out = out_dir.resolve()
    if out == run_dir.resolve() or any(out.is_relative_to(r.resolve()) for r in reps):
        raise ConfigError(f"--out {out_dir} is the run {run_dir} or one of its "
                          "repetitions: their live results would be overwritten")
    return reps


def rescore(run_dir: Path, out_dir: Path, engine: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Replay every repetition of ``run_dir`` into ``out_dir``/rep-NN and score it.

    ``engine`` (an ``engine`` config section, as in a config file) is merged over each
    repetition's recorded agent config (``rep-NN/agent.json``): what it sets changes,
    the run's other settings stay. The tick is that config's ``interval_s``; the active
    signals are the probes that ran (configured minus ``agent-stats.json`` failures).
    Returns (and writes to ``out_dir``/summary.json) the pooled score with the run and
    the engine settings used.
    """
    reps = _reps(run_dir, out_dir)
    truth = run_truth(run_dir)
    cases, episodes, rows = [], [], []
    calm: list[dict[str, list[int]]] = []
    used: list[dict[str, Any]] = []
    joins: list[CorrelationScore] = []
    for rep in reps:
        missing = [n for n in ("spans.jsonl", "probe-events.jsonl", "agent.json",
                               "faults.json", "phases.json") if not (rep / n).is_file()]
        if missing:
            raise ConfigError(f"{rep}: missing {', '.join(missing)} (spans.jsonl is "
                              "recorded by lab runs since outputs.spans existed)")
        try:
            # Defaults spelled out first, so that a partial table (one likelihood cell)
            # changes that cell, not the whole table.
            recorded = msgspec.to_builtins(msgspec.convert(
                json.loads((rep / "agent.json").read_text()), AgentConfig))
            agent = msgspec.convert(
                _merged(recorded, {"engine": engine}) if engine else recorded, AgentConfig)
        except (ValueError, msgspec.ValidationError) as e:
            raise ConfigError(f"{rep / 'agent.json'} (with the engine settings given): "
                              f"{e}") from e
        used.append(msgspec.to_builtins(agent.engine))
        failed: dict[str, Any] = {}
        if (rep / "agent-stats.json").is_file():
            failed = json.loads((rep / "agent-stats.json").read_text()).get("failures") or {}
        target = out_dir / rep.name
        replay(str(rep / "spans.jsonl"), str(rep / "probe-events.jsonl"), str(target),
               agent.engine, tick_s=agent.interval_s,
               cgroup_of_pid=_cgroup_of_pid(rep / "probe-events.jsonl"),
               active_signals=[s for s in agent.signal_set if s not in failed])
        faults = json.loads((rep / "faults.json").read_text())
        requests = read_requests(rep)
        phases = json.loads((rep / "phases.json").read_text())
        rep_cases, rep_rows = build_cases(read_records(target / "attributions.jsonl"), faults,
                                          phases, requests=requests)
        calm.append(calm_by_phase(rep_cases, phases))
        if truth is not None:
            joins.append(judge_joins(rep / "spans.jsonl", rep / "probe-events.jsonl", truth,
                                     agent.engine.correlation))
        cases += rep_cases
        rows += [(int(rep.name.removeprefix("rep-")), r) for r in rep_rows]
        episodes += fault_episodes(faults)
    summary: dict[str, Any] = msgspec.to_builtins(
        score(cases, episodes, pooled_correlation(joins) if joins else None, grace_s=GRACE_S))
    summary.update({"run": str(run_dir), "reps": len(reps), "note": APPROXIMATION,
                    "fpr_by_phase": fpr_by_phase(calm),
                    "abstentions": abstentions(r for _, r in rows),
                    # One entry when every repetition ran with the same settings.
                    "engine": used[0] if all(u == used[0] for u in used) else used})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_predictions(out_dir / "predictions.csv", rows)
    return summary


def rescore_recorded(run_dir: Path, out_dir: Path) -> dict[str, Any]:
    """The live attributions of ``run_dir`` scored again into ``out_dir``, with the
    artifacts a run writes (:func:`~llm_slo.lab.runner.write_artifacts`); its
    provenance.json is the run's, with a ``rescored`` entry."""
    reps = _reps(run_dir, out_dir)
    try:
        live = json.loads((run_dir / "summary.json").read_text())
        provenance = json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{run_dir}: no readable summary.json and provenance.json "
                          f"(not a finished `sloctl lab run` output): {e}") from e
    truth = run_truth(run_dir)
    results = []
    for rep in reps:
        try:
            faults = json.loads((rep / "faults.json").read_text())
            phases = json.loads((rep / "phases.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{rep}: {e}") from e
        requests = read_requests(rep)
        attributions = read_records(rep / "attributions.jsonl")
        cases, rows = build_cases(attributions, faults, phases, requests=requests)
        episodes = fault_episodes(faults)
        results.append(RepResult(
            rep=int(rep.name.removeprefix("rep-")), rep_dir=rep, cases=cases,
            episodes=episodes, predictions=rows,
            score=score(cases, episodes, grace_s=GRACE_S),
            correlation=(judge_joins(rep / "spans.jsonl", rep / "probe-events.jsonl", truth,
                                     recorded_correlation_config(rep))
                         if truth is not None else correlation_scores((), ())),
            identity=correlation_scores((), ()), cpu_pct=0.0, bpf_cpu_pct=None,
            rss_mb=0.0, rss_peak_mb=None,
            bpf_ns_per_run=None, ttft_p99_ms=None, requests=0, errors=0,
            slo_break_delays=slo_break_delays(episodes, requests or []),
            burn_rate_errors=burn_rate_errors(attributions, requests or []),
            truth_rule=truth_rule(requests), calm_by_phase=calm_by_phase(cases, phases)))
    summary = summarize(results, scenario=live.get("scenario", "?"),
                        params=live.get("params") or {})
    for kept in ("overhead", "identity", "client",
                 "latency_overhead_pct", "request_latency_overhead_pct"):
        if kept in live:
            summary[kept] = live[kept]
    if "identity" not in live and "correlation" in live:
        # Before span joins were judged, "correlation" meant ProbeEvent -> pod.
        summary["identity"] = live["correlation"]
    summary["ci95"]["agent_cpu_pct"] = live.get("ci95", {}).get("agent_cpu_pct")
    # The peak from each agent's own VmHWM (agent-stats.json); runs that recorded only
    # ru_maxrss, the forking runner's peak as much as the agent's, get none.
    peaks = [p for rep in reps if (p := peak_rss_mib(read_agent_stats(rep))) is not None]
    if isinstance(summary.get("overhead"), dict):
        summary["overhead"]["rss_peak_mb"] = max(peaks) if peaks else None
    out_dir.mkdir(parents=True, exist_ok=True)
    provenance["rescored"] = {"from": str(run_dir), "commit": git_output("rev-parse", "HEAD"),
                              "dirty": bool(git_output("status", "--porcelain",
                                                       "--untracked-files=no")),
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "what": "the live attributions scored again (no replay)"}
    write_artifacts(out_dir, results, summary, provenance, provenance.get("command", ""))
    return summary
