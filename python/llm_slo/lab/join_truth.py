"""Span joins judged against what each request really did (the rag's truth log).

The correlator joins a kernel event to a span by keys and time windows (trace id, pod
and pid, pod and connection, service and node). Whether a join is *right* is a fact
about the workload, which the rag service records itself (``rag_service.TruthLog``):
which thread ran which request's name lookup and when, and which connection (its two
addresses, from the socket) carried which request's backend call and when.

An event is *judged* when those facts name its request:

- a DNS event (wire or resolver) whose thread ran a lookup of the rag in that interval;
- an event on the rag's side of a TCP connection (source = the rag's local address)
  during a call on that connection.

Every other event (per-cgroup aggregates, run-queue waits, TLS handshakes, which carry
no connection, the backends' own side of a connection) has no request to be right or
wrong about and is left out of both sides. The joins are the correlator's own, replayed
over the repetition's recorded spans and ProbeEvents with the agent's configuration:
the same code as live, which joined them 0.5 s after each span ended (a live join can
miss an event that reached the agent later; a replay cannot).

A predicted pair is (event, trace id of a span it enriched); a true pair is (event,
trace id of its request). Precision and recall are over judged events.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_slo.correlator import CorrelationConfig, Correlator, canonical_ip
from llm_slo.probe_event import ProbeEvent
from llm_slo.replay import read_structs
from llm_slo.scoring import CorrelationScore, correlation_scores
from llm_slo.spans import Span

# Event times are kernel clock read at the event, turned into wall clock by the agent;
# the truth's are the rag's own clock reads around the call. Tolerance for the two.
CLOCK_SLACK_NS = 2_000_000
DNS_SIGNAL = "dns_latency_ms"
RAG_TRUTH = "rag-truth.jsonl"  # the truth log, in a lab run's lab/ directory


class _Intervals:
    """Per key, the [start, end] intervals of the requests that used it."""

    def __init__(self) -> None:
        self._by_key: dict[Any, list[tuple[int, int, str]]] = defaultdict(list)
        self._starts: dict[Any, list[int]] = {}

    def add(self, key: Any, start_ns: int, end_ns: int, trace_id: str) -> None:
        self._by_key[key].append((start_ns, end_ns, trace_id))

    def freeze(self) -> None:
        for key, spans in self._by_key.items():
            spans.sort()
            self._starts[key] = [s for s, _, _ in spans]

    def find(self, key: Any, ts_ns: int) -> str | None:
        """The trace whose interval holds ``ts_ns``. A thread runs one lookup at a time
        and a connection carries one call (no keep-alive), so a key's intervals do not
        overlap: only the last two to start by then can hold it, within the slack. One
        that holds it exactly wins over one that needs the slack: a lookup's last answer
        comes a few µs before it ends, and the thread's next lookup starts right after."""
        spans = self._by_key.get(key)
        if not spans:
            return None
        i = bisect.bisect_right(self._starts[key], ts_ns + CLOCK_SLACK_NS)
        near = spans[max(0, i - 2):i]
        for start, end, trace in near:
            if start <= ts_ns <= end:
                return trace or None
        for start, end, trace in reversed(near):
            if start - CLOCK_SLACK_NS <= ts_ns <= end + CLOCK_SLACK_NS:
                return trace or None
        return None


class RequestTruth:
    """The truth log, indexed: lookups by thread id, calls by connection (local ip,
    local port, peer ip, peer port)."""

    def __init__(self, lookups: _Intervals, calls: _Intervals) -> None:
        self.lookups = lookups
        self.calls = calls

    def request_of(self, ev: ProbeEvent) -> str | None:
        """The trace id of the request this event belongs to; None if not judged."""
        if ev.signal == DNS_SIGNAL:
            return self.lookups.find(ev.tid, ev.ts_unix_nano) if ev.tid else None
        c = ev.conn_tuple
        if c is None or c.protocol != "tcp":
            return None
        return self.calls.find(_conn_key(c.src_ip, c.src_port, c.dst_ip, c.dst_port),
                               ev.ts_unix_nano)


def _conn_key(local: str, lport: int, peer: str, pport: int) -> tuple[Any, ...]:
    return canonical_ip(local), int(lport), canonical_ip(peer), int(pport)


def read_truth(path: Path) -> RequestTruth | None:
    """The rag's truth log at ``path``; None when the run wrote none (older runs)."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return None
    lookups, calls = _Intervals(), _Intervals()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if r["kind"] == "resolve":
                lookups.add(int(r["tid"]), int(r["start_ns"]), int(r["end_ns"]),
                            str(r["trace_id"]))
            elif r["kind"] == "conn":
                calls.add(_conn_key(r["local"], r["lport"], r["peer"], r["pport"]),
                          int(r["start_ns"]), int(r["end_ns"]), str(r["trace_id"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a truth record: {e}") from e
    lookups.freeze()
    calls.freeze()
    return RequestTruth(lookups, calls)


def run_truth(run_dir: Path) -> RequestTruth | None:
    """The truth log of the lab run in ``run_dir`` (None: the run predates it)."""
    return read_truth(run_dir / "lab" / RAG_TRUTH)


def _read(path: Path, kind: type[Any]) -> Iterator[Any]:
    """A repetition's recorded ``kind``s; none when it recorded no such file."""
    return read_structs(str(path), kind) if path.is_file() else iter(())


def judge_joins(spans_path: Path, events_path: Path, truth: RequestTruth,
                config: CorrelationConfig | None = None) -> CorrelationScore:
    """Precision/recall of the correlator's enriching joins over judged events."""
    events = sorted(_read(events_path, ProbeEvent), key=lambda e: e.ts_unix_nano)
    request = {id(ev): t for ev in events if (t := truth.request_of(ev)) is not None}
    true_pairs = set(request.items())
    correlator = Correlator(config)
    correlator.add(events)
    spans = list(_read(spans_path, Span))
    predicted = {(id(m.signal), es.span.trace_id.lower())
                 for es in correlator.correlate_many(spans)
                 for m in es.matches if id(m.signal) in request}
    return correlation_scores(predicted, true_pairs)
