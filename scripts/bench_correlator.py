#!/usr/bin/env python3
"""Correlator throughput benchmark: spans joined and signals indexed per CPU second, one core.

SYNTHETIC LOAD, FOR THIS BENCHMARK ONLY. It measures throughput, not accuracy: the
signals and spans below are random draws with realistic key cardinality, nothing
about their values or their join "truth" means anything.

Load (defaults): 200k signals/s and 50k spans/s over 10 s of simulated time; 500 pods on
25 nodes, 50 services of 10 pods, 10 pids per pod (5000), 40 connections per pod
(20000), a cgroup per pod. Signal mix: runqueue 35 %, DNS 20 %, connect 10 %, TLS 10 %,
reclaim 4 % (all with pid; DNS and connect also with a connection), retransmit
aggregates 10 % (connection, no pid), per-cgroup latency aggregates 10 % (no pid, no
connection), node CPU steal 1 % (no pod); 1 % of the pid-bearing signals carry the trace
id of a span running nearby. Timestamps arrive with up to 5 ms of disorder. Span
durations: 40 % ~20 ms, 40 % ~300 ms, 20 % ~2 s LLM calls (log-normal, capped at 6 s);
30 % carry a full connection tuple. Spans are correlated when ``window_ms`` has passed
since their end (so every signal inside the gate has arrived), in 100 ms ticks; the
index is evicted each tick against the earliest start a future span can have.

Timed: ``SignalIndex.add`` for the 10 s of signals (2 s of warm-up before and 2 s of
tail after are indexed untimed) and ``Correlator.correlate_many`` for every span that
ends in those 10 s (the spans due at a tick, together, as the engine joins them, and
each enriched span's cgroups read, all the engine reads of it: Match objects are built
only for a reader that asks, such as the lab's join judge), plus eviction. Generating
the synthetic objects is not timed. CPU is ``time.thread_time`` of this single-threaded
process; full cyclic-GC collections that land in timed calls are included and shown
apart, and those anywhere in the run are reported too (their cost grows with the index,
whoever triggers them). Two configurations, each run ``--reps`` times in a fresh
process: the full tier ladder (service/node for diagnostics) and enriching tiers only.

Writes docs/benchmarks/correlator.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from llm_slo.correlator import CorrelationConfig, Correlator, SignalIndex  # noqa: E402
from llm_slo.events import ConnTuple  # noqa: E402
from llm_slo.machine import describe  # noqa: E402
from llm_slo.probe_event import ProbeEvent  # noqa: E402
from llm_slo.spans import Span  # noqa: E402

COMMAND = ".venv/bin/python scripts/bench_correlator.py"
OUT = ROOT / "docs" / "benchmarks"
MS = 1_000_000
T_BASE = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z; any wall-clock origin would do
TICK = 100 * MS
MAX_SPAN = 6_000 * MS
TARGET_SPANS, TARGET_SIGNALS = 50_000, 200_000
PIDS, CONNS, NODES, PODS_PER_SERVICE = 10, 40, 25, 10
# signal, share, has pid, has conn, pod-level
MIX = [("runqueue_delay_ms", 0.35, True, False), ("dns_latency_ms", 0.20, True, True),
       ("connect_latency_ms", 0.10, True, True), ("tls_handshake_ms", 0.10, True, False),
       ("mem_reclaim_latency_ms", 0.04, True, False),
       ("tcp_retransmits_total", 0.10, False, True), ("dns_latency_ms", 0.10, False, False),
       ("cpu_steal_pct", 0.01, False, False)]


class Load:
    """Cluster shape and random draws (synthetic, benchmark only)."""

    def __init__(self, pods: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.pods = [f"pod-{i}" for i in range(pods)]
        self.node = [f"node-{i % NODES}" for i in range(pods)]
        self.service = {p: f"svc-{i // PODS_PER_SERVICE}" for i, p in enumerate(self.pods)}
        self.pid = [[10_000 + i * PIDS + j for j in range(PIDS)] for i in range(pods)]
        self.conn = [[ConnTuple(f"10.{i // 250}.{i % 250}.1", f"10.200.{j}.{i % 250}",
                                30_000 + j, 443, "tcp") for j in range(CONNS)]
                     for i in range(pods)]
        self.shares = np.array([m[1] for m in MIX]) / sum(m[1] for m in MIX)

    def spans(self, t0: int, t1: int, rate: int) -> dict[str, np.ndarray]:
        """Span skeletons with end in [t0, t1) (arrays; built into Spans when due)."""
        n = self.rng.poisson(rate * (t1 - t0) / 1e9)
        kind = self.rng.choice(3, n, p=[0.4, 0.4, 0.2])
        med = np.array([20, 300, 2000])[kind]
        dur = np.minimum(self.rng.lognormal(np.log(med), 0.6) * MS, MAX_SPAN).astype(np.int64)
        end = np.sort(self.rng.integers(t0, t1, n))
        return {"end": end, "start": end - dur, "pod": self.rng.integers(0, len(self.pods), n),
                "pid": self.rng.integers(0, PIDS, n), "conn": self.rng.integers(0, CONNS, n),
                "has_conn": self.rng.random(n) < 0.3,
                "trace": self.rng.integers(1, 2**62, n)}

    def build_span(self, sk: dict[str, np.ndarray], i: int) -> Span:
        p = int(sk["pod"][i])
        pod = self.pods[p]
        attrs: dict[str, Any] = {}
        if sk["has_conn"][i]:
            ct = self.conn[p][int(sk["conn"][i])]
            attrs = {"network.local.address": ct.src_ip, "network.local.port": ct.src_port,
                     "network.peer.address": ct.dst_ip, "network.peer.port": ct.dst_port,
                     "network.transport": "tcp"}
        return Span(trace_id=f"{int(sk['trace'][i]):032x}", span_id=f"{i:016x}", name="op",
                    start_unix_nano=int(sk["start"][i]), end_unix_nano=int(sk["end"][i]),
                    attributes=attrs,
                    resource={"service.name": self.service[pod], "k8s.pod.name": pod,
                              "k8s.node.name": self.node[p],
                              "process.pid": self.pid[p][int(sk["pid"][i])]})

    def signals(self, t0: int, t1: int, rate: int, spans: dict[str, np.ndarray]
                ) -> list[ProbeEvent]:
        """Signals with ts in [t0, t1), in arrival order (up to 5 ms out of order)."""
        n = int(rate * (t1 - t0) / 1e9)
        rng = self.rng
        ts = rng.integers(t0, t1, n)
        order = np.argsort(ts + rng.integers(0, 5 * MS, n))  # arrival = ts + jitter
        kinds = rng.choice(len(MIX), n, p=self.shares)
        pods = rng.integers(0, len(self.pods), n)
        pids, conns = rng.integers(0, PIDS, n), rng.integers(0, CONNS, n)
        traced = rng.random(n) < 0.01
        values = rng.exponential(10.0, n)
        near = np.searchsorted(spans["end"], ts)  # spans ending right after each signal
        out = []
        for i in order.tolist():
            name, _, has_pid, has_conn = MIX[kinds[i]]
            p, trace_id = int(pods[i]), None
            pid = self.pid[p][pids[i]] if has_pid else 0
            if has_pid and traced[i] and near[i] < len(spans["end"]):
                j = near[i]
                p, trace_id = int(spans["pod"][j]), f"{int(spans['trace'][j]):032x}"
                pid = self.pid[p][int(spans["pid"][j])]
            pod = "" if name == "cpu_steal_pct" else self.pods[p]
            v = float(values[i])
            out.append(ProbeEvent(
                ts_unix_nano=int(ts[i]), signal=name, node=self.node[p], namespace="default",
                pod=pod, container="app" if pod else "", pid=pid, tid=pid, value=v, unit="ms",
                cgroup_id=1000 + p if pod else 0,
                status="error" if v > 40 else "warning" if v > 20 else "ok",
                conn_tuple=self.conn[p][conns[i]] if has_conn else None, trace_id=trace_id,
                count=1 if has_pid else 20))
        return out


def run(args: argparse.Namespace, service_tier: bool) -> dict[str, Any]:
    """One timed simulation; ``service_tier`` turns the diagnostic service/node tier on."""
    load = Load(args.pods, args.seed)
    cfg = CorrelationConfig()
    hold = round(cfg.window_ms * MS)
    index = SignalIndex(cfg, service_of=(lambda s: load.service.get(s.pod))
                        if service_tier else None)
    cor = Correlator(cfg, index)
    warm, secs = 2_000 * MS, round(args.seconds * 1e9)
    t_start, t_end = T_BASE, T_BASE + secs
    # All span skeletons up front (cheap arrays): trace-carrying signals need them.
    sk = load.spans(t_start, t_end, args.span_rate)
    # Full collections: [pause s, count] inside the timed calls, [pause s, count] anywhere.
    gc_pause, gc_all, gc_t0 = [0.0, 0], [0.0, 0], [0.0]
    timing = [False]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_t0[0] = time.perf_counter()
        elif info["generation"] == 2:
            dt_s = time.perf_counter() - gc_t0[0]
            gc_all[0] += dt_s
            gc_all[1] += 1
            if timing[0]:
                gc_pause[0] += dt_s
                gc_pause[1] += 1

    gc.callbacks.append(on_gc)
    cpu_add = cpu_corr = cpu_evict = 0.0
    n_sig = n_spans = 0
    cgroups: set[int] = set()
    next_span, peak_index = 0, 0
    wall0 = time.perf_counter()
    t = t_start - warm
    while t < t_end + hold:
        batch = load.signals(t, t + TICK, args.signal_rate, sk)
        timed = t_start <= t < t_end
        timing[0] = timed
        c0 = time.thread_time()
        index.add(batch)
        if timed:
            cpu_add += time.thread_time() - c0
            n_sig += len(batch)
        timing[0] = False
        t += TICK
        # Spans whose end is at least one gate old are due: every signal they can join is in.
        stop = int(np.searchsorted(sk["end"], t - hold, side="left"))
        due = [load.build_span(sk, i) for i in range(next_span, stop)]
        next_span = stop
        timing[0] = True
        c0 = time.thread_time()
        for es in cor.correlate_many(due):  # read as the engine reads them
            cgroups.update(es.cgroup_ids)
        cpu_corr += time.thread_time() - c0
        n_spans += len(due)
        c0 = time.thread_time()
        # Future spans end at or after t - hold and last at most MAX_SPAN.
        index.evict(t - hold - MAX_SPAN)
        cpu_evict += time.thread_time() - c0
        timing[0] = False
        peak_index = max(peak_index, len(index))
        if args.verbose and (t - t_start) % (1000 * MS) == 0:
            print(f"t={(t - t_start) / 1e9:5.1f}s index={len(index):,} spans={n_spans:,}",
                  file=sys.stderr)
    gc.callbacks.remove(on_gc)
    s = cor.stats
    total = cpu_add + cpu_corr + cpu_evict
    return {
        "service_tier": service_tier,
        "simulated_seconds": args.seconds,
        "signals_indexed": n_sig, "spans_joined": n_spans,
        "cpu_s": {"index_add": round(cpu_add, 3), "correlate": round(cpu_corr, 3),
                  "evict": round(cpu_evict, 3), "total": round(total, 3)},
        "signals_per_cpu_s": round(n_sig / cpu_add),
        "spans_per_cpu_s": round(n_spans / cpu_corr),
        "us_per_signal": round(cpu_add / n_sig * 1e6, 3),
        "us_per_span": round(cpu_corr / n_spans * 1e6, 3),
        "one_core_share_at_target_pct": round(100 * total / args.seconds, 1),
        "one_core_share_without_full_gc_pct": round(100 * (total - gc_pause[0]) / args.seconds, 1),
        "gc_full_collections": gc_pause[1], "gc_full_pause_s": round(gc_pause[0], 3),
        "gc_full_collections_whole_run": gc_all[1],
        "gc_full_pause_s_whole_run": round(gc_all[0], 3),
        "simulated_seconds_whole_run": (warm + secs + hold) / 1e9,
        "peak_index_signals": peak_index,
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(time.perf_counter() - wall0, 1),
        "stats": msgspec.to_builtins(s),
        "matches_per_span": round(sum(s.by_tier.values()) / max(n_spans, 1), 3),
        "index": {"unindexed": index.unindexed, "late": index.late, "evicted": index.evicted},
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median share of one core (the lower middle one for even n)."""
    return sorted(runs, key=lambda r: r["one_core_share_at_target_pct"])[(len(runs) - 1) // 2]


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    m, configs = res["machine"], res["configs"]
    v = m["versions"]
    names = {"full": "full ladder (service/node tier on)",
             "enriching": "enriching tiers only (no service_of)"}
    runs = [_median_run(configs[c]) for c in ("full", "enriching")]
    shares = {c: [r["one_core_share_at_target_pct"] for r in configs[c]] for c in configs}
    rate = f"{args.signal_rate:,} signals/s + {args.span_rate:,} spans/s"

    def row(name: str, f: Any) -> str:
        return f"| {name} | " + " | ".join(str(f(r)) for r in runs) + " |"

    rows = [
        f"| share of one core for {rate}, every run | " + " | ".join(
            ", ".join(f"{x} %" for x in shares[c]) for c in ("full", "enriching")) + " |",
        row("signals indexed (timed)", lambda r: f"{r['signals_indexed']:,}"),
        row("spans joined (timed)", lambda r: f"{r['spans_joined']:,}"),
        row("CPU s: index add / correlate / evict", lambda r: " / ".join(
            str(r["cpu_s"][x]) for x in ("index_add", "correlate", "evict"))),
        row("signals indexed per CPU second",
            lambda r: f"{r['signals_per_cpu_s']:,} ({r['us_per_signal']} µs each)"),
        row("spans joined per CPU second",
            lambda r: f"{r['spans_per_cpu_s']:,} ({r['us_per_span']} µs each)"),
        row(f"share of one core for {rate}", lambda r: f"{r['one_core_share_at_target_pct']} %"),
        row("full GC collections / pause s, inside the timed calls",
            lambda r: f"{r['gc_full_collections']} / {r['gc_full_pause_s']}"),
        row("share of one core without those full-GC pauses",
            lambda r: f"{r['one_core_share_without_full_gc_pct']} %"),
        row("full GC collections / pause s anywhere in the run (load generation included)",
            lambda r: f"{r['gc_full_collections_whole_run']} / "
                      f"{r['gc_full_pause_s_whole_run']}"),
        row("peak signals held in the index", lambda r: f"{r['peak_index_signals']:,}"),
        row("max RSS MiB (process)", lambda r: r["max_rss_mib"]),
        row("spans enriched / low-confidence / unmatched", lambda r: (
            f"{r['stats']['enriched']:,} / {r['stats']['low_confidence']:,} / "
            f"{r['stats']['unmatched']:,}")),
        row("kept matches by tier", lambda r: ", ".join(
            f"{k} {v:,}" for k, v in r["stats"]["by_tier"].items())),
        row("enriching joins dropped by the fan-out bound",
            lambda r: f"{r['stats']['fanout_dropped']:,}"),
    ]
    targets = []
    for c in ("full", "enriching"):
        spans = [r["spans_per_cpu_s"] for r in configs[c]]
        targets.append(f"| >= {TARGET_SPANS:,} spans/s joined on one core ({names[c]}) | "
                       f"spans per CPU second, lowest of {len(spans)} runs: {min(spans):,} | "
                       f"{'yes' if min(spans) >= TARGET_SPANS else '**no**'} |")
    for c in ("full", "enriching"):
        worst = max(shares[c])
        targets.append(f"| {rate} on one core ({names[c]}) | share of one core, highest of "
                       f"{len(shares[c])} runs: {worst} % (median "
                       f"{_median_run(configs[c])['one_core_share_at_target_pct']} %) | "
                       f"{'yes' if worst <= 100 else '**no**'} |")
    reading = "\n".join(
        f"- {names[c].capitalize()}: median run {r['one_core_share_at_target_pct']} % of one "
        f"core at the target rates (indexing "
        f"{100 * r['cpu_s']['index_add'] / r['simulated_seconds']:.0f} %, joining "
        f"{100 * r['cpu_s']['correlate'] / r['simulated_seconds']:.0f} %, eviction "
        f"{100 * r['cpu_s']['evict'] / r['simulated_seconds']:.0f} %); full GC collections "
        f"anywhere in that run cost another "
        f"{100 * r['gc_full_pause_s_whole_run'] / r['simulated_seconds_whole_run']:.0f} % "
        f"of a core per simulated second ({r['gc_full_collections_whole_run']} collections "
        f"over {r['simulated_seconds_whole_run']:g} s)."
        for c, r in zip(("full", "enriching"), runs, strict=True))
    heads = " | ".join(names[c] for c in ("full", "enriching"))
    walls = sum(r["wall_s"] for c in configs for r in configs[c])
    return f"""# Correlator throughput benchmark

Command: `{res['command']}`. Generated {res['date']} by scripts/bench_correlator.py; numbers
are from that run, not edited. Raw data: [correlator.json](correlator.json).

Machine: {m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']},
numpy {v['numpy']}, msgspec {v['msgspec']}; load average {' '.join(m['loadavg'])} at start
(a shared VM: other work may have run at the same time). {args.reps} runs per
configuration, each in a fresh process, alternating; {walls:.0f} s of wall time in all,
mostly generating the synthetic load (untimed). Runs on this VM vary by several per
cent (every run's figure is in the first row below), hence the repetitions, the median
and the highest.

**Synthetic load, benchmark only: this measures throughput, not correlation accuracy.**
The load shape is in the script's docstring: {args.pods} pods on 25 nodes, 50 services,
5000 pids, 20000 connections, span durations up to 6 s, {args.seconds:g} s of simulated
time (`--seconds {args.seconds:g}`). CPU is the single thread's CPU time (`thread_time`)
inside the timed calls; full cyclic-GC collections that happen there are included and
also shown apart. Two configurations: with the diagnostic service/node tier (the full
ladder; it is gathered at query time from the pods' keys, so it costs nothing per
signal) and without it (`service_of=None`: only the tiers that enrich by default, which
is what `sloctl agent` runs).

Full GC collections traverse every list the index holds (one reference per indexed
signal and key), so their cost grows with the index. Which code triggers them depends
on who allocates: here mostly the untimed load generator, so the timed figures can
miss pauses that an agent process, which allocates the spans and signals itself,
would pay. The whole-run line shows them all.

## Targets

| Target | Measured | Met |
|---|---|---|
{chr(10).join(targets)}

{reading}

## Results (the median run of each configuration; every run in correlator.json)

| Measure | {heads} |
|---|{'---|' * len(runs)}
{chr(10).join(rows)}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--signal-rate", type=int, default=TARGET_SIGNALS)
    ap.add_argument("--span-rate", type=int, default=TARGET_SPANS)
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--reps", type=int, default=3,
                    help="runs per configuration, each in a fresh process (default 3)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--one", choices=["full", "enriching"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child: one run, JSON on stdout
        print(json.dumps(run(args, service_tier=args.one == "full")))
        return 0
    res = {"command": " ".join([COMMAND, *sys.argv[1:]]),
           "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": describe(("numpy", "msgspec")), "settings": vars(args), "configs": {}}
    # A fresh process per run: a run that follows another in one process inherits its
    # freed heap and measured 5-15 % slower here; alternating the configurations spreads
    # the VM's drifting background load over both.
    child = [sys.executable, __file__, "--seconds", str(args.seconds), "--signal-rate",
             str(args.signal_rate), "--span-rate", str(args.span_rate), "--pods",
             str(args.pods), "--seed", str(args.seed)]
    for i in range(args.reps):
        for one in ("full", "enriching"):
            print(f"run {i + 1}/{args.reps} {one} ...", file=sys.stderr, flush=True)
            out = subprocess.run([*child, "--one", one], capture_output=True, text=True,
                                 check=True).stdout
            res["configs"].setdefault(one, []).append(json.loads(out))
    md = report(res, args)
    print(md)
    if not args.no_write:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "correlator.json").write_text(json.dumps(res, indent=2) + "\n")
        (OUT / "correlator.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
