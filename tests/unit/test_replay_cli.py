"""``sloctl replay`` as a user runs it: a subprocess over JSONL files the test writes.

The recording is what the agent writes with ``--record-spans``: spans (a RAG service's
request, provider call and retrieval) and ProbeEvents of its pod (per-cgroup aggregates
each poll, plus a streamed DNS lookup per request). Twelve seconds: eight calm, then
four with one kernel signal slow and every request's first token late. Replay has no
/proc to map the span's pid to its cgroup; it learns the cgroup by joining the streamed
lookups to the spans by (pod, pid), as the live correlator does.

Bad input (a missing file, a line that is not a record) ends in one line on stderr and
a non-zero exit, not a traceback, and leaves no output behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest
from jsonschema import Draft202012Validator

from llm_slo import contracts
from llm_slo.events import ConnTuple, DnsEvent, LatencyAggregate
from llm_slo.identity import Identity, PodName
from llm_slo.incident import IncidentAttribution
from llm_slo.probe_event import ProbeEvent, ProbeEventBuilder
from llm_slo.slo_event import SloEvent
from llm_slo.spans import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, Span

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
PID, CGROUP = 4242, 777
SECONDS, FAULT_FROM, PER_SECOND = 12, 8, 4
CALM_TTFT_MS, SLOW_TTFT_MS = 40.0, 1250.0
RESOURCE = {"service.name": "rag", "process.pid": PID, "k8s.pod.name": "rag-0",
            "k8s.namespace.name": "llm", "k8s.cluster.name": "lab"}
BUILDER = ProbeEventBuilder("node-1", lambda cg: Identity(cgroup_id=cg, cgroup_path="/rag"),
                            pod_of=lambda cg: PodName("llm", "rag-0", "rag"))
RESOLVER = ConnTuple(src_ip="10.0.0.2", dst_ip="10.0.0.53", src_port=40000, dst_port=53,
                     protocol="udp")
# A short window and warm-up, so twelve recorded seconds teach a baseline.
CONFIG = {"engine": {"window_s": 1.0, "cooldown_s": 3.0, "baseline": {"warmup": 5}}}


class Fault(NamedTuple):
    """What one fault does to one signal's mean, and what the attribution must say."""

    fault_ms: float
    domain: str
    evidence: str  # prefix of the attributor's features of that signal


FAULTS = {"dns_latency_ms": Fault(1200.0, "network_dns", "dns_"),
          "tls_handshake_ms": Fault(400.0, "tls_handshake", "tls_")}
CALM_MS = {"dns_latency_ms": 0.4, "runqueue_delay_ms": 0.05, "connect_latency_ms": 0.1,
           "tls_handshake_ms": 2.0}


def _spans(i: int, t: int, ttft_ms: float) -> list[Span]:
    """Request ``i`` ending at ``t``: the chat request, its provider call (HTTP 200) and
    its retrieval."""
    trace = f"{i:032x}"
    return [
        Span(trace_id=trace, span_id=f"{i:012x}0001", name="chat", kind=SPAN_KIND_SERVER,
             start_unix_nano=t - int(ttft_ms * 1e6) - 10_000_000, end_unix_nano=t,
             attributes={"gen_ai.operation.name": "chat", "llm.slo.ttft_ms": ttft_ms},
             resource=RESOURCE),
        Span(trace_id=trace, span_id=f"{i:012x}0002", name="chat gpt", kind=SPAN_KIND_CLIENT,
             start_unix_nano=t - 30_000_000, end_unix_nano=t - 5_000_000,
             attributes={"gen_ai.provider.name": "openai", "http.response.status_code": 200},
             resource=RESOURCE),
        Span(trace_id=trace, span_id=f"{i:012x}0003", name="retrieval docs",
             start_unix_nano=t - 40_000_000, end_unix_nano=t - 35_000_000,
             attributes={"gen_ai.operation.name": "retrieval"}, resource=RESOURCE),
    ]


def _signals(i: int, t: int, means_ms: dict[str, float]) -> list[ProbeEvent]:
    """One poll of the pod's cgroup (an aggregate per signal, DNS as wire lookups) and
    the request's own DNS lookup, streamed with its pid."""
    aggs = [LatencyAggregate(signal=s, ts_ns=t, cgroup_id=CGROUP, count=4, mean_ms=ms,
                             p99_ms=ms * 1.5, max_ms=ms * 1.5,
                             detail="wire" if s == "dns_latency_ms" else "")
            for s, ms in means_ms.items()]
    lookup = DnsEvent(ts_ns=t - 5_000_000, cgroup_id=CGROUP, pid=PID, tid=PID, comm="rag",
                      latency_ms=means_ms["dns_latency_ms"], dns_id=i, rcode=0,
                      qname="api.openai.com", qtype=1, conn=RESOLVER)
    return [BUILDER.build(rec, 0, t) for rec in (*aggs, lookup)]


def _record(directory: Path, slow_signal: str) -> tuple[Path, Path, Path]:
    """spans.jsonl, signals.jsonl and config.json of the recording; the fault slows
    ``slow_signal``."""
    fault = FAULTS[slow_signal]
    spans: list[Span] = []
    signals: list[ProbeEvent] = []
    for sec in range(SECONDS):
        faulty = sec >= FAULT_FROM
        for k in range(PER_SECOND):
            i = sec * PER_SECOND + k
            t = T0 + sec * NS + k * NS // PER_SECOND
            calm = CALM_MS[slow_signal] + 0.05 * (k % 2)  # a little noise to learn
            means = {**CALM_MS, slow_signal: fault.fault_ms if faulty else calm}
            spans += _spans(i, t, SLOW_TTFT_MS if faulty else CALM_TTFT_MS + k)
            signals += _signals(i, t, means)
    enc = msgspec.json.Encoder()
    paths = directory / "spans.jsonl", directory / "signals.jsonl", directory / "config.json"
    paths[0].write_bytes(b"".join(enc.encode(s) + b"\n" for s in spans))
    paths[1].write_bytes(b"".join(enc.encode(e) + b"\n" for e in signals))
    paths[2].write_text(json.dumps(CONFIG))
    return paths


def sloctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(Path(contracts.__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "llm_slo.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def _records(path: Path, kind: type[Any], schema: str) -> list[Any]:
    """Every line of ``path``, validated against its contract and decoded strictly."""
    validator = Draft202012Validator(json.loads(contracts.render(schema)))
    out = []
    for line in path.read_bytes().splitlines():
        validator.validate(json.loads(line))
        out.append(msgspec.json.decode(line, type=kind, strict=True))
    return out


@pytest.mark.parametrize("slow_signal", sorted(FAULTS))
def test_replay_writes_the_breaches_and_names_the_deviating_domain(
        tmp_path: Path, slow_signal: str) -> None:
    """Exit 0; stdout is the run's counters; slo-events.jsonl holds every SLI of every
    span, the TTFT of exactly the fault's requests breaching; attributions.jsonl explains
    the breach with the domain of the signal that deviated, citing that signal."""
    spans, signals, config = _record(tmp_path, slow_signal)
    out = tmp_path / "out"
    run = sloctl("replay", "--spans", spans, "--signals", signals, "--out", out,
                 "--config", config)
    assert run.returncode == 0, run.stderr
    requests = SECONDS * PER_SECOND
    # Per request: ttft, request latency and error rate of the chat span, provider error
    # rate of the call, retrieval latency of the retrieval.
    assert json.loads(run.stdout) == {
        "spans": 3 * requests, "signals": (len(CALM_MS) + 1) * requests,
        "slo_events": 5 * requests, "attributions": 2, "abstained": 0, "ttft_repeats": 0}
    assert sorted(p.name for p in out.iterdir()) == ["attributions.jsonl", "slo-events.jsonl"]

    events = _records(out / "slo-events.jsonl", SloEvent, "v1/slo-event.schema.json")
    assert len(events) == 5 * requests
    ttft = [e for e in events if e.sli_name == "ttft_ms"]
    breaches = [e for e in ttft if e.status == "breach"]
    assert len(ttft) == requests
    assert [e.trace_id for e in breaches] == [
        f"{i:032x}" for i in range(FAULT_FROM * PER_SECOND, requests)]
    assert {(e.sli_value, e.unit, e.service, e.namespace, e.cluster) for e in breaches} == {
        (SLOW_TTFT_MS, "ms", "rag", "llm", "lab")}
    assert [e for e in events if e.status == "breach"] == breaches

    atts = _records(out / "attributions.jsonl", IncidentAttribution,
                    "v1/incident-attribution.schema.json")
    fault = FAULTS[slow_signal]
    assert [(a.predicted_fault_domain, a.abstain, a.slo_impact.sli) for a in atts] == [
        (fault.domain, False, "ttft_ms")] * 2
    first = atts[0]
    assert (first.service, first.namespace, first.cluster) == ("rag", "llm", "lab")
    assert set(first.trace_ids or ()) <= {e.trace_id for e in breaches}
    assert any(ev.signal.startswith(fault.evidence) and ev.source == "ebpf"
               for ev in first.evidence)


def _bad_line(path: Path) -> None:
    """Replace the file's second line with a ProbeEvent missing its status."""
    lines = path.read_bytes().splitlines()
    doc = json.loads(lines[1])
    del doc["status"]
    lines[1] = json.dumps(doc).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")


def _truncated_line(path: Path) -> None:
    """Cut the file's first line in half, as a crash mid-write leaves it."""
    lines = path.read_bytes().splitlines()
    lines[0] = lines[0][: len(lines[0]) // 2]
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize(("broken", "edit", "message"), [
    ("spans", Path.unlink, r"spans\.jsonl: No such file or directory"),
    ("signals", _bad_line, r"signals\.jsonl:2: not a ProbeEvent: .*`status`"),
    ("spans", _truncated_line, r"spans\.jsonl:1: not a Span: \w"),
    ("config", Path.unlink, r"config .*config\.json: No such file or directory"),
], ids=["missing-spans", "signal-missing-status", "truncated-span", "missing-config"])
def test_bad_input_is_one_line_and_a_nonzero_exit(
        tmp_path: Path, broken: str, edit: Callable[[Path], None], message: str) -> None:
    """The failure names the file (and line) and what is wrong, on one stderr line with
    exit 2 ("invalid input"); nothing is written, not even the output directory."""
    spans, signals, config = _record(tmp_path, "dns_latency_ms")
    edit({"spans": spans, "signals": signals, "config": config}[broken])
    out = tmp_path / "out"
    run = sloctl("replay", "--spans", spans, "--signals", signals, "--out", out,
                 "--config", config)
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("sloctl: invalid input: ")
    assert re.search(message, run.stderr), run.stderr
    assert not out.exists()


def test_an_out_path_that_is_a_file_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    """``--out`` naming an existing file is bad input like any other: one line naming it,
    a non-zero exit, no traceback."""
    spans, signals, _ = _record(tmp_path, "dns_latency_ms")
    out = tmp_path / "out"
    out.write_text("")
    run = sloctl("replay", "--spans", spans, "--signals", signals, "--out", out)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert len(run.stderr.splitlines()) == 1 and str(out) in run.stderr, run.stderr
