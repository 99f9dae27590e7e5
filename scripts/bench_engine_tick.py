#!/usr/bin/env python3
"""CPU of ``SloEngine.tick`` over a synthetic, lab-shaped run: for A/B of engine changes.

Synthetic load, benchmark only (no accuracy meaning): one service at 20 requests/s, one
pod cgroup with 60 ProbeEvents/s (72 during a fault: DNS, run-queue, connect and TLS
aggregates, retransmit aggregates, slow connects), the lab's engine settings (1 s
windows and cooldowns), a tick every 0.5 s. One fault of 20 s in every 60 s raises DNS
and connect latency and TTFT; every fifth request then takes 15 s (``--long-ms``), so
evidence reaches back over long request lifetimes. Prints the thread CPU time spent in
``tick()`` and the attribution count. Compare two trees with
``PYTHONPATH=<tree>/python python scripts/bench_engine_tick.py``.
"""

from __future__ import annotations

import argparse
import time

from llm_slo.baseline import BaselineConfig
from llm_slo.engine import EngineConfig, SloEngine
from llm_slo.events import ConnectEvent, ConnTuple, LatencyAggregate, RetransmitAggregate
from llm_slo.identity import Identity
from llm_slo.probe_event import ProbeEvent, ProbeEventBuilder
from llm_slo.spans import SPAN_KIND_SERVER, Span

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
PID, CGROUP = 42, 777
CONN = ConnTuple("10.0.0.2", 40000, "10.0.0.9", 443, "tcp")
RESOURCE = {"service.name": "rag", "process.pid": PID, "k8s.namespace.name": "llm",
            "k8s.cluster.name": "lab"}
BUILDER = ProbeEventBuilder("node", lambda cg: Identity(cgroup_id=cg, cgroup_path="/rag"))


def _agg(signal: str, t: int, mean_ms: float, detail: str = "") -> ProbeEvent:
    return BUILDER.build(LatencyAggregate(signal=signal, ts_ns=t, cgroup_id=CGROUP, count=10,
                                          mean_ms=mean_ms, p99_ms=mean_ms * 2,
                                          max_ms=mean_ms * 3, detail=detail), 0, t)


def _signals(t: int, fault: bool) -> list[ProbeEvent]:
    out = [_agg("dns_latency_ms", t, 300 if fault else 2, "wire"),
           _agg("runqueue_delay_ms", t, 0.1),
           _agg("connect_latency_ms", t, 1500 if fault else 0.1),
           _agg("tls_handshake_ms", t, 4)]
    out += [BUILDER.build(RetransmitAggregate(ts_ns=t + k, cgroup_id=CGROUP, conn=CONN,
                                              syn=False, count=5 if fault else 0), 0, t + k)
            for k in range(10)]
    out += [BUILDER.build(ConnectEvent(ts_ns=t + k, cgroup_id=CGROUP, pid=PID,
                                       latency_ms=1100.0, outcome="established", errno=0,
                                       syn_retransmits=1, conn=CONN), 0, t + k)
            for k in range(6 if fault else 0)]
    out += [_agg("runqueue_delay_ms", t + k, 0.1, "x") for k in range(16)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=120, help="simulated seconds (default 120)")
    p.add_argument("--long-ms", type=float, default=15000.0,
                   help="TTFT of every fifth request during a fault (default 15000)")
    args = p.parse_args()
    engine = SloEngine(EngineConfig(window_s=1.0, cooldown_s=1.0, abstain_retry_s=1.0,
                                    correlation_delay_s=0.5,
                                    baseline=BaselineConfig(warmup=8)),
                       cgroup_of_pid={PID: CGROUP})
    engine.set_active_signals(["dns_latency_ms", "tcp_retransmits_total",
                               "runqueue_delay_ms", "connect_latency_ms", "tls_handshake_ms"])
    cpu, n = 0.0, 0
    for step in range(2 * args.seconds):  # half-second steps
        t = T0 + step * NS // 2
        fault = 60 <= step % 120 < 100
        engine.add_signals(_signals(t, fault))
        spans = []
        for k in range(10):
            n += 1
            ttft = (args.long_ms if n % 5 == 0 else 1200.0) if fault else 130.0
            end = t + k * NS // 20
            spans.append(Span(trace_id=f"{n:032x}", span_id=f"{n:016x}", name="chat",
                              kind=SPAN_KIND_SERVER,
                              start_unix_nano=end - int(ttft * 1e6) - 50_000_000,
                              end_unix_nano=end, resource=RESOURCE,
                              attributes={"gen_ai.operation.name": "chat",
                                          "llm.slo.ttft_ms": ttft}))
        engine.add_spans(spans)
        c0 = time.thread_time()
        engine.tick(t + NS // 2)
        cpu += time.thread_time() - c0
    print(f"tick CPU {cpu:.3f} s over {args.seconds} simulated s "
          f"({100 * cpu / args.seconds:.3f} % of a core); "
          f"attributions {engine.counters['attributions']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
