"""Tests for llm_slo.scoring against hand-computed confusion matrices, rates and delays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_slo.scoring import (
    Case,
    FaultEpisode,
    ac_at_k,
    confusion_matrix,
    correlation_scores,
    delay_summary,
    detection_delays,
    per_class,
    score,
)

DNS, EGR, CPU = "network_dns", "network_egress", "cpu_contention"

# 5 fault cases, 4 no-fault cases; every number below is worked out by hand.
CASES = [
    Case(actual=DNS, predicted=DNS, ranked=(DNS, EGR)),
    Case(actual=DNS, predicted=EGR, ranked=(EGR, DNS)),
    Case(actual=DNS, predicted="unknown", ranked=("unknown", DNS)),
    Case(actual=EGR, predicted=EGR),
    Case(actual=EGR, predicted=DNS, ranked=(DNS, "unknown", CPU)),
    Case(actual="none", predicted="none"),
    Case(actual="none", predicted="unknown"),
    Case(actual="none", predicted=CPU),
    Case(actual="none", predicted="none"),
]


def test_confusion_matrix_by_hand() -> None:
    assert confusion_matrix(CASES) == {
        (DNS, DNS): 1, (DNS, EGR): 1, (DNS, "unknown"): 1, (EGR, EGR): 1, (EGR, DNS): 1,
        ("none", "none"): 2, ("none", "unknown"): 1, ("none", CPU): 1}


def test_per_class_by_hand() -> None:
    pc = per_class(confusion_matrix(CASES))
    assert list(pc) == [CPU, DNS, EGR]  # none/unknown are not classes
    # dns: TP 1, predicted twice, 3 true -> P 1/2, R 1/3, F1 2*(1/6)/(5/6) = 0.4
    assert (pc[DNS].precision, pc[DNS].support) == (0.5, 3)
    assert pc[DNS].recall == pytest.approx(1 / 3) and pc[DNS].f1 == pytest.approx(0.4)
    assert (pc[EGR].precision, pc[EGR].recall, pc[EGR].f1, pc[EGR].support) == (.5, .5, .5, 2)
    assert (pc[CPU].precision, pc[CPU].recall, pc[CPU].f1, pc[CPU].support) == (0, 0, 0, 0)
    only = per_class(confusion_matrix(CASES), labels=[DNS])
    assert list(only) == [DNS]


def test_summary_by_hand() -> None:
    s = score(CASES)
    assert s.cases == 9
    assert s.macro_f1 == pytest.approx((0.4 + 0.5 + 0.0) / 3)
    assert s.accuracy == pytest.approx(5 / 9)  # cases 1, 4 and the three calm ones
    assert s.abstain_rate == pytest.approx(2 / 7)  # 7 attributions emitted, 2 abstained
    assert s.abstain_rate_fault == pytest.approx(1 / 5)
    assert s.fpr == pytest.approx(1 / 4)  # cpu named once in 4 calm cases
    assert s.ac_at_1 == pytest.approx(2 / 5) and s.ac_at_3 == pytest.approx(4 / 5)
    assert s.correlation is None and s.detection_delay_s.detected == 0


def test_ac_at_k_uses_ranked_or_prediction() -> None:
    assert ac_at_k(CASES, 2) == pytest.approx(4 / 5)
    assert ac_at_k([Case(actual="none", predicted="none")], 1) is None


def test_overlapping_truths_count_as_correct() -> None:
    """With two faults on, naming either is correct and lands on the diagonal."""
    both = (DNS, "provider_throttle")
    cases = [Case(actual=DNS, truths=both, predicted="provider_throttle"),
             Case(actual=DNS, truths=both, predicted=CPU, ranked=(CPU, "provider_throttle"))]
    cm = confusion_matrix(cases)
    assert cm == {("provider_throttle", "provider_throttle"): 1, (DNS, CPU): 1}
    s = score(cases)
    assert s.accuracy == 0.5 and s.ac_at_1 == 0.5 and s.ac_at_3 == 1.0


def test_detection_delay_by_hand() -> None:
    episodes = [FaultEpisode(domain=DNS, start=100, end=200),
                FaultEpisode(domain=EGR, start=300, end=400),
                FaultEpisode(domain="memory_pressure", start=500, end=600)]
    cases = [Case(actual="none", predicted=DNS, ts=99.0),  # before the fault: not a hit
             Case(actual=DNS, predicted=EGR, ts=101.0),  # wrong domain
             Case(actual=DNS, predicted=DNS, ts=150.0),
             Case(actual=DNS, predicted=DNS, ts=103.0),  # order of cases does not matter
             Case(actual=EGR, predicted=EGR, ts=300.5),
             Case(actual="none", predicted="memory_pressure", ts=601.0)]  # after the end
    assert detection_delays(episodes, cases) == [3.0, 0.5, None]
    assert detection_delays(episodes, cases, grace_s=5.0)[2] == pytest.approx(101.0)
    d = score(cases, episodes).detection_delay_s
    assert (d.detected, d.missed) == (2, 1)
    assert d.median == pytest.approx(1.75)
    assert d.p95 == pytest.approx(0.5 + 0.95 * 2.5)  # linear interpolation
    assert delay_summary([None]).median is None


def test_correlation_precision_recall() -> None:
    pred = {("s1", "a"), ("s2", "b"), ("s3", "c")}
    true = {("s1", "a"), ("s2", "b"), ("s4", "d")}
    c = correlation_scores(pred, true)
    assert c.precision == pytest.approx(2 / 3) and c.recall == pytest.approx(2 / 3)
    assert (c.true_positives, c.false_positives, c.false_negatives) == (2, 1, 1)
    empty = correlation_scores([], [])
    assert empty.precision is None and empty.recall is None


def test_empty_run() -> None:
    s = score([])
    assert s.cases == 0 and s.macro_f1 is None and s.fpr is None and s.accuracy is None
    assert s.per_class == {} and s.confusion == []


def test_writers(tmp_path: Path) -> None:
    corr = correlation_scores({1, 2}, {2, 3})
    s = score(CASES, [FaultEpisode(domain=DNS, start=0, end=1)], correlation=corr)
    s.write_json(tmp_path / "summary.json")
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["macro_f1"] == pytest.approx(0.3) and doc["fpr"] == 0.25
    assert set(doc["per_class"][DNS]) == {"precision", "recall", "f1", "support"}
    assert doc["detection_delay_s"] == {"median": None, "p95": None, "detected": 0,
                                        "missed": 1}
    assert doc["correlation"]["precision"] == 0.5 and doc["correlation"]["recall"] == 0.5

    s.write_csv(tmp_path / "summary.csv")
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    flat = {(r["metric"], r["label"]): r["value"] for r in rows}
    assert float(flat[("fpr", "")]) == 0.25 and flat[("detection_delay_s.median", "")] == ""
    assert float(flat[("f1", EGR)]) == 0.5 and flat[("support", DNS)] == "3"

    s.write_confusion_csv(tmp_path / "confusion-matrix.csv")
    lines = (tmp_path / "confusion-matrix.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted,count"
    assert f"{DNS},{EGR},1" in lines and "none,none,2" in lines
    assert sum(int(x.rsplit(",", 1)[1]) for x in lines[1:]) == len(CASES)


LABELS = st.sampled_from([DNS, EGR, CPU, "provider_throttle", "none", "unknown"])
case_st = st.builds(
    Case, actual=LABELS.filter(lambda x: x != "unknown"), predicted=LABELS,
    ranked=st.lists(LABELS, max_size=4).map(tuple),
    ts=st.one_of(st.none(), st.floats(0, 1000)))


@settings(max_examples=200, deadline=None)
@given(cases=st.lists(case_st, max_size=30),
       episodes=st.lists(st.builds(FaultEpisode, domain=LABELS, start=st.floats(0, 500),
                                   end=st.floats(500, 1000)), max_size=4))
def test_metrics_are_rates(cases: list[Case], episodes: list[FaultEpisode]) -> None:
    s = score(cases, episodes)
    for name in ("accuracy", "macro_f1", "abstain_rate", "abstain_rate_fault", "fpr",
                 "ac_at_1", "ac_at_3"):
        value = getattr(s, name)
        assert value is None or 0.0 <= value <= 1.0, name
    for cs in s.per_class.values():
        assert 0 <= cs.precision <= 1 and 0 <= cs.recall <= 1 and 0 <= cs.f1 <= 1
    assert sum(c.count for c in s.confusion) == len(cases)
    assert s.ac_at_1 is None or s.ac_at_1 <= s.ac_at_3
    d = s.detection_delay_s
    assert d.detected + d.missed == len(episodes)
    assert d.median is None or 0 <= d.median <= d.p95 + 1e-9
