"""Scoring attributions against ground truth, shared by the unit tests and the incident lab.

Pure functions over plain records: the lab turns its injector's ground truth and the
agent's attributions into :class:`Case` and :class:`FaultEpisode` records, calls
:func:`score`, and writes the summary with :meth:`ScoreSummary.write_json`,
:meth:`ScoreSummary.write_csv` and :meth:`ScoreSummary.write_confusion_csv`.

Conventions (docs/attribution.md, "Scoring"):

* ``actual`` is the true fault domain, or ``"none"`` when no fault was active (baseline
  and recovery phases). ``predicted`` is the attributed domain, ``"unknown"`` for an
  abstention, or ``"none"`` when no attribution was emitted for that case.
* When faults overlap, ``truths`` lists every true domain; a prediction of any of them is
  correct and is counted on the diagonal.
* Per-class precision/recall/F1 use zero for an empty denominator (as scikit-learn's
  ``zero_division=0``); macro-F1 averages them over every fault domain that occurs as a
  truth or a prediction. ``"none"`` and ``"unknown"`` are not classes of that average.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path

import msgspec
import numpy as np

NONE = "none"
UNKNOWN = "unknown"
_NOT_FAULT = (NONE, UNKNOWN)


class Case(msgspec.Struct, frozen=True, kw_only=True):
    """One scored decision: what was true and what the attributor said (at ``ts``, s)."""

    actual: str
    predicted: str
    ranked: tuple[str, ...] = ()  # hypotheses best first; default (predicted,)
    truths: tuple[str, ...] = ()  # every true domain when faults overlap; default (actual,)
    ts: float | None = None
    case_id: str = ""

    @property
    def all_truths(self) -> tuple[str, ...]:
        return self.truths or (self.actual,)

    @property
    def counted_actual(self) -> str:
        """The row of the confusion matrix: the predicted domain if it was one of several
        true ones (overlap), else ``actual``."""
        return self.predicted if self.predicted in self.all_truths else self.actual


class FaultEpisode(msgspec.Struct, frozen=True, kw_only=True):
    """One injected fault: its domain and when it was active (Unix seconds)."""

    domain: str
    start: float
    end: float


class ClassScore(msgspec.Struct, frozen=True):
    precision: float
    recall: float
    f1: float
    support: int


class DelaySummary(msgspec.Struct, frozen=True):
    """Fault start to first correct attribution, over detected episodes (seconds)."""

    median: float | None
    p95: float | None
    detected: int
    missed: int


class CorrelationScore(msgspec.Struct, frozen=True):
    """Precision and recall of predicted (span, signal) joins against labelled truth."""

    precision: float | None
    recall: float | None
    true_positives: int
    false_positives: int
    false_negatives: int


class ConfusionCell(msgspec.Struct, frozen=True):
    actual: str
    predicted: str
    count: int


class ScoreSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Every metric of one scored run. Rates are None when their denominator is empty."""

    cases: int
    accuracy: float | None
    macro_f1: float | None
    per_class: dict[str, ClassScore]
    abstain_rate: float | None  # abstentions among emitted attributions
    abstain_rate_fault: float | None  # abstentions among cases with a true fault
    fpr: float | None  # fault domains named while no fault was active
    ac_at_1: float | None
    ac_at_3: float | None
    detection_delay_s: DelaySummary
    correlation: CorrelationScore | None
    confusion: list[ConfusionCell]

    def write_json(self, path: str | Path) -> None:
        """The whole summary as indented JSON."""
        data = msgspec.json.format(msgspec.json.encode(self), indent=2)
        Path(path).write_bytes(data + b"\n")

    def write_csv(self, path: str | Path) -> None:
        """One row per metric: ``metric,label,value`` (label empty for global metrics)."""
        rows: list[tuple[str, str, object]] = [
            (name, "", getattr(self, name))
            for name in ("cases", "accuracy", "macro_f1", "abstain_rate",
                         "abstain_rate_fault", "fpr", "ac_at_1", "ac_at_3")]
        for field in msgspec.structs.fields(DelaySummary):
            rows.append((f"detection_delay_s.{field.name}", "",
                         getattr(self.detection_delay_s, field.name)))
        if self.correlation is not None:
            for field in msgspec.structs.fields(CorrelationScore):
                rows.append((f"correlation.{field.name}", "",
                             getattr(self.correlation, field.name)))
        for label, cs in self.per_class.items():
            rows.extend((m, label, getattr(cs, m)) for m in ("precision", "recall", "f1",
                                                              "support"))
        with Path(path).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("metric", "label", "value"))
            w.writerows((m, lab, "" if v is None else v) for m, lab, v in rows)

    def write_confusion_csv(self, path: str | Path) -> None:
        """``confusion-matrix.csv``: ``actual,predicted,count``, the original's format."""
        with Path(path).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(("actual", "predicted", "count"))
            w.writerows((c.actual, c.predicted, c.count) for c in self.confusion)


