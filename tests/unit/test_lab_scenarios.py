"""Lab scenarios, --set parsing, phases and the scoring of one repetition (no kernel)."""

from __future__ import annotations

import datetime

import msgspec
import pytest

from llm_slo.cli import main
from llm_slo.config import AgentConfig
from llm_slo.errors import LabError
from llm_slo.incident import FAULT_DOMAINS
from llm_slo.lab.faults import (
    FAULTS,
    SCENARIOS,
    WORKLOAD,
    parse_sets,
    resolve_params,
    undo_all,
)
from llm_slo.lab.lab_score import build_cases, slo_break_delays
from llm_slo.lab.loadgen import RequestResult
from llm_slo.lab.runner import Phases, agent_config
from llm_slo.scoring import FaultEpisode


def test_every_fault_of_the_issue_exists_with_a_known_domain() -> None:
    wanted = {"dns_latency", "dns_failure", "egress_loss", "connect_timeout", "tls_slow",
              "cpu_contention", "cpu_throttle", "memory_pressure", "provider_throttle",
              "provider_error", "retrieval_slowdown", "mixed", "mixed_multi"}
    assert wanted <= set(SCENARIOS)
    assert all(f.domain in FAULT_DOMAINS and f.domain != "unknown" for f in FAULTS.values())
    assert any(len(step) == 2 for step in SCENARIOS["mixed_multi"].steps)


def test_the_lab_runs_the_agent_at_its_shipped_interval(tmp_path) -> None:
    # What the lab measures (CPU, detection delay) is the agent as it ships: the
    # interval paces polls and ticks, a sixth of the agent's CPU at 0.5 s.
    cfg = msgspec.convert(agent_config(tmp_path, "127.0.0.1:0", tmp_path / "pods.json"),
                          AgentConfig)
    assert cfg.interval_s == AgentConfig().interval_s == 1.0


def test_set_overrides_are_validated_against_the_scenario() -> None:
    sc = SCENARIOS["dns_latency"]
    workload = {name: p.default for name, p in WORKLOAD.items()}
    assert resolve_params(sc, {}) == {**workload, "dns.delay_ms": 100}
    assert resolve_params(sc, parse_sets(["dns.delay_ms=150"])) == {
        **workload, "dns.delay_ms": 150.0}
    with pytest.raises(LabError, match=r"no such parameter.*dns\.delay_ms"):
        resolve_params(sc, {"egress.loss_pct": "10"})
    with pytest.raises(LabError, match=r"within 1\.\.10000"):
        resolve_params(sc, {"dns.delay_ms": "0"})
    with pytest.raises(LabError, match="not a number"):
        resolve_params(sc, {"dns.delay_ms": "fast"})
    with pytest.raises(LabError, match="whole number"):
        resolve_params(SCENARIOS["egress_loss"], {"egress.loss_pct": "2.5"})
    with pytest.raises(LabError, match="expected name=value"):
        parse_sets(["dns.delay_ms"])


def test_phases_parse_and_reject_nonsense() -> None:
    assert Phases.parse("baseline=30s,fault=10,recovery=5s") == Phases(30, 10, 5)
    assert Phases.parse("fault=12s") == Phases(fault=12)
    with pytest.raises(LabError, match="bad part"):
        Phases.parse("baseline=ten")
    with pytest.raises(LabError, match="at least 5 s"):
        Phases.parse("baseline=2s")


def test_undo_all_runs_every_undo_and_reports_failures() -> None:
    done: list[str] = []

    def fail() -> None:
        raise OSError("gone")

    undos = [lambda: done.append("a"), fail, lambda: done.append("c")]
    assert undo_all(undos) == ["OSError: gone"]
    assert done == ["c", "a"] and undos == []


def _sli_att(at_s: float, sli: str, domain: str, abstain: bool = False) -> dict:
    """An attribution of ``sli`` at Unix time ``at_s``."""
    ts = datetime.datetime.fromtimestamp(at_s, datetime.UTC).isoformat()
    return {"incident_id": f"inc-{ts}", "timestamp": ts, "predicted_fault_domain": domain,
            "abstain": abstain, "confidence": 0.9, "slo_impact": {"sli": sli},
            "fault_hypotheses": [{"domain": domain}]}


