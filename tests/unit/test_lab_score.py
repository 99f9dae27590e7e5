"""predictions.csv read back into cases, why scenarios are pooled before macro-F1, the
burn-rate error against the client, abstentions by reason and the agent's latency
overhead."""

from __future__ import annotations

import csv
import math
import statistics
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from llm_slo.lab.lab_score import (
    Prediction,
    RepResult,
    abstentions,
    build_cases,
    burn_rate_errors,
    calm_by_phase,
    ci95,
    fpr_by_phase,
    latency_overhead,
    peak_rss_mib,
    read_agent_stats,
    read_predictions,
    summarize,
    t95,
    write_predictions,
)
from llm_slo.lab.loadgen import RequestResult, write_jsonl
from llm_slo.scoring import Case, correlation_scores, score


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    write_predictions(path, ((1, Prediction(ts=float(i), actual=a, predicted=p,
                                            kind="attribution"))
                             for i, (a, p) in enumerate(rows)))
    return path


def test_predictions_read_back_with_every_truth(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.csv", [("network_dns+cpu_contention", "cpu_contention"),
                                       ("none", "unknown")])
    overlap, calm = read_predictions(path)
    assert overlap.truths == ("network_dns", "cpu_contention")
    assert overlap.predicted in overlap.all_truths  # on the diagonal, as when it was scored
    assert (calm.actual, calm.predicted, calm.ts) == ("none", "unknown", 1.0)


def test_one_stray_halves_a_one_fault_run_but_not_the_pooled_score(tmp_path: Path) -> None:
    egress = read_predictions(_write(tmp_path / "egress.csv", [
        *[("network_egress", "network_egress")] * 9, ("network_egress", "tls_handshake")]))
    tls = read_predictions(_write(tmp_path / "tls.csv",
                                  [("tls_handshake", "tls_handshake")] * 10))
    # egress alone: its class F1 2*0.9/1.9, tls_handshake 0 (no truth, one prediction)
    assert score(egress).macro_f1 == pytest.approx((2 * 0.9 / 1.9 + 0.0) / 2)
    # pooled: tls_handshake has precision 10/11, recall 1
    pooled = score(egress + tls)
    assert pooled.macro_f1 == pytest.approx((2 * 0.9 / 1.9 + 2 * (10 / 11) / (21 / 11)) / 2)


def test_burn_rate_error_is_against_the_clients_own_bad_share() -> None:
    t0 = 1_800_000_000.0
    requests = [RequestResult(seq=i, request_id=f"r{i}", size="short", max_tokens=16,
                              offset_s=0.0, start_unix_nano=round((t0 + i * 0.5) * 1e9),
                              ttft_ms=900.0 if i < 2 else None if i == 5 else 130.0,
                              total_ms=9000.0 if i in (3, 4) else 400.0, tokens=16,
                              status=200 if i != 5 else 429,
                              error="" if i != 5 else "http_429")
                for i in range(100)]
    at = datetime.fromtimestamp(t0 + 60, UTC).isoformat()

    def alert(sli: str, burn: float) -> dict:
        return {"timestamp": at, "slo_impact": {"sli": sli, "burn_rate": burn,
                                                "window_minutes": 5}}

    # 100 requests, one every 0.5 s, all finished by the alerts at 60 s
    errors = burn_rate_errors([alert("ttft_ms", 2.5), alert("error_rate", 1.0),
                               alert("request_latency_ms", 3.0),
                               alert("retrieval_latency_ms", 9.0)], requests)
    # TTFT: 2 late of the 99 with a first token (the 429 has none) = 2.02x the 1 % budget;
    # errors: 1 of 100 = 1x; whole requests: 2 of 100 took 8 s or more = 2x;
    # retrieval: not judged
    assert errors == pytest.approx([abs(2.5 - 2 / 0.99) / (2 / 0.99), 0.0, 0.5])


