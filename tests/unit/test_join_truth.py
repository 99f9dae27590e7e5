"""Span joins judged against the rag's truth log (lab.join_truth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llm_slo.events import ConnTuple
from llm_slo.lab.join_truth import judge_joins, read_truth
from llm_slo.probe_event import ProbeEvent
from llm_slo.spans import Span

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
A, B = "a" * 32, "b" * 32  # two concurrent requests' traces
RAG_PID, DNS_TID = 4107, 4190
CALL = ("10.253.238.2", 37608, "10.253.217.2", 8443)  # rag local -> provider


def event(t_ms: float, *, signal: str = "dns_latency_ms", pid: int = RAG_PID, tid: int = 0,
          conn: ConnTuple | None = None) -> ProbeEvent:
    return ProbeEvent(ts_unix_nano=T0 + round(t_ms * MS), signal=signal, node="n1",
                      namespace="llm", pod="rag-0", container="rag", pid=pid, tid=tid,
                      value=50.0, unit="ms", status="warning", conn_tuple=conn)


def span(trace: str, start_ms: float, end_ms: float) -> Span:
    return Span(trace_id=trace, span_id="1" * 16, name="chat gpt-4o-mini",
                start_unix_nano=T0 + round(start_ms * MS), end_unix_nano=T0 + round(end_ms * MS),
                resource={"service.name": "rag", "k8s.pod.name": "rag-0",
                          "k8s.node.name": "n1", "process.pid": RAG_PID})


def write(tmp: Path, truth: list[dict[str, Any]], events: list[ProbeEvent],
          spans: list[Span]) -> tuple[Path, Path, Path]:
    paths = tmp / "truth.jsonl", tmp / "probe-events.jsonl", tmp / "spans.jsonl"
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in truth))
    for p, items in ((paths[1], events), (paths[2], spans)):
        p.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in items))
    return paths


def lookup(trace: str, start_ms: float, end_ms: float, tid: int = DNS_TID) -> dict[str, Any]:
    return {"kind": "resolve", "trace_id": trace, "host": "provider.lab", "tid": tid,
            "start_ns": T0 + round(start_ms * MS), "end_ns": T0 + round(end_ms * MS)}


def call(trace: str, start_ms: float, end_ms: float) -> dict[str, Any]:
    local, lport, peer, pport = CALL
    return {"kind": "conn", "trace_id": trace, "local": local, "lport": lport, "peer": peer,
            "pport": pport, "start_ns": T0 + round(start_ms * MS),
            "end_ns": T0 + round(end_ms * MS)}


def test_pid_joins_of_a_lookup_to_a_concurrent_request_are_wrong(tmp_path: Path) -> None:
    # Request A's lookup ran on thread DNS_TID; B ran at the same time in the same
    # process. Joining by pod and pid gives the event to both: one right, one wrong.
    truth, events, spans = write(tmp_path, [lookup(A, 0, 60)],
                                 [event(55, tid=DNS_TID)], [span(A, 0, 500), span(B, 20, 520)])
    s = judge_joins(spans, events, read_truth(truth))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 1, 0)
    assert s.precision == 0.5 and s.recall == 1.0


def test_a_lookup_judged_only_inside_its_interval_and_thread(tmp_path: Path) -> None:
    truth, events, spans = write(
        tmp_path, [lookup(A, 0, 60)],
        [event(80, tid=DNS_TID),  # 20 ms after the lookup ended: not its lookup
         event(30, tid=DNS_TID + 1)],  # another thread
        [span(A, 0, 500)])
    s = judge_joins(spans, events, read_truth(truth))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 0, 0)
    assert s.precision is None and s.recall is None


def test_an_event_inside_a_lookup_is_that_lookups_before_the_next_ones_slack(
        tmp_path: Path) -> None:
    # The thread's next lookup (B) starts 0.1 ms after A's last answer; A holds it.
    truth = read_truth(write(tmp_path, [lookup(A, 0, 60), lookup(B, 60.2, 90)], [], [])[0])
    assert truth is not None
    assert truth.request_of(event(59.9, tid=DNS_TID)) == A
    assert truth.request_of(event(60.1, tid=DNS_TID)) == B  # in neither: within B's slack
    assert truth.request_of(event(61, tid=DNS_TID)) == B


def test_events_without_a_request_are_not_judged(tmp_path: Path) -> None:
    # An aggregate (no thread) and the provider's side of the rag's connection join or
    # not; neither has a request in the truth, so neither counts either way.
    local, lport, peer, pport = CALL
    theirs = ConnTuple(peer, local, pport, lport, "tcp")
    truth, events, spans = write(
        tmp_path, [call(A, 0, 400)],
        [event(100), event(120, signal="tcp_retransmits_total", pid=0, conn=theirs)],
        [span(A, 0, 500)])
    s = judge_joins(spans, events, read_truth(truth))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 0, 0)


def test_a_retransmit_on_the_rag_side_of_a_call_is_judged(tmp_path: Path) -> None:
    # Retransmits fire in softirq (pid 0); only a span carrying the connection's local
    # address joins them (tier pod+conn). The rag's spans carry only the peer: missed.
    local, lport, peer, pport = CALL
    ours = ConnTuple(local, peer, lport, pport, "tcp")
    truth, events, spans = write(
        tmp_path, [call(B, 0, 100), call(A, 150, 400)],  # the port reused by A later
        [event(200, signal="tcp_retransmits_total", pid=0, conn=ours)], [span(A, 150, 500)])
    s = judge_joins(spans, events, read_truth(truth))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (0, 0, 1)
    with_local = span(A, 150, 500)
    with_local.attributes.update({"network.local.address": local, "network.local.port": lport,
                                  "network.peer.address": peer, "network.peer.port": pport})
    truth, events, spans = write(
        tmp_path, [call(B, 0, 100), call(A, 150, 400)],
        [event(200, signal="tcp_retransmits_total", pid=0, conn=ours)], [with_local])
    s = judge_joins(spans, events, read_truth(truth))
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 0, 0)


def test_a_broken_truth_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "truth.jsonl"
    path.write_text(json.dumps(lookup(A, 0, 1)) + "\n" + '{"kind": "conn"}\n')
    with pytest.raises(ValueError, match=r"truth.jsonl:2: not a truth record"):
        read_truth(path)
    assert read_truth(tmp_path / "absent.jsonl") is None