def test_cases_truth_grace_calm_seconds_and_missed_episodes() -> None:
    t0 = 1_800_000_000.0
    phases = [{"name": "baseline", "start": t0, "end": t0 + 10},
              {"name": "fault", "start": t0 + 10, "end": t0 + 20},
              {"name": "recovery", "start": t0 + 20, "end": t0 + 30}]
    faults = [{"name": "dns_latency", "domain": "network_dns", "start": t0 + 10,
               "end": t0 + 20}]

    atts = [_sli_att(t0 + 2.5, "ttft_ms", "network_egress"),  # false alarm in baseline
            # abstention: not a false alarm
            _sli_att(t0 + 4.5, "ttft_ms", "unknown", abstain=True),
            _sli_att(t0 + 11.2, "ttft_ms", "network_dns"),
            # within the grace after the fault: correct
            _sli_att(t0 + 21.0, "ttft_ms", "network_dns")]
    cases, rows = build_cases(atts, faults, phases, grace_s=3.0)
    attributed = [c for c in cases if c.case_id]
    assert [(c.actual, c.predicted) for c in attributed] == [
        ("none", "network_egress"), ("none", "unknown"), ("network_dns", "network_dns"),
        ("network_dns", "network_dns")]
    calm = [c for c in cases if not c.case_id and c.actual == "none"]
    # seconds 0..9 end by the fault start; 24..29 start after the fault end + grace
    assert len(calm) == 10 + 6
    assert sum(c.predicted == "network_egress" for c in calm) == 1
    assert sum(c.predicted == "unknown" for c in calm) == 1
    assert all(r.kind in ("attribution", "calm_second") for r in rows)

    missed, _ = build_cases([], faults, phases, grace_s=3.0)
    assert [(c.actual, c.predicted) for c in missed if c.actual != "none"] == [
        ("network_dns", "none")]


def _req(sent_s: float, ttft_ms: float | None, total_ms: float, error: str = "") -> RequestResult:
    return RequestResult(seq=0, request_id="r", size="short", max_tokens=16, offset_s=0.0,
                         start_unix_nano=round(sent_s * 1e9), ttft_ms=ttft_ms,
                         total_ms=total_ms, status=0 if error else 200, tokens=0, error=error)


def test_slo_break_is_the_first_late_token_or_failure_of_the_episode() -> None:
    t0 = 1_800_000_000.0
    slow = FaultEpisode(domain="network_dns", start=t0, end=t0 + 10)
    failing = FaultEpisode(domain="provider_error", start=t0 + 20, end=t0 + 30)
    calm = FaultEpisode(domain="network_egress", start=t0 + 40, end=t0 + 50)
    requests = [
        _req(t0 - 1.0, 5000.0, 6000.0),  # before the fault: not its doing
        _req(t0 + 0.1, 300.0, 900.0),  # in time
        _req(t0 + 0.2, 950.0, 2000.0),  # late: seen at its first token, 1.15 s in
        _req(t0 + 0.3, None, 1100.0, error="timeout"),  # failed: seen at its end, 1.4 s
        _req(t0 + 20.5, None, 100.0, error="http_502"),
        _req(t0 + 41.0, 100.0, 500.0),
    ]
    got = slo_break_delays([slow, failing, calm], requests)
    assert got[0] == pytest.approx(1.15)
    assert got[1] == pytest.approx(0.6)
    assert got[2] is None


