"""Scoring one lab repetition: the agent's outputs against the injector's ground truth.

Cases (scored with the shared :mod:`llm_slo.scoring`):

* every attribution the agent emitted is a case at its timestamp. When its SLI is one
  the client's own results judge (``ttft_ms``: first token 700 ms or more after sending;
  ``error_rate``: a failed request; ``request_latency_ms``: sent to last token 8 s or
  more), its truth is every fault that overlapped a request bad on that SLI (from its
  sending until it was decided bad, and not after the attribution), sent by then and
  still running at most ``grace_s`` before; ``none`` if there is no such request. A
  burn-rate alert carried by bad requests of an earlier fault is about that fault; one
  with no bad request near it is about nothing. The fault still on comes first (the
  confusion matrix's row). For other SLIs, and runs without the client's results, its
  truth is every fault active at that instant or ended at most ``grace_s`` before (the
  evidence window and correlation delay still look at the fault), else ``none``;
* a fault episode without any attribution case whose truth holds its domain, from its
  start on, is a missed case (predicted ``none``);
* every whole second of calm (no fault within ``grace_s``, and no attribution in it
  judged to be about a fault) is a case with truth ``none``: predicted is the domain
  named in that second, ``unknown`` if the agent only abstained, else ``none``. The
  false-positive rate is over these seconds and the attributions judged ``none``.

Correlation precision/recall is about the joins the attribution rests on: ProbeEvents
joined to a pod. Truth comes from the runner, not from the agent: the pids it started in
each pod. A ProbeEvent whose pid the runner did not start (the host, the agent itself,
kernel threads) is not judged.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from llm_slo.correlator import CorrelationConfig
from llm_slo.lab.join_truth import RequestTruth, judge_joins
from llm_slo.lab.loadgen import RequestResult, percentile, read_jsonl
from llm_slo.scoring import (
    NONE,
    UNKNOWN,
    Case,
    CorrelationScore,
    FaultEpisode,
    ScoreSummary,
    correlation_scores,
    delay_summary,
    detection_delays,
    score,
)

GRACE_S = 3.0  # engine window (1 s) + correlation delay (0.5 s) + span export and ticks
# The lab's objectives: the agent's breach thresholds (runner.agent_config), and what
# the client's own results are judged by.
TTFT_BREACH_MS = 700.0
REQUEST_LATENCY_BREACH_MS = 8000.0
ERROR_BUDGET = 0.01  # both lab objectives target 99 %


class Prediction(msgspec.Struct, frozen=True, kw_only=True):
    """One row of predictions.csv."""

    ts: float
    actual: str
    predicted: str
    kind: str  # attribution | calm_second | missed_episode
    confidence: float | None = None
    sli: str = ""
    incident_id: str = ""
    abstain_reason: str = ""  # why the agent abstained: the reason's code (past_burn, ...)


def _bad_on(sli: str, r: RequestResult) -> bool:
    """Whether the client's result of ``r`` is bad on ``sli`` (a request the load
    generator dropped was never sent: nothing judged it)."""
    if r.error == "dropped":
        return False
    if sli == "ttft_ms":
        return r.ttft_ms is not None and r.ttft_ms >= TTFT_BREACH_MS
    if sli == "request_latency_ms":
        return r.total_ms >= REQUEST_LATENCY_BREACH_MS
    return sli == "error_rate" and not r.ok


CLIENT_JUDGED_SLIS = ("ttft_ms", "error_rate", "request_latency_ms")
# summary.json's ``truth_rule``: "requests" when the client's results judged the
# CLIENT_JUDGED_SLIS (build_cases), "active_faults" when they were missing. Runs without
# the key were scored before the requests rule existed: every truth by active faults.
TRUTH_RULES = ("requests", "active_faults")


def _bad_requests(requests: list[RequestResult], sli: str
                  ) -> list[tuple[float, float, float]]:
    """(sent, bad by, ended) of each request bad on ``sli``, Unix s. A late first token
    was decided by its arrival; a failure or a slow whole request, by its end."""
    out = []
    for r in requests:
        if _bad_on(sli, r):
            sent = r.start_unix_nano / 1e9
            end = sent + r.total_ms / 1e3
            decided = sent + r.ttft_ms / 1e3 if sli == "ttft_ms" and r.ttft_ms else end
            out.append((sent, decided, end))
    return out


def slo_break_delays(episodes: list[FaultEpisode], requests: list[RequestResult]
                     ) -> list[float | None]:
    """Per episode: seconds from its start until the first request sent during it was
    seen to break the SLO: at its first token if that came ``TTFT_BREACH_MS`` or more
    after sending, at its end if it failed or took ``REQUEST_LATENCY_BREACH_MS`` or
    more. None if no request broke it.

    That is the earliest a detector reading the service's telemetry can know (a span
    ends at the token, or with the failure); the detection delay minus this is the time
    the agent took (see ``summarize``).
    """
    decided = [(sent, by) for sli in CLIENT_JUDGED_SLIS
               for sent, by, _ in _bad_requests(requests, sli)]
    out: list[float | None] = []
    for ep in episodes:
        seen = [by for sent, by in decided if ep.start <= sent <= ep.end]
        out.append(min(seen) - ep.start if seen else None)
    return out


class RepResult(msgspec.Struct, kw_only=True):
    rep: int
    rep_dir: Path
    cases: list[Case]
    episodes: list[FaultEpisode]
    predictions: list[Prediction]
    score: ScoreSummary
    correlation: CorrelationScore  # span joins, judged by the rag's truth log
    identity: CorrelationScore  # ProbeEvent -> pod, judged by the pids the runner started
    cpu_pct: float  # the agent process's own CPU, % of the machine's CPUs
    bpf_cpu_pct: float | None  # its BPF programs' run time, which runs in other tasks
    rss_mb: float  # MiB resident at the end of the load
    rss_peak_mb: float | None  # MiB, the agent's peak (its VmHWM)
    bpf_ns_per_run: float | None
    ttft_p99_ms: float | None
    requests: int
    errors: int
    slo_break_delays: list[float | None]  # per episode, aligned with ``episodes``
    # Per phase name: [fault domains named, cases] over the cases with no true fault.
    calm_by_phase: dict[str, list[int]] = msgspec.field(default_factory=dict)
    burn_rate_errors: list[float] = msgspec.field(default_factory=list)
    truth_rule: str = "requests"  # TRUTH_RULES: how the attributions' truths were set


def _ts(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def write_predictions(path: Path, rows: Iterable[tuple[int, Prediction]]) -> None:
    """``predictions.csv``: one row per (repetition, case)."""
    with path.open("w") as f:
        f.write("rep,ts,actual,predicted,confidence,sli,incident_id,case,abstain_reason\n")
        for rep, p in rows:
            f.write(",".join(str(x) for x in (
                rep, f"{p.ts:.3f}", p.actual, p.predicted,
                "" if p.confidence is None else f"{p.confidence:.3f}", p.sli,
                p.incident_id, p.kind, p.abstain_reason)) + "\n")


def read_predictions(path: Path) -> list[Case]:
    """The scored cases of a ``predictions.csv`` (every repetition), for scoring runs
    together: truth, prediction and time; ranked hypotheses are not in the file."""
    with path.open(newline="") as f:
        return [Case(actual=row["actual"].split("+")[0], predicted=row["predicted"],
                     truths=tuple(row["actual"].split("+")), ts=float(row["ts"]))
                for row in csv.DictReader(f)]


def read_requests(rep_dir: Path) -> list[RequestResult] | None:
    """The client's results of a repetition; None when it has none recorded."""
    try:
        return read_jsonl(rep_dir / "requests.jsonl")
    except FileNotFoundError:
        return None