def confusion_matrix(cases: Iterable[Case]) -> Counter[tuple[str, str]]:
    """(actual, predicted) -> count, with overlap cases counted per :attr:`counted_actual`."""
    return Counter((c.counted_actual, c.predicted) for c in cases)


def per_class(cm: Counter[tuple[str, str]],
              labels: Sequence[str] | None = None) -> dict[str, ClassScore]:
    """Precision, recall, F1 and support per fault domain (default: every fault domain
    occurring as actual or predicted, sorted)."""
    if labels is None:
        labels = sorted({x for pair in cm for x in pair} - set(_NOT_FAULT))
    out = {}
    for lab in labels:
        tp = cm.get((lab, lab), 0)
        predicted = sum(n for (_, p), n in cm.items() if p == lab)
        support = sum(n for (a, _), n in cm.items() if a == lab)
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[lab] = ClassScore(precision=prec, recall=rec, f1=f1, support=support)
    return out


def ac_at_k(cases: Iterable[Case], k: int) -> float | None:
    """Share of fault cases with a true domain among the top ``k`` hypotheses (RCAEval)."""
    faults = [c for c in cases if c.actual != NONE]
    if not faults:
        return None
    hits = sum(1 for c in faults
               if set(c.all_truths) & set((c.ranked or (c.predicted,))[:k]))
    return hits / len(faults)


def detection_delays(episodes: Iterable[FaultEpisode], cases: Iterable[Case],
                     grace_s: float = 0.0) -> list[float | None]:
    """Per episode: seconds from its start to the first case naming its domain within
    [start, end + grace_s]; None if it was never named."""
    timed = sorted((c for c in cases if c.ts is not None), key=lambda c: c.ts or 0.0)
    out: list[float | None] = []
    for ep in episodes:
        hit = next((c.ts for c in timed if c.predicted == ep.domain
                    and ep.start <= (c.ts or 0.0) <= ep.end + grace_s), None)
        out.append(None if hit is None else hit - ep.start)
    return out


def delay_summary(delays: Iterable[float | None]) -> DelaySummary:
    """Median and p95 (linear interpolation) of the detected delays."""
    vals = list(delays)
    got = [d for d in vals if d is not None]
    if not got:
        return DelaySummary(median=None, p95=None, detected=0, missed=len(vals))
    return DelaySummary(median=float(np.percentile(got, 50)), p95=float(np.percentile(got, 95)),
                        detected=len(got), missed=len(vals) - len(got))


def correlation_scores(predicted: Iterable[Hashable],
                       truth: Iterable[Hashable]) -> CorrelationScore:
    """Set precision/recall of predicted joins (e.g. (span_id, signal_id) pairs)."""
    pred, true = set(predicted), set(truth)
    tp = len(pred & true)
    return CorrelationScore(precision=tp / len(pred) if pred else None,
                            recall=tp / len(true) if true else None,
                            true_positives=tp, false_positives=len(pred - true),
                            false_negatives=len(true - pred))


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def score(cases: Iterable[Case], episodes: Iterable[FaultEpisode] = (),
          correlation: CorrelationScore | None = None,
          labels: Sequence[str] | None = None, grace_s: float = 0.0) -> ScoreSummary:
    """Every metric of a run. A case with actual ``none`` is correct when nothing, or
    ``unknown``, was predicted; it is a false positive when a fault domain was named."""
    cs = list(cases)
    cm = confusion_matrix(cs)
    classes = per_class(cm, labels)
    none_cases = [c for c in cs if c.actual == NONE]
    fault_cases = [c for c in cs if c.actual != NONE]
    emitted = [c for c in cs if c.predicted != NONE]
    correct = sum(1 for c in cs if c.predicted in c.all_truths
                  or (c.actual == NONE and c.predicted in _NOT_FAULT))
    return ScoreSummary(
        cases=len(cs),
        accuracy=_rate(correct, len(cs)),
        macro_f1=sum(x.f1 for x in classes.values()) / len(classes) if classes else None,
        per_class=classes,
        abstain_rate=_rate(sum(c.predicted == UNKNOWN for c in emitted), len(emitted)),
        abstain_rate_fault=_rate(sum(c.predicted == UNKNOWN for c in fault_cases),
                                 len(fault_cases)),
        fpr=_rate(sum(c.predicted not in _NOT_FAULT for c in none_cases), len(none_cases)),
        ac_at_1=ac_at_k(cs, 1),
        ac_at_3=ac_at_k(cs, 3),
        detection_delay_s=delay_summary(detection_delays(episodes, cs, grace_s)),
        correlation=correlation,
        confusion=[ConfusionCell(a, p, n) for (a, p), n in sorted(cm.items())],
    )
