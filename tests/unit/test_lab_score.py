"""predictions.csv read back into cases, and why scenarios are pooled before macro-F1."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_slo.lab.lab_score import Prediction, read_predictions, write_predictions
from llm_slo.scoring import score


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