def test_a_judged_slis_truth_is_the_faults_its_bad_requests_ran_through() -> None:
    t0 = 1_800_000_000.0
    phases = [{"name": "baseline", "start": t0, "end": t0 + 10},
              {"name": "fault", "start": t0 + 10, "end": t0 + 20},
              {"name": "recovery", "start": t0 + 20, "end": t0 + 30},
              {"name": "fault", "start": t0 + 30, "end": t0 + 40},
              {"name": "recovery", "start": t0 + 40, "end": t0 + 50}]
    faults = [{"name": "cpu_contention", "domain": "cpu_contention", "start": t0 + 10,
               "end": t0 + 20},
              {"name": "provider_throttle", "domain": "provider_throttle", "start": t0 + 30,
               "end": t0 + 40}]
    requests = [_req(t0 + 19.0, 900.0, 3000.0),  # late in the neighbour's last second
                _req(t0 + 31.0, None, 50.0, error="http_429")]

    atts = [_sli_att(t0 + 21.0, "ttft_ms", "cpu_contention"),  # its late request ends at 22 s
            # past burn, but 2.5 s after it
            _sli_att(t0 + 24.5, "ttft_ms", "unknown", abstain=True),
            _sli_att(t0 + 32.0, "ttft_ms", "unknown", abstain=True),  # past burn in the 429s
            _sli_att(t0 + 32.0, "error_rate", "provider_throttle"),
            _sli_att(t0 + 33.0, "retrieval_latency_ms", "unknown", abstain=True)]  # not judged
    cases, _ = build_cases(atts, faults, phases, grace_s=3.0, requests=requests)
    assert [(c.actual, c.predicted) for c in cases if c.case_id] == [
        ("cpu_contention", "cpu_contention"), ("cpu_contention", "unknown"),
        ("none", "unknown"), ("provider_throttle", "provider_throttle"),
        ("provider_throttle", "unknown")]
    # The abstention at 24.5 s is a case of the neighbour, so its second is not calm.
    calm = {round(c.ts - t0) for c in cases if not c.case_id and c.actual == "none"}
    assert 24 not in calm and 25 in calm
    # Without the client's results (or with none recorded) every attribution is judged
    # by the faults active then.
    for no_results in (None, []):
        cases, _ = build_cases(atts, faults, phases, grace_s=3.0, requests=no_results)
        assert [c.actual for c in cases if c.case_id] == [
            "cpu_contention", "none", "provider_throttle", "provider_throttle",
            "provider_throttle"]


def test_a_slow_whole_request_is_judged_by_the_fault_it_ran_through() -> None:
    # Memory pressure stalls requests for the whole fault: those sent at its start end
    # just over 3 s after it, and so does the agent's request-latency attribution of
    # them. By the faults active then (3 s grace) that was a false positive.
    t0 = 1_800_000_000.0
    phases = [{"name": "baseline", "start": t0, "end": t0 + 10},
              {"name": "fault", "start": t0 + 10, "end": t0 + 30},
              {"name": "recovery", "start": t0 + 30, "end": t0 + 40}]
    faults = [{"name": "memory_pressure", "domain": "memory_pressure", "start": t0 + 10,
               "end": t0 + 30}]
    requests = [_req(t0 + 1.0, 120.0, 7900.0),  # under the 8 s objective: not bad
                _req(t0 + 10.2, 150.0, 22_900.0)]  # ends at 33.1 s

    atts = [_sli_att(t0 + at, "request_latency_ms", "memory_pressure")
            for at in (8.9, 33.3, 36.5)]
    cases, _ = build_cases(atts, faults, phases, grace_s=3.0, requests=requests)
    assert [c.actual for c in cases if c.case_id] == ["none", "memory_pressure", "none"]
    # The slow request broke the SLO at its end, 22.9 s in; no late first token did.
    episode = FaultEpisode(domain="memory_pressure", start=t0 + 10, end=t0 + 30)
    assert slo_break_delays([episode], requests)[0] == pytest.approx(23.1)


def test_a_fault_counts_only_for_what_it_did_before_the_attribution() -> None:
    t0 = 1_800_000_000.0
    phases = [{"name": "baseline", "start": t0, "end": t0 + 10},
              {"name": "fault", "start": t0 + 10, "end": t0 + 30}]
    faults = [{"name": "dns_latency", "domain": "network_dns", "start": t0 + 10,
               "end": t0 + 20},
              {"name": "cpu_contention", "domain": "cpu_contention", "start": t0 + 21,
               "end": t0 + 30}]
    # Late first token at 19.9 s, the request streams on until 26 s.
    requests = [_req(t0 + 19.0, 900.0, 7000.0),
                _req(t0 + 24.0, None, 100.0, error="dropped")]  # never sent: not judged

    atts = [_sli_att(t0 + 20.5, "ttft_ms", "network_dns"),  # the neighbour had not started
            # neighbour on, the first token was before
            _sli_att(t0 + 22.0, "ttft_ms", "cpu_contention"),
            # the dropped request is no failure
            _sli_att(t0 + 24.5, "error_rate", "cpu_contention")]
    cases, _ = build_cases(atts, faults, phases, grace_s=3.0, requests=requests)
    assert [(c.truths, c.actual) for c in cases if c.case_id] == [
        (("network_dns",), "network_dns"), (("network_dns",), "network_dns"),
        ((), "none")]
    # The neighbour has no case of its own from its start on: a missed episode, though
    # attributions came while it was on.
    assert [(c.actual, c.predicted) for c in cases if not c.case_id and c.actual != "none"
            ] == [("cpu_contention", "none")]