def test_scoring_the_file_gives_the_runs_own_score(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    faults = [{"name": "dns_latency", "domain": "network_dns", "start": t0 + 5,
               "end": t0 + 10}]
    phases = [{"name": "all", "start": t0, "end": t0 + 20}]

    def att(s: float, domain: str) -> dict:
        return {"incident_id": f"i{s}", "predicted_fault_domain": domain,
                "abstain": domain == "unknown", "slo_impact": {"sli": "request_latency_ms"},
                "timestamp": datetime.fromtimestamp(t0 + s, UTC).isoformat()}

    cases, rows = build_cases([att(2.5, "cpu_contention"), att(6.0, "network_dns"),
                               att(7.0, "unknown"), att(8.0, "tls_handshake")],
                              faults, phases)
    write_predictions(tmp_path / "p.csv", ((1, r) for r in rows))
    back = score(read_predictions(tmp_path / "p.csv"))
    direct = score(cases)
    assert (back.macro_f1, back.fpr, back.accuracy, back.confusion) == (
        direct.macro_f1, direct.fpr, direct.accuracy, direct.confusion)


def test_a_dropped_request_is_neither_bad_nor_good_for_the_burn_rate() -> None:
    t0 = 1_800_000_000.0

    def req(i: int, error: str) -> RequestResult:
        return RequestResult(seq=i, request_id=f"r{i}", size="short", max_tokens=16,
                             offset_s=0.0, start_unix_nano=round((t0 + i) * 1e9),
                             ttft_ms=None, total_ms=100.0, tokens=0,
                             status=0 if error else 200, error=error)

    requests = [req(0, "timeout"), *(req(i, "") for i in range(1, 50)),
                *(req(i, "dropped") for i in range(50, 100))]
    at = datetime.fromtimestamp(t0 + 120, UTC).isoformat()
    alert = {"timestamp": at, "slo_impact": {"sli": "error_rate", "burn_rate": 2.0,
                                             "window_minutes": 5}}
    # 1 failure among the 50 sent = 2x the 1 % budget; the 50 dropped are not counted
    assert burn_rate_errors([alert], requests) == pytest.approx([0.0])


def test_abstentions_are_counted_by_reason_about_a_fault_or_in_calm(tmp_path: Path) -> None:
    t0 = 1_800_000_000.0
    faults = [{"name": "tls_slow", "domain": "tls_handshake", "start": t0 + 5,
               "end": t0 + 10}]
    phases = [{"name": "all", "start": t0, "end": t0 + 30}]

    def att(s: float, reason: str | None) -> dict:
        return {"incident_id": f"i{s}", "predicted_fault_domain":
                "unknown" if reason else "tls_handshake", "abstain": reason is not None,
                "abstain_reason": reason, "slo_impact": {"sli": "request_latency_ms"},
                "timestamp": datetime.fromtimestamp(t0 + s, UTC).isoformat()}

    _, rows = build_cases([
        att(6.0, "low_confidence: top hypothesis tls_handshake at 0.55 is below 0.60"),
        att(7.0, None), att(8.0, "low_confidence: top hypothesis ..."),
        att(9.0, "past_burn: the burn rate (3.0) comes from earlier ..."),
        att(25.0, "no_deviation: largest deviation 1.2 is below 3.0")], faults, phases)
    assert abstentions(rows) == {"about_a_fault": {"low_confidence": 2, "past_burn": 1},
                                 "calm": {"no_deviation": 1}}
    # and the reason is in the file beside its row, for reading a run's abstentions
    write_predictions(tmp_path / "p.csv", ((1, r) for r in rows))
    with (tmp_path / "p.csv").open(newline="") as f:
        reasons = [r["abstain_reason"] for r in csv.DictReader(f)
                   if r["case"] == "attribution"]
    assert reasons == ["low_confidence", "", "low_confidence", "past_burn",
                                       "no_deviation"]


def _rep_with_ttfts(rep_dir: Path, rep: int, ttfts: list[float]) -> RepResult:
    rep_dir.mkdir(parents=True)
    requests = [RequestResult(seq=i, request_id=f"r{i}", size="short", max_tokens=16,
                              offset_s=0.0, start_unix_nano=i, ttft_ms=t, total_ms=t + 1000,
                              tokens=16, status=200) for i, t in enumerate(ttfts)]
    # a failed stream after its first token: not part of the successful requests' p99
    requests.append(RequestResult(seq=999, request_id="bad", size="short", max_tokens=16,
                                  offset_s=0.0, start_unix_nano=999, ttft_ms=9000.0,
                                  total_ms=9000.0, tokens=3, status=200,
                                  error="stream_truncated"))
    write_jsonl(requests, rep_dir / "requests.jsonl")
    return RepResult(rep=rep, rep_dir=rep_dir, cases=[], episodes=[], predictions=[],
                     score=score([]), correlation=correlation_scores((), ()),
                     identity=correlation_scores((), ()), cpu_pct=0.0,
                     bpf_cpu_pct=None, rss_mb=0.0, rss_peak_mb=None, bpf_ns_per_run=None,
                     ttft_p99_ms=max(ttfts), requests=101, errors=1, slo_break_delays=[])


def test_latency_overhead_over_all_requests_and_per_pair(tmp_path: Path) -> None:
    # The second pair ran in a slow stretch of the machine, on both sides.
    agent = [_rep_with_ttfts(tmp_path / "on/rep-01", 1, [110.0] * 100),
             _rep_with_ttfts(tmp_path / "on/rep-02", 2, [200.0] * 100)]
    no_agent = [_rep_with_ttfts(tmp_path / "off/rep-01", 1, [100.0] * 100),
                _rep_with_ttfts(tmp_path / "off/rep-02", 2, [200.0] * 100)]
    overhead = latency_overhead(agent, no_agent)
    # over all 200 successful requests each side the p99 is the slow stretch's 200 ms:
    # the pooled figure cannot see the 10 % of the first pair; the pairs can
    assert (overhead["ttft_p99_ms_agent"], overhead["ttft_p99_ms_no_agent"]) == (200.0, 200.0)
    assert overhead["pct"] == 0.0
    # the whole request too (TTFT plus a second of streaming here), over the same requests
    assert (overhead["request_p99_ms_agent"], overhead["request_p99_ms_no_agent"]) == (
        1200.0, 1200.0)
    assert overhead["request_pct"] == 0.0
    assert overhead["per_pair_pct"] == [10.0, 0.0]
    assert overhead["per_pair_pct_median"] == pytest.approx(5.0)


def test_overhead_charges_the_agent_its_bpf_programs_and_peak_memory(tmp_path: Path) -> None:
    reps = [msgspec.structs.replace(_rep_with_ttfts(tmp_path / f"rep-0{i}", i, [100.0]),
                                    cpu_pct=cpu, bpf_cpu_pct=bpf, rss_mb=70.0 + i,
                                    rss_peak_mb=peak)
            for i, (cpu, bpf, peak) in enumerate([(0.8, 0.3, 79.0), (0.6, 0.1, 81.5)], 1)]
    overhead = summarize(reps, scenario="s", params={})["overhead"]
    assert overhead["cpu_pct"] == pytest.approx(0.7)  # the process alone, as before
    assert overhead["bpf_cpu_pct"] == pytest.approx(0.2)
    assert overhead["cpu_pct_with_bpf"] == pytest.approx(0.9)
    assert (overhead["rss_mb"], overhead["rss_peak_mb"]) == (72.0, 81.5)  # worst rep
    # a run that measured neither says so rather than reporting the process alone
    bare = [msgspec.structs.replace(r, bpf_cpu_pct=None, rss_peak_mb=None) for r in reps]
    overhead = summarize(bare, scenario="s", params={})["overhead"]
    assert overhead["cpu_pct_with_bpf"] is None and overhead["rss_peak_mb"] is None


def test_peak_rss_comes_from_the_agents_own_stats(tmp_path: Path) -> None:
    (tmp_path / "agent-stats.json").write_text('{"peak_rss_kib": 83456}')
    assert peak_rss_mib(read_agent_stats(tmp_path)) == pytest.approx(81.5)
    # older runs' ru_maxrss was the forking runner's peak: not the agent's, not used
    (tmp_path / "agent-stats.json").write_text('{"max_rss_kib": 183456}')
    assert peak_rss_mib(read_agent_stats(tmp_path)) is None
    (tmp_path / "agent-stats.json").write_text("not json")
    assert read_agent_stats(tmp_path) == {} and peak_rss_mib({}) is None


def test_false_positive_rate_per_phase(tmp_path: Path) -> None:
    phases = [{"name": "baseline", "start": 0.0, "end": 10.0},
              {"name": "fault", "start": 10.0, "end": 20.0},
              {"name": "recovery", "start": 20.0, "end": 30.0}]
    cases = [Case(actual="none", predicted="none", ts=1.0),
             Case(actual="none", predicted="unknown", ts=2.0),  # an abstention: not an FP
             Case(actual="none", predicted="cpu_contention", ts=3.0),
             Case(actual="network_dns", predicted="network_dns", ts=12.0),  # not calm
             Case(actual="none", predicted="network_dns", ts=19.5),  # calm part of a fault
             Case(actual="none", predicted="none", ts=25.0),
             Case(actual="none", predicted="tls_handshake", ts=31.0)]  # past the schedule
    calm = calm_by_phase(cases, phases)
    assert calm == {"baseline": [1, 3], "fault": [1, 1], "recovery": [0, 1], "after": [1, 1]}
    rep2 = {"baseline": [0, 5]}
    by_phase = fpr_by_phase([calm, rep2])
    assert by_phase["baseline"] == {"fpr": 1 / 8, "false_positives": 1, "cases": 8}
    assert by_phase["recovery"]["fpr"] == 0.0 and list(by_phase) == sorted(by_phase)


def test_ci95_uses_students_t_and_keeps_rates_within_bounds() -> None:
    assert t95(9) == 2.262 and t95(30) == 2.042
    assert t95(31) == pytest.approx(2.0395, abs=5e-4)  # the series past the table
    assert t95(120) == pytest.approx(1.9799, abs=5e-4)
    values = [0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    ci = ci95(values, 0.0, 1.0)
    half = 2.262 * statistics.stdev(values) / math.sqrt(10)
    assert ci["mean"] == pytest.approx(0.99)
    assert ci["lo"] == pytest.approx(0.99 - half) and ci["hi"] == 1.0  # not 1.0071
    assert ci95([0.5]) == {"mean": 0.5, "lo": None, "hi": None}
    assert ci95([]) == {"mean": None, "lo": None, "hi": None}