def fault_episodes(faults: list[dict[str, Any]]) -> list[FaultEpisode]:
    """The injector's faults (a repetition's faults.json) as scoring episodes."""
    return [FaultEpisode(domain=f["domain"], start=f["start"], end=f["end"]) for f in faults]


def truth_rule(requests: list[RequestResult] | None) -> str:
    """The TRUTH_RULES entry that build_cases applies with these client results."""
    return TRUTH_RULES[0] if requests else TRUTH_RULES[1]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line; none if the file is missing."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def abstain_code(attribution: dict[str, Any]) -> str:
    """An abstaining attribution's reason code (``past_burn``, ``low_confidence``, ...:
    the text before the reason's colon); "" when it named a domain."""
    if not attribution.get("abstain"):
        return ""
    return (attribution.get("abstain_reason") or "unstated").split(":", 1)[0].strip()


def abstentions(rows: Iterable[Prediction]) -> dict[str, dict[str, int]]:
    """Abstaining attributions counted by reason: ``about_a_fault`` (judged to be about
    an injected fault: each costs that fault's recall) and ``calm`` (harmless)."""
    out: dict[str, dict[str, int]] = {"about_a_fault": {}, "calm": {}}
    for p in rows:
        if p.kind == "attribution" and p.abstain_reason:
            side = out["calm" if p.actual == NONE else "about_a_fault"]
            side[p.abstain_reason] = side.get(p.abstain_reason, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def build_cases(attributions: list[dict[str, Any]], faults: list[dict[str, Any]],
                phases: list[dict[str, Any]], grace_s: float = GRACE_S,
                requests: list[RequestResult] | None = None
                ) -> tuple[list[Case], list[Prediction]]:
    """Cases and prediction rows of one repetition; see the module docstring."""
    cases: list[Case] = []
    rows: list[Prediction] = []

    def active_at(t: float) -> list[dict[str, Any]]:
        return [f for f in faults if f["start"] <= t <= f["end"] + grace_s]

    bad = ({sli: _bad_requests(requests, sli) for sli in CLIENT_JUDGED_SLIS}
           if requests else {})

    def truths_of(t: float, sli: str) -> tuple[str, ...]:
        if sli not in bad:
            return tuple(dict.fromkeys(f["domain"] for f in active_at(t)))
        # Sent by t and not over before t - grace_s: "still running", not "seen bad by
        # the client by t", since the service knows a late first token before a starved
        # client does. What made it bad ran from its sending until it was decided.
        touched = [(sent, min(decided, t)) for sent, decided, end in bad[sli]
                   if sent <= t and end >= t - grace_s]
        hit = [f for f in faults
               if any(f["start"] <= until and sent <= f["end"] for sent, until in touched)]
        # The fault on now first, then the one just over: the confusion matrix's row.
        hit.sort(key=lambda f: (not f["start"] <= t <= f["end"],
                                not f["start"] <= t <= f["end"] + grace_s, -f["start"]))
        return tuple(dict.fromkeys(f["domain"] for f in hit))

    timed = sorted(((_ts(a["timestamp"]), a) for a in attributions), key=lambda x: x[0])
    about_a_fault: list[float] = []  # when attributions judged to be about a fault came
    for t, a in timed:
        truths = truths_of(t, a.get("slo_impact", {}).get("sli", ""))
        predicted = UNKNOWN if a.get("abstain") else a["predicted_fault_domain"]
        ranked = tuple(h["domain"] for h in a.get("fault_hypotheses") or ())
        actual = truths[0] if truths else NONE
        if not truths and phases and t < phases[0]["start"]:
            continue  # before the schedule: not part of the run
        if truths:
            about_a_fault.append(t)
        cases.append(Case(actual=actual, predicted=predicted, ranked=ranked or (predicted,),
                          truths=truths, ts=t, case_id=a.get("incident_id", "")))
        rows.append(Prediction(ts=t, actual="+".join(truths) or NONE, predicted=predicted,
                               kind="attribution", confidence=a.get("confidence"),
                               sli=a.get("slo_impact", {}).get("sli", ""),
                               incident_id=a.get("incident_id", ""),
                               abstain_reason=abstain_code(a)))
    attributed = list(cases)
    for f in faults:
        # Each lab scenario injects a domain at most once per repetition, so a case of
        # this domain from the fault's start on is about this episode.
        if not any(f["domain"] in c.all_truths and c.ts is not None and c.ts >= f["start"]
                   for c in attributed):
            cases.append(Case(actual=f["domain"], predicted=NONE, ts=f["start"]))
            rows.append(Prediction(ts=f["start"], actual=f["domain"], predicted=NONE,
                                   kind="missed_episode"))
    if phases:
        t = phases[0]["start"]
        end = phases[-1]["end"]
        while t + 1.0 <= end:
            calm = not any(f["start"] - 1.0 < t <= f["end"] + grace_s for f in faults)
            # A second whose attribution is judged to be about a fault (requests that
            # ran through it were still finishing) is that attribution's case, not calm.
            if calm and not any(t <= ts < t + 1.0 for ts in about_a_fault):
                said = [a for ts, a in timed if t <= ts < t + 1.0]
                named = [a["predicted_fault_domain"] for a in said if not a.get("abstain")]
                predicted = named[0] if named else (UNKNOWN if said else NONE)
                cases.append(Case(actual=NONE, predicted=predicted, ts=t))
                rows.append(Prediction(ts=t, actual=NONE, predicted=predicted,
                                       kind="calm_second"))
            t += 1.0
    return cases, rows


def calm_by_phase(cases: Iterable[Case], phases: list[dict[str, Any]]
                  ) -> dict[str, list[int]]:
    """The cases with no true fault by the phase they fell in (``after`` past the last
    one): per phase name, how many named a fault domain (false positives) of how many."""
    out: dict[str, list[int]] = {}
    for c in cases:
        if c.actual != NONE or c.ts is None:
            continue
        name = next((p["name"] for p in phases if p["start"] <= c.ts < p["end"]), "after")
        counts = out.setdefault(name, [0, 0])
        counts[0] += c.predicted not in (NONE, UNKNOWN)
        counts[1] += 1
    return out


def fpr_by_phase(per_rep: Iterable[dict[str, list[int]]]
                 ) -> dict[str, dict[str, float | int | None]]:
    """False-positive rate per phase, pooled over repetitions' :func:`calm_by_phase`."""
    pooled: dict[str, list[int]] = {}
    for calm in per_rep:
        for name, (fp, n) in calm.items():
            counts = pooled.setdefault(name, [0, 0])
            counts[0] += fp
            counts[1] += n
    return {name: {"fpr": fp / n if n else None, "false_positives": fp, "cases": n}
            for name, (fp, n) in sorted(pooled.items())}


def burn_rate_errors(attributions: list[dict[str, Any]],
                     requests: list[RequestResult]) -> list[float]:
    """Relative error of each attribution's burn rate against the one the client's own
    results give for the same SLI and window (requests finished by the attribution).

    ``ttft_ms``: bad = first token at or after the breach threshold, among requests
    that got one; ``error_rate``: bad = an error, and ``request_latency_ms``: bad = sent
    to last token at or over its breach threshold, among requests sent (the service
    never saw one the load generator dropped). Other SLIs are not judged.
    """
    done = sorted(((r.start_unix_nano / 1e9 + r.total_ms / 1000, r) for r in requests
                   if r.error != "dropped"), key=lambda x: x[0])
    out = []
    for a in attributions:
        sli = a.get("slo_impact", {})
        if sli.get("sli") not in CLIENT_JUDGED_SLIS or not sli.get("burn_rate"):
            continue
        t = _ts(a["timestamp"])
        since = t - 60 * sli["window_minutes"]
        window = [r for end, r in done if since <= r.start_unix_nano / 1e9 and end <= t]
        judged = ([r for r in window if r.ttft_ms is not None] if sli["sli"] == "ttft_ms"
                  else window)
        bad = sum(_bad_on(sli["sli"], r) for r in judged)
        if not judged or not bad:
            continue
        truth = bad / len(judged) / ERROR_BUDGET
        out.append(abs(sli["burn_rate"] - truth) / truth)
    return out


def _identity(probe_events: Path, pids: Mapping[str, set[int]],
              pod_names: Mapping[str, str]) -> CorrelationScore:
    """ProbeEvent -> pod joins against the pids the runner started per pod."""
    role_of_pid = {pid: role for role, ps in pids.items() for pid in ps}
    predicted, truth = set(), set()
    try:
        f = probe_events.open("rb")
    except FileNotFoundError:
        return correlation_scores((), ())
    dec = msgspec.json.Decoder()
    with f:
        for i, line in enumerate(f):
            ev = dec.decode(line)
            role = role_of_pid.get(ev.get("pid", 0))
            if role is None:
                continue
            truth.add((i, pod_names[role]))
            if ev.get("pod"):
                predicted.add((i, ev["pod"]))
    return correlation_scores(predicted, truth)


def _pods(pods_file: Path) -> dict[str, str]:
    data = json.loads(pods_file.read_text())
    return {p["metadata"]["labels"]["app"]: p["metadata"]["name"] for p in data["items"]}


def read_agent_stats(rep_dir: Path) -> dict[str, Any]:
    """A repetition's ``agent-stats.json`` ({} if it has none or it is unreadable)."""
    try:
        stats = json.loads((rep_dir / "agent-stats.json").read_text())
    except (OSError, ValueError):
        return {}
    return stats if isinstance(stats, dict) else {}


def peak_rss_mib(agent_stats: Mapping[str, Any]) -> float | None:
    """The agent's peak RSS in MiB, from its own ``agent-stats.json`` (its VmHWM). Runs
    before 2026-12-04 recorded ``max_rss_kib`` (ru_maxrss) instead, which Linux carries
    over exec from the forking runner: the runner's peak, not the agent's; not used."""
    kib = agent_stats.get("peak_rss_kib")
    return kib / 1024 if isinstance(kib, int | float) and kib > 0 else None


def _machine_pct(cpu_s: float, wall_s: float) -> float:
    """CPU seconds over ``wall_s`` as a percentage of all the machine's CPUs."""
    return 100.0 * cpu_s / wall_s / (os.cpu_count() or 1) if wall_s else 0.0


def recorded_correlation_config(rep_dir: Path) -> CorrelationConfig:
    """The correlation settings the repetition's agent ran with (``agent.json``)."""
    try:
        engine = json.loads((rep_dir / "agent.json").read_text()).get("engine", {})
    except FileNotFoundError:
        return CorrelationConfig()
    return msgspec.convert(engine.get("correlation", {}), CorrelationConfig)


def score_rep(rep: int, rep_dir: Path, faults: list[dict[str, Any]],
              phases: list[dict[str, Any]], pids: Mapping[str, set[int]], *,
              pods_file: Path, agent_cpu_s: float, agent_bpf_s: float, wall_s: float,
              rss_mb: float, truth: RequestTruth | None = None) -> RepResult:
    """Score one finished repetition from the files in ``rep_dir``. ``pids`` and
    ``pods_file`` are the lab's pods, for judging the agent's identity; ``truth`` is the
    rag's truth log, for judging its span joins (none: not judged)."""
    attributions = read_records(rep_dir / "attributions.jsonl")
    requests = read_requests(rep_dir)
    cases, rows = build_cases(attributions, faults, phases, requests=requests)
    episodes = fault_episodes(faults)
    stats = read_agent_stats(rep_dir)
    run_ns = cnt = 0
    for progs in stats.get("bpf", {}).values():
        for s in progs.values():
            run_ns += s["run_time_ns"]
            cnt += s["run_cnt"]
    requests = requests or []
    ttft = [r.ttft_ms for r in requests if r.ok and r.ttft_ms is not None]
    identity = _identity(rep_dir / "probe-events.jsonl", pids, _pods(pods_file))
    correlation = (judge_joins(rep_dir / "spans.jsonl", rep_dir / "probe-events.jsonl",
                               truth, recorded_correlation_config(rep_dir))
                   if truth is not None else correlation_scores((), ()))
    return RepResult(
        rep=rep, rep_dir=rep_dir, cases=cases, episodes=episodes, predictions=rows,
        score=score(cases, episodes, correlation, grace_s=GRACE_S),
        correlation=correlation, identity=identity,
        cpu_pct=_machine_pct(agent_cpu_s, wall_s), bpf_cpu_pct=_machine_pct(agent_bpf_s, wall_s),
        rss_mb=rss_mb, rss_peak_mb=peak_rss_mib(stats),
        bpf_ns_per_run=run_ns / cnt if cnt else None,
        ttft_p99_ms=percentile(sorted(ttft), 99), requests=len(requests),
        errors=sum(1 for r in requests if not r.ok),
        burn_rate_errors=burn_rate_errors(attributions, requests),
        truth_rule=truth_rule(requests),
        slo_break_delays=slo_break_delays(episodes, requests),
        calm_by_phase=calm_by_phase(cases, phases))


def pooled_correlation(scores: Iterable[CorrelationScore]) -> CorrelationScore:
    """Precision and recall over the pooled counts of several repetitions."""
    tp = fp = fn = 0
    for c in scores:
        tp, fp, fn = tp + c.true_positives, fp + c.false_positives, fn + c.false_negatives
    return CorrelationScore(precision=tp / (tp + fp) if tp + fp else None,
                            recall=tp / (tp + fn) if tp + fn else None,
                            true_positives=tp, false_positives=fp, false_negatives=fn)


def pooled_score(results: list[RepResult]) -> ScoreSummary:
    """One score over every repetition's cases and episodes."""
    return score([c for r in results for c in r.cases],
                 [e for r in results for e in r.episodes],
                 pooled_correlation(r.correlation for r in results), grace_s=GRACE_S)


def _p99(rep_dirs: Iterable[Path], field: str) -> float | None:
    """p99 of ``field`` (``ttft_ms`` or ``total_ms``) over the successful requests of
    these repetitions' client results."""
    return percentile(sorted(v for d in rep_dirs for r in read_requests(d) or ()
                             if r.ok and (v := getattr(r, field)) is not None), 99)


def _pct(on: float | None, off: float | None) -> float | None:
    return 100 * (on - off) / off if on is not None and off else None


def latency_overhead(agent: list[RepResult], no_agent: list[RepResult]) -> dict[str, Any]:
    """The workload's p99 with the agent against without it, from repetitions run in
    pairs on the same load (``sloctl lab run --paired-no-agent``), for TTFT and for the
    whole request: over all requests of each side (``pct`` and ``request_pct``, the
    headlines) and per pair for TTFT (their median shows whether one slow stretch of
    the machine carries the pooled figure)."""
    on, off = _p99((r.rep_dir for r in agent), "ttft_ms"), _p99(
        (r.rep_dir for r in no_agent), "ttft_ms")
    req_on, req_off = _p99((r.rep_dir for r in agent), "total_ms"), _p99(
        (r.rep_dir for r in no_agent), "total_ms")
    pairs = [100 * (a.ttft_p99_ms - b.ttft_p99_ms) / b.ttft_p99_ms
             for a, b in zip(agent, no_agent, strict=True)
             if a.ttft_p99_ms is not None and b.ttft_p99_ms]
    return {"ttft_p99_ms_agent": on, "ttft_p99_ms_no_agent": off, "pct": _pct(on, off),
            "request_p99_ms_agent": req_on, "request_p99_ms_no_agent": req_off,
            "request_pct": _pct(req_on, req_off),
            "per_pair_pct": [round(x, 2) for x in pairs],
            "per_pair_pct_median": statistics.median(pairs) if pairs else None}


def _mean_of(values: Iterable[float | None]) -> float | None:
    """Mean of the values measured (None if none was)."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def _median_abs(errors: list[float]) -> dict[str, float | int | None]:
    """Median and p90 relative error over attributions (0.1 = 10 % off)."""
    if not errors:
        return {"median": None, "p90": None, "n": 0}
    return {"median": statistics.median(errors), "p90": percentile(sorted(errors), 90),
            "n": len(errors)}


# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """Student's t two-sided 95 % quantile; past the table, its series in 1/df (within
    0.001 of the exact value from 30 degrees of freedom on)."""
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def ci95(values: list[float], lo: float | None = None, hi: float | None = None
         ) -> dict[str, float | None]:
    """Mean and a 95 % interval of the mean over repetitions (Student's t: ten
    repetitions are too few for the normal's 1.96), kept within ``lo``..``hi`` when the
    metric has bounds (a rate cannot exceed 1)."""
    if not values:
        return {"mean": None, "lo": None, "hi": None}
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "lo": None, "hi": None}
    half = t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    low, high = mean - half, mean + half
    return {"mean": mean, "lo": low if lo is None else max(lo, low),
            "hi": high if hi is None else min(hi, high)}


def summarize(results: list[RepResult], *, scenario: str,
              params: Mapping[str, float]) -> dict[str, Any]:
    """``summary.json``: pooled scores, per-rep CI95, overhead, client latency."""
    pooled = pooled_score(results)
    delays = [d for r in results for d in detection_delays(r.episodes, r.cases, GRACE_S)]
    breaks = [b for r in results for b in r.slo_break_delays]
    after = [d - b for d, b in zip(delays, breaks, strict=True)
             if d is not None and b is not None]
    per_rep_delay = [r.score.detection_delay_s.median for r in results
                     if r.score.detection_delay_s.median is not None]
    bpf = [r.bpf_ns_per_run for r in results if r.bpf_ns_per_run is not None]
    p99 = [r.ttft_p99_ms for r in results if r.ttft_p99_ms is not None]
    out = msgspec.to_builtins(pooled)
    out.update({
        "scenario": scenario, "params": dict(params), "reps": len(results),
        "truth_rule": "+".join(sorted({r.truth_rule for r in results})),
        "detection_delay_s": {**out["detection_delay_s"],
                              "per_episode": [None if d is None else round(d, 3)
                                              for d in delays]},
        # When a request was first seen to break the SLO, and how long the agent took
        # after that.
        "slo_break_s": {**msgspec.to_builtins(delay_summary(breaks)),
                        "per_episode": [None if x is None else round(x, 3) for x in breaks]},
        "detection_after_break_s": msgspec.to_builtins(delay_summary(after)),
        "overhead": {"cpu_pct": sum(r.cpu_pct for r in results) / len(results),
                     "bpf_cpu_pct": _mean_of(r.bpf_cpu_pct for r in results),
                     "cpu_pct_with_bpf": _mean_of(
                         None if r.bpf_cpu_pct is None else r.cpu_pct + r.bpf_cpu_pct
                         for r in results),
                     "rss_mb": max(r.rss_mb for r in results),
                     "rss_peak_mb": max((r.rss_peak_mb for r in results
                                         if r.rss_peak_mb is not None), default=None),
                     "bpf_ns_per_run": sum(bpf) / len(bpf) if bpf else None},
        "identity": msgspec.to_builtins(pooled_correlation(r.identity for r in results)),
        "fpr_by_phase": fpr_by_phase(r.calm_by_phase for r in results),
        "abstentions": abstentions(p for r in results for p in r.predictions),
        "burn_rate_error": _median_abs(
            [e for r in results for e in r.burn_rate_errors]),
        "client": {"requests": sum(r.requests for r in results),
                   "errors": sum(r.errors for r in results),
                   "ttft_p99_ms_per_rep": p99},
        "ci95": {"macro_f1": ci95([r.score.macro_f1 for r in results
                                    if r.score.macro_f1 is not None], 0.0, 1.0),
                 "fpr": ci95([r.score.fpr for r in results if r.score.fpr is not None],
                             0.0, 1.0),
                 "detection_delay_median_s": ci95(per_rep_delay, 0.0),
                 "agent_cpu_pct": ci95([r.cpu_pct for r in results], 0.0),
                 "agent_cpu_pct_with_bpf": ci95([r.cpu_pct + r.bpf_cpu_pct for r in results
                                                 if r.bpf_cpu_pct is not None], 0.0),
                 "agent_rss_peak_mb": ci95([r.rss_peak_mb for r in results
                                            if r.rss_peak_mb is not None], 0.0)},
    })
    return out
