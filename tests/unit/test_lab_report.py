"""Tests for llm_slo.lab.report: timeline SVGs, the Markdown report and the terminal table,
from run-directory files written in the lab runner's formats."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llm_slo.incident import IncidentAttribution
from llm_slo.lab.loadgen import RequestResult
from llm_slo.lab.report import (
    FaultWindow,
    Phase,
    report_markdown,
    results_table,
    timeline_svg,
    write_run_report,
)

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_795_000_000.0  # first phase start, Unix seconds


def rfc3339(t: float) -> str:
    return (datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def request_dicts(seconds: int = 30) -> list[dict[str, Any]]:
    """10 requests/s: 40 ms TTFT; 400 ms during the DNS fault (s 10-19); during s 20-24
    half of them time out without a token."""
    out = []
    for seq in range(seconds * 10):
        offset = seq / 10
        failed = 20 <= offset < 25 and seq % 2 == 0
        ttft = None if failed else (400.0 if 10 <= offset < 20 else 40.0) + seq % 3
        out.append({"seq": seq, "request_id": f"lg-test-{seq}", "size": "short",
                    "max_tokens": 16, "offset_s": offset,
                    "start_unix_nano": int((T0 + offset) * 1e9), "ttft_ms": ttft,
                    "total_ms": 30000.0 if failed else 120.0, "status": 0 if failed else 200,
                    "tokens": 0 if failed else 16, "error": "timeout" if failed else ""})
    return out


FAULTS = [
    {"name": "dns_latency", "domain": "network_dns", "start": T0 + 10, "end": T0 + 20,
     "params": {"delay_ms": 300}},
    {"name": "provider_429", "domain": "provider_throttle", "start": T0 + 20, "end": T0 + 25,
     "params": {}},
]
PHASES = [
    {"name": "baseline", "start": T0, "end": T0 + 10},
    {"name": "fault", "start": T0 + 10, "end": T0 + 25},
    {"name": "recovery", "start": T0 + 25, "end": T0 + 30},
]


def attribution(t: float, domain: str, *, abstain: bool = False) -> dict[str, Any]:
    return {"incident_id": f"inc-{t}", "timestamp": rfc3339(t), "cluster": "lab",
            "service": "rag", "predicted_fault_domain": domain,
            "confidence": 0.3 if abstain else 0.92,
            "evidence": [{"signal": "dns_latency_ms", "value": 310.0, "source": "ebpf",
                          "unit": "ms", "baseline": 2.0}],
            "slo_impact": {"sli": "ttft_ms", "burn_rate": 14.4, "window_minutes": 5},
            "abstain": abstain}


ATTRIBUTIONS = [attribution(T0 + 10.8, "network_dns"),
                attribution(T0 + 20.6, "provider_throttle"),
                attribution(T0 + 27.0, "unknown", abstain=True)]

SUMMARY: dict[str, Any] = {
    "scenario": "dns_then_429", "reps": 2, "params": {"delay_ms": 300},
    "macro_f1": 0.9, "fpr": 0.004,
    "per_class": {"network_dns": {"precision": 1.0, "recall": 0.8, "f1": 0.8889, "support": 10},
                  "provider_throttle": {"precision": None, "recall": 0.5, "f1": None,
                                        "support": 4}},
    "detection_delay_s": {"median": 0.8, "p95": 1.7},
    "correlation": {"precision": 0.97, "recall": None},
    "overhead": {"cpu_pct": 0.9, "bpf_cpu_pct": 0.5, "cpu_pct_with_bpf": 1.4, "rss_mb": 52.3,
                 "rss_peak_mb": 81.0, "bpf_ns_per_run": None},
    "ci95": {"macro_f1": [0.85, 0.93]},
    "abstentions": {"about_a_fault": {"low_confidence": 3}, "calm": {"no_deviation": 2}},
}


def decode(records: list[dict[str, Any]], typ: type) -> list[Any]:
    return [msgspec.convert(r, typ) for r in records]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def by_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(SVG + "text")]


def full_svg(title: str = "dns_then_429: rep-01") -> ET.Element:
    return parse(timeline_svg(decode(request_dicts(), RequestResult),
                              decode(FAULTS, FaultWindow), decode(PHASES, Phase),
                              decode(ATTRIBUTIONS, IncidentAttribution), title=title))


def test_timeline_has_a_band_per_fault_and_a_marker_per_attribution() -> None:
    root = full_svg()
    bands = by_class(root, "g", "fault")
    assert [b.get("data-name") for b in bands] == ["dns_latency", "provider_429"]
    for band, fault in zip(bands, FAULTS, strict=True):
        assert band.find(SVG + "rect") is not None
        assert band.find(SVG + "text").text == fault["name"]  # type: ignore[union-attr]
    markers = by_class(root, "circle", "attribution")
    assert [m.get("data-domain") for m in markers] == ["network_dns", "provider_throttle",
                                                       "unknown"]
    assert markers[2].get("fill") == "#9e9e9e"  # the abstention is grey
    assert len({m.get("fill") for m in markers}) == 3
    # 4 distinct phase boundaries: 0, 10, 25, 30 s.
    assert len(by_class(root, "line", "phase-boundary")) == 4
    labels = texts(root)
    assert {"baseline", "fault", "recovery"} <= set(labels)
    # The legend names the domains that occur, and only those.
    assert {"network_dns", "provider_throttle", "abstained"} <= set(labels)
    assert "cpu_throttle" not in labels


def test_timeline_marker_x_follows_its_timestamp() -> None:
    markers = by_class(full_svg(), "circle", "attribution")
    xs = [float(m.get("cx", "nan")) for m in markers]
    # x is linear in time: (10.8 s, 20.6 s, 27.0 s) keep their spacing ratio.
    assert (xs[1] - xs[0]) / (xs[2] - xs[1]) == pytest.approx(9.8 / 6.4, rel=0.02)


def test_timeline_error_bars_are_the_share_of_failed_requests_per_second() -> None:
    root = full_svg()
    bars = by_class(root, "rect", "error-rate")
    assert len(bars) == 5  # seconds 20-24, each with 5 of 10 requests timed out
    [frame] = [float(e.get("height", "nan")) for e in root.iter(SVG + "rect")
               if e.get("y") == "262" and e.get("fill") == "none"]  # the error panel
    assert [float(b.get("height", "nan")) for b in bars] == pytest.approx([frame / 2] * 5)
    # Every second had a success, so each TTFT line is one unbroken run.
    assert len(by_class(root, "polyline", "ttft-p50")) == 1
    assert len(by_class(root, "polyline", "ttft-p95")) == 1


def test_timeline_title_and_names_are_escaped() -> None:
    fault = FaultWindow(name="loss <5%> & \"jitter\"", domain="network_egress",
                        start=T0, end=T0 + 1)
    svg = timeline_svg([], [fault], [], [], title="a <b> & c\x01")
    root = parse(svg)
    assert root.find(SVG + "title").text == "a <b> & c"  # type: ignore[union-attr]
    assert by_class(root, "g", "fault")[0].get("data-name") == fault.name


@pytest.mark.parametrize("faults", [[], FAULTS])
def test_timeline_copes_with_empty_inputs(faults: list[dict[str, Any]]) -> None:
    root = parse(timeline_svg([], decode(faults, FaultWindow), [], [], title="empty"))
    assert len(by_class(root, "g", "fault")) == len(faults)
    assert not by_class(root, "circle", "attribution")
    assert {"no TTFT data", "no requests"} <= set(texts(root))
    assert root.get("width") == "900"


def test_timeline_without_any_ttft_still_shows_errors() -> None:
    reqs = [r for r in request_dicts() if r["ttft_ms"] is None]
    root = parse(timeline_svg(decode(reqs, RequestResult), [], decode(PHASES, Phase), [],
                              title="all failed"))
    assert not by_class(root, "polyline", "ttft-p50")
    assert "no TTFT data" in texts(root)
    assert len(by_class(root, "rect", "error-rate")) == 5


def test_timeline_gap_splits_the_ttft_line() -> None:
    # Seconds 0-4 and 8-9 have successes; 5-7 none at all: two runs per percentile.
    reqs = [r for r in request_dicts(10) if not 5 <= r["offset_s"] < 8]
    root = parse(timeline_svg(decode(reqs, RequestResult), [], [], [], title="gap"))
    assert len(by_class(root, "polyline", "ttft-p50")) == 2


def results_rows(table: str) -> dict[str, list[str]]:
    """Terminal table rows keyed by metric; columns are separated by 2+ spaces."""
    lines = table.splitlines()[2:]
    return {cols[0]: cols[1:] for cols in (re.split(r"\s{2,}", line) for line in lines)}


def test_results_table_judges_each_target() -> None:
    rows = results_rows(results_table(SUMMARY))
    assert rows["macro-F1"] == ["0.900", "≥ 0.95", "not met"]
    assert rows["FPR (baseline/recovery)"] == ["0.004", "≤ 0.01", "met"]
    assert rows["detection delay median"] == ["0.80 s", "≤ 1 s", "met"]
    assert rows["detection delay p95"] == ["1.70 s", "—", "—"]
    assert rows["span joins precision (rag's truth)"] == ["0.970", "≥ 0.95", "met"]
    assert rows["span joins recall (rag's truth)"] == ["n/a", "≥ 0.9", "—"]
    assert rows["agent CPU, process"] == ["0.90 %", "—", "—"]
    assert rows["agent CPU, its BPF programs"] == ["0.50 %", "—", "—"]
    assert rows["agent CPU, process + BPF"] == ["1.40 %", "≤ 1 %", "not met"]
    assert rows["agent RSS at end of load"] == ["52.3 MiB", "—", "—"]
    assert rows["agent peak RSS"] == ["81.0 MiB", "≤ 80 MiB", "not met"]
    assert rows["p99 TTFT increase with agent"] == ["n/a", "≤ 2 %", "—"]


def test_targets_are_inclusive_and_nonsense_is_na() -> None:
    rows = results_rows(results_table({"macro_f1": 0.95, "fpr": 0.01, "overhead": None,
                                       "correlation": {"precision": "high"},
                                       "latency_overhead_pct": 2.5}))
    assert rows["macro-F1"][2] == "met" and rows["FPR (baseline/recovery)"][2] == "met"
    assert rows["agent CPU, process + BPF"] == ["n/a", "≤ 1 %", "—"]
    assert rows["span joins precision (rag's truth)"] == ["n/a", "≥ 0.95", "—"]
    assert rows["p99 TTFT increase with agent"] == ["2.50 %", "≤ 2 %", "not met"]


def test_results_table_of_an_empty_summary_has_no_judgments() -> None:
    rows = results_rows(results_table({}))
    assert len(rows) == 19
    assert all(cols[0] == "n/a" and cols[2] == "—" for cols in rows.values())


PROVENANCE = {"commit": "72cfe56", "kernel": "6.1.0-27-amd64", "hostname": "lab-1",
              "cpu_model": "AMD EPYC 7B13", "cpus": 8, "python": "3.11.2",
              "started": "2026-11-25T12:40:00Z", "finished": "2026-11-25T12:52:10Z",
              "seed": 7}
COMMAND = "make lab SCENARIO=dns_then_429 REPS=2 SEED=7"


def test_report_markdown_has_command_provenance_and_tables() -> None:
    md = report_markdown(SUMMARY, command=COMMAND, provenance=PROVENANCE,
                         chart_files=["timeline-rep-01.svg", "timeline-rep-02.svg"])
    lines = md.splitlines()
    assert lines[0] == "# Incident lab report: dns_then_429"
    assert COMMAND in lines
    for fact in ("lab-1", "AMD EPYC 7B13", "8 CPUs", "`6.1.0-27-amd64`", "`72cfe56`",
                 "2026-11-25T12:40:00Z", "2026-11-25T12:52:10Z", "**Seed:** 7",
                 "**Repetitions:** 2", '`{"delay_ms": 300}`'):
        assert fact in md, fact
    assert "| macro-F1 | 0.900 | ≥ 0.95 | not met |" in lines
    assert "| FPR (baseline/recovery) | 0.004 | ≤ 0.01 | met |" in lines
    assert "| span joins recall (rag's truth) | n/a | ≥ 0.9 | — |" in lines
    assert "| agent CPU, process + BPF | 1.40 % | ≤ 1 % | not met |" in lines
    assert "| BPF time per program run | n/a | — | — |" in lines
    assert "| network_dns | 1.000 | 0.800 | 0.889 | 10 |" in lines
    assert "| provider_throttle | n/a | 0.500 | n/a | 4 |" in lines
    assert "| `low_confidence` | 3 | 0 |" in lines and "| `no_deviation` | 0 | 2 |" in lines
    assert "![timeline of timeline-rep-01.svg](timeline-rep-01.svg)" in lines
    assert "- [timeline-rep-02.svg](timeline-rep-02.svg)" in lines


def test_report_markdown_with_nothing_known() -> None:
    md = report_markdown({"scenario": None, "per_class": None}, command="x", provenance={},
                         chart_files=[])
    assert md.startswith("# Incident lab report: n/a\n")
    assert "- **Machine:** n/a" in md and "- **Commit:** n/a" in md
    assert "No charts." in md
    assert "None (or not counted" in md
    assert "| met |" not in md and "not met" not in md  # no judgment without values


def test_report_markdown_keeps_a_command_with_backticks_verbatim() -> None:
    command = "make lab PARAMS='```x```'"
    md = report_markdown({}, command=command, provenance={}, chart_files=[])
    assert "````sh\n" + command + "\n````\n" in md


def write_rep(rep: Path, *, attributions: list[dict[str, Any]]) -> None:
    rep.mkdir(parents=True)
    (rep / "requests.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in request_dicts()))
    (rep / "faults.json").write_text(json.dumps(FAULTS))
    (rep / "phases.json").write_text(json.dumps(PHASES))
    (rep / "attributions.jsonl").write_text(
        "".join(json.dumps(a) + "\n" for a in attributions))


def test_write_run_report_writes_charts_and_report(tmp_path: Path) -> None:
    write_rep(tmp_path / "rep-01", attributions=ATTRIBUTIONS)
    write_rep(tmp_path / "rep-02", attributions=[])
    (tmp_path / "rep-03").mkdir()  # a repetition that wrote nothing
    (tmp_path / "summary.json").write_text(json.dumps(SUMMARY))
    (tmp_path / "provenance.json").write_text(json.dumps(PROVENANCE))

    written = write_run_report(tmp_path, command=COMMAND)

    assert [p.name for p in written] == ["timeline-rep-01.svg", "timeline-rep-02.svg",
                                         "timeline-rep-03.svg", "timeline.svg", "report.md"]
    assert all(p.parent == tmp_path and p.is_file() for p in written)
    rep1 = parse((tmp_path / "timeline-rep-01.svg").read_text())
    assert len(by_class(rep1, "circle", "attribution")) == 3
    assert len(by_class(rep1, "g", "fault")) == 2
    assert not by_class(parse((tmp_path / "timeline-rep-02.svg").read_text()),
                        "circle", "attribution")
    assert "no requests" in texts(parse((tmp_path / "timeline-rep-03.svg").read_text()))
    assert (tmp_path / "timeline.svg").read_bytes() == written[0].read_bytes()
    md = (tmp_path / "report.md").read_text()
    assert COMMAND in md and "`72cfe56`" in md
    assert "- [timeline-rep-03.svg](timeline-rep-03.svg)" in md


def test_write_run_report_without_provenance_or_reps(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"macro_f1": None}))
    written = write_run_report(tmp_path, command="sloctl lab run")
    assert written == [tmp_path / "report.md"]
    md = written[0].read_text()
    assert "- **Kernel:** n/a" in md and "| macro-F1 | n/a | ≥ 0.95 | — |" in md


def test_report_markdown_gives_the_spread_over_repetitions() -> None:
    summary = {**SUMMARY, "ci95": {"macro_f1": {"mean": 0.95, "lo": 0.91, "hi": 0.99},
                                   "agent_cpu_pct_with_bpf": {"mean": 1.1, "lo": None,
                                                              "hi": None},
                                   "fpr": "garbage"}}
    lines = report_markdown(summary, command=COMMAND, provenance=PROVENANCE,
                            chart_files=[]).splitlines()
    assert "| macro-F1 | 0.950 | 0.910 – 0.990 |" in lines
    assert "| agent CPU, process + BPF, % | 1.100 | n/a |" in lines
    assert not any(line.startswith("| FPR |") for line in lines)