def test_the_fault_on_now_is_the_row_when_two_touched_the_requests() -> None:
    t0 = 1_800_000_000.0
    faults = [{"name": "dns_latency", "domain": "network_dns", "start": t0 + 10,
               "end": t0 + 20},
              {"name": "cpu_contention", "domain": "cpu_contention", "start": t0 + 20.5,
               "end": t0 + 30}]
    requests = [_req(t0 + 19.0, 900.0, 3000.0), _req(t0 + 20.6, 800.0, 3000.0)]
    cases, _ = build_cases([_sli_att(t0 + 21.5, "ttft_ms", "unknown", abstain=True)],
                           faults, [], grace_s=3.0, requests=requests)
    assert cases[0].truths == ("cpu_contention", "network_dns")
    assert cases[0].actual == "cpu_contention"


def test_lab_list_shows_every_scenario_with_its_parameters_and_defaults(capsys) -> None:
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    for name, p in WORKLOAD.items():
        assert f"--set {name}={p.default:g}" in out
    for sc in SCENARIOS.values():
        assert sc.name in out and sc.description in out
        for name, p in sc.params().items():
            assert f"--set {name}={p.default:g}" in out, (sc.name, name)
    assert "--set dns.delay_ms=" in out and "ground truth: network_dns" in out


def test_provider_faults_pass_retry_after_and_status_and_restore_them() -> None:
    calls: list[dict[str, float]] = []

    class Lab:
        def provider_set(self, **knobs: float) -> None:
            calls.append(knobs)

    for fault, sets, on, off in (
            ("provider_throttle", ["provider.retry_after_s=5"],
             {"throttle_rate": 0.5, "retry_after_s": 5},
             {"throttle_rate": 0.0, "retry_after_s": 1}),
            ("provider_error", ["provider.error_status=502", "provider.error_pct=20"],
             {"error_rate": 0.2, "error_status": 502},
             {"error_rate": 0.0, "error_status": 503})):
        calls.clear()
        undo = FAULTS[fault].inject(Lab(), resolve_params(SCENARIOS[fault], parse_sets(sets)))
        undo()
        assert calls == [on, off], fault
    with pytest.raises(LabError, match=r"within 500\.\.599"):
        resolve_params(SCENARIOS["provider_error"], {"provider.error_status": "429"})


def test_workload_parameters_apply_to_every_scenario() -> None:
    for sc in (SCENARIOS["none"], SCENARIOS["mixed"]):
        got = resolve_params(sc, parse_sets(["load.rps=10", "provider.ttft_ms=300"]))
        assert got["load.rps"] == 10 and got["provider.ttft_ms"] == 300
        assert got["vectordb.base_latency_ms"] == 5
    with pytest.raises(LabError, match=r"load\.rps=0: must be within 0\.1\.\.200"):
        resolve_params(SCENARIOS["none"], {"load.rps": "0"})


def test_retrieval_slowdown_goes_back_to_the_base_latency() -> None:
    calls: list[dict[str, float]] = []

    class Lab:
        def vectordb_set(self, **knobs: float) -> None:
            calls.append(knobs)

    sc = SCENARIOS["retrieval_slowdown"]
    undo = FAULTS["retrieval_slowdown"].inject(
        Lab(), resolve_params(sc, parse_sets(["vectordb.base_latency_ms=40"])))
    undo()
    assert calls == [{"latency_ms": 800}, {"latency_ms": 40}]
