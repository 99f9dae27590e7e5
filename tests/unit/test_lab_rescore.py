"""``sloctl lab rescore`` over a recorded repetition: the engine replays the spans and
ProbeEvents a lab run kept and is scored against the run's own faults; another engine
config changes the answer, the recording does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from llm_slo.cli import main
from llm_slo.errors import ConfigError
from llm_slo.events import LatencyAggregate
from llm_slo.identity import Identity
from llm_slo.lab.rescore import rescore
from llm_slo.lab.runner import agent_config
from llm_slo.probe_event import ProbeEventBuilder
from llm_slo.spans import SPAN_KIND_SERVER, Span

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
PID, CGROUP = 4242, 777
FAULT_S = (20, 30)  # DNS answers slow from second 20 to 30 of 40
BUILDER = ProbeEventBuilder("lab-node", lambda cg: Identity(cgroup_id=cg, cgroup_path="/rag"))


def _record(rep: Path) -> None:
    """40 s of a rag service at 8 requests/s; slow DNS (and so TTFT) in the fault."""
    rep.mkdir(parents=True)
    enc = msgspec.json.Encoder()
    spans, events = [], []
    for i in range(40 * 8):
        t = T0 + i * NS // 8
        faulty = FAULT_S[0] * NS <= t - T0 < FAULT_S[1] * NS
        ttft = 1250.0 if faulty else 120.0 + i % 7
        spans.append(Span(
            trace_id=f"{i + 1:032x}", span_id=f"{i + 1:016x}", name="chat",
            kind=SPAN_KIND_SERVER, start_unix_nano=t - int(ttft * 1e6) - 20_000_000,
            end_unix_nano=t, attributes={"gen_ai.operation.name": "chat",
                                         "llm.slo.ttft_ms": ttft},
            resource={"service.name": "rag", "process.pid": PID,
                      "k8s.namespace.name": "llm", "k8s.cluster.name": "lab"}))
        if i % 4 == 0:
            mean = 900.0 if faulty else 1.0 + (i % 3) * 0.2
            agg = LatencyAggregate(signal="dns_latency_ms", ts_ns=t, cgroup_id=CGROUP,
                                   count=4, mean_ms=mean, p99_ms=mean * 2, max_ms=mean * 2,
                                   detail="resolver")
            ev = BUILDER.build(agg, 0, t)
            events.append(msgspec.structs.replace(ev, pid=PID))
    (rep / "spans.jsonl").write_bytes(b"".join(enc.encode(s) + b"\n" for s in spans))
    (rep / "probe-events.jsonl").write_bytes(b"".join(enc.encode(e) + b"\n" for e in events))
    cfg = agent_config(rep, "127.0.0.1:0", rep / "pods.json")
    (rep / "agent.json").write_text(json.dumps(cfg))
    start, end = (T0 / NS + s for s in FAULT_S)
    (rep / "faults.json").write_text(json.dumps([{"name": "dns_latency",
                                                  "domain": "network_dns",
                                                  "start": start, "end": end}]))
    (rep / "phases.json").write_text(json.dumps([
        {"name": "baseline", "start": T0 / NS, "end": start},
        {"name": "fault", "start": start, "end": end},
        {"name": "recovery", "start": end, "end": T0 / NS + 40}]))


def test_rescore_replays_and_scores_a_recorded_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _record(run / "rep-01")
    summary = rescore(run, tmp_path / "again")
    assert summary["reps"] == 1 and "replayed, not live" in summary["note"]
    dns = summary["per_class"]["network_dns"]
    assert dns["precision"] == 1.0 and dns["recall"] > 0.5, summary["per_class"]
    assert summary["fpr"] == 0.0
    assert (tmp_path / "again" / "rep-01" / "attributions.jsonl").read_text()
    assert "network_dns" in (tmp_path / "again" / "predictions.csv").read_text()

    # Other engine settings, same recording: merged over the run's own (its 1 s window
    # stays), and a deviation nothing reaches abstains.
    blind = rescore(run, tmp_path / "strict", {"attribution": {"min_deviation": 1e9}})
    assert blind["per_class"]["network_dns"]["recall"] == 0.0
    assert blind["engine"]["attribution"]["min_deviation"] == 1e9
    assert blind["engine"]["window_s"] == 1.0
    # One cell of the likelihood table changes that cell; the rest of the table stays.
    cell = rescore(run, tmp_path / "cell",
                   {"attribution": {"likelihoods": {"tls": {"network_egress": 0.6}}}})
    table = cell["engine"]["attribution"]["likelihoods"]
    assert table["tls"]["network_egress"] == 0.6 and table["dns"]["network_dns"] == 0.95
    assert cell["per_class"] == summary["per_class"]
    with pytest.raises(ConfigError, match="would be overwritten"):
        rescore(run, run)


def test_rescore_names_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       ) -> None:
    with pytest.raises(ConfigError, match="no rep-NN"):
        rescore(tmp_path, tmp_path / "out")
    (tmp_path / "rep-01").mkdir()
    (tmp_path / "rep-01" / "agent.json").write_text("{}")
    assert main(["lab", "rescore", "--run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing spans.jsonl, probe-events.jsonl, faults.json, phases.json" in err, err


def test_recorded_scores_the_live_attributions_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    rep = run / "rep-01"
    _record(rep)
    start = T0 / NS + FAULT_S[0]

    def att(s: float, domain: str, sli: str) -> str:
        ts = datetime.fromtimestamp(start + s, UTC).isoformat()
        return json.dumps({"incident_id": f"i{s}{sli}", "timestamp": ts, "cluster": "lab",
                           "service": "rag", "predicted_fault_domain": domain,
                           "confidence": 0.9, "evidence": [],
                           "abstain": domain == "unknown",
                           "slo_impact": {"sli": sli, "burn_rate": 20.0,
                                          "window_minutes": 5}})

    # Live: DNS named twice during the fault; one abstention 4 s after it, while a
    # request that ran through it was still streaming (a case of the fault now).
    (rep / "attributions.jsonl").write_text("\n".join([
        att(1.0, "network_dns", "ttft_ms"), att(5.0, "network_dns", "ttft_ms"),
        att(14.0, "unknown", "ttft_ms")]) + "\n")
    (rep / "requests.jsonl").write_text("\n".join(json.dumps({
        "seq": i, "request_id": f"r{i}", "size": "long", "max_tokens": 128, "offset_s": 0.0,
        "start_unix_nano": int((start + s) * NS), "ttft_ms": 1200.0, "total_ms": 4000.0,
        "status": 200, "tokens": 128}) for i, s in enumerate((0.5, 4.5, 9.9))) + "\n")
    live = {"scenario": "dns_latency", "params": {"dns.delay_ms": 100}, "reps": 1,
            "macro_f1": 1.0, "overhead": {"cpu_pct": 0.8, "rss_mb": 70.0,
                                          "rss_peak_mb": 181.0, "bpf_ns_per_run": 300.0},
            "correlation": {"precision": 1.0, "recall": 0.99}, "latency_overhead_pct": 0.3,
            "ci95": {"agent_cpu_pct": {"mean": 0.8, "lo": None, "hi": None}}}
    (run / "summary.json").write_text(json.dumps(live))
    (rep / "agent-stats.json").write_text('{"max_rss_kib": 185344}')  # the runner's peak
    (run / "provenance.json").write_text(json.dumps({"commit": "abc", "command": "x"}))
    out = tmp_path / "again"
    assert main(["lab", "rescore", "--run", str(run), "--recorded", "--out", str(out)]) == 0
    assert "scored again" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    dns = summary["per_class"]["network_dns"]
    assert (dns["precision"], dns["recall"], dns["support"]) == (1.0, 2 / 3, 3)
    # The peak only from the agent's own VmHWM: this run recorded ru_maxrss alone.
    assert summary["overhead"] == {**live["overhead"], "rss_peak_mb": None}
    # An old run's "correlation" was ProbeEvent -> pod; without a truth log, span
    # joins are not judged.
    assert summary["identity"] == live["correlation"]
    assert summary["correlation"]["precision"] is None
    assert summary["latency_overhead_pct"] == 0.3
    assert summary["ci95"]["agent_cpu_pct"] == live["ci95"]["agent_cpu_pct"]
    assert summary["scenario"] == "dns_latency" and summary["reps"] == 1
    assert summary["truth_rule"] == "requests"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["commit"] == "abc" and prov["rescored"]["from"] == str(run)
    assert "Scored again" in (out / "report.md").read_text()
    assert (out / "timeline-rep-01.svg").is_file()
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "metric,label,value"
    assert "recall,network_dns,0.6666666666666666" in metrics
    assert not (run / "report.md").exists()  # the run itself is left as it was
    # A replay setting makes no sense without a replay.
    (tmp_path / "c.json").write_text("{}")
    assert main(["lab", "rescore", "--run", str(run), "--recorded", "--config",
                 str(tmp_path / "c.json"), "--out", str(tmp_path / "o2")]) == 2
    assert "does not apply" in capsys.readouterr().err
