"""``sloctl probe watch``: load probes, print what they see live, detach on exit.

The asyncio loop polls every probe each interval: ring buffers are drained in one batch
per ring, aggregate maps are read and differenced, and records become ProbeEvents with
identity and wall-clock time. Ctrl-C, SIGTERM or ``--duration`` end it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import msgspec
import structlog

from llm_slo.identity import CgroupResolver, cgroup_id_under
from llm_slo.mounts import cgroup2_mount
from llm_slo.probe_event import ProbeEvent, ProbeEventBuilder
from llm_slo.probes import ProbeSet

log = structlog.get_logger("watch")
_UNIT = {"ms": "ms", "percent": "%", "count": "n"}

_HEADER = f"{'TIME':<12} {'SIGNAL':<22} {'STATUS':<7} {'VALUE':>11} {'N':>6} {'PID':>7} " \
          f"{'COMM':<15} {'CGROUP':<28} DETAIL"


def format_text(ev: ProbeEvent) -> str:
    """One readable line per event."""
    t = time.strftime("%H:%M:%S", time.localtime(ev.ts_unix_nano / 1e9))
    t += f".{ev.ts_unix_nano // 1_000_000 % 1000:03d}"
    where = ev.pod or ev.cgroup_path or "-"
    if len(where) > 28:
        where = "…" + where[-27:]
    value = f"{ev.value:.3f}" if ev.unit != "count" else f"{int(ev.value)}"
    parts = [p for p in (ev.outcome, ev.target, ev.detail) if p]
    if ev.conn_tuple is not None:
        parts.append(ev.conn_tuple.canonical())
    n = "" if ev.count is None else str(ev.count)
    unit = _UNIT.get(ev.unit, ev.unit)
    return (f"{t:<12} {ev.signal:<22} {ev.status:<7} {value:>8} {unit:<2} {n:>6} "
            f"{ev.pid or '-':>7} {(ev.comm or '-')[:15]:<15} {where:<28} {' '.join(parts)}")


def make_printer(output: str, out: IO[str]) -> Callable[[list[ProbeEvent]], None]:
    """A sink for batches of events: a table (``text``) or one JSON object per line."""
    if output == "jsonl":
        enc = msgspec.json.Encoder()

        def jsonl(batch: list[ProbeEvent]) -> None:
            for ev in batch:
                out.write(enc.encode(ev).decode() + "\n")
            out.flush()

        return jsonl
    out.write(_HEADER + "\n")

    def text(batch: list[ProbeEvent]) -> None:
        for ev in batch:
            out.write(format_text(ev) + "\n")
        out.flush()

    return text


async def run_watch(
    probes: ProbeSet,
    emit: Callable[[list[ProbeEvent]], None],
    *,
    node: str,
    interval_s: float,
    duration_s: float | None,
) -> dict[str, Any]:
    """Poll until ``duration_s`` passes or a signal arrives; returns run totals."""
    resolver = CgroupResolver()
    root2 = cgroup2_mount()
    builder = ProbeEventBuilder(node, resolver.resolve, lambda p: cgroup_id_under(root2, p))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    deadline = None if duration_s is None else loop.time() + duration_s
    totals = {"events": 0, "polls": 0}
    last_dropped: dict[str, int] = {}
    try:
        while not stop.is_set():
            timeout = interval_s
            if deadline is not None:
                timeout = min(timeout, max(deadline - loop.time(), 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            records = probes.poll(time.monotonic_ns())
            batch = builder.build_batch(records)
            batch.sort(key=lambda e: e.ts_unix_nano)
            if batch:
                emit(batch)
            totals["events"] += len(batch)
            totals["polls"] += 1
            dropped = _losses(probes)
            if dropped != last_dropped:
                log.warning("records lost", since_start=dropped)
                last_dropped = dropped
            if deadline is not None and loop.time() >= deadline:
                break
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return totals


def _losses(probes: ProbeSet) -> dict[str, int]:
    """Records lost so far per signal: full ring, a hook hit the kernel skipped (its
    record or count), unreadable record, failed read."""
    out = {}
    for sig, c in probes.counters().items():
        n = (c.get("ringbuf_dropped", 0) + c.get("recursion_missed", 0)
             + c.get("bad_records", 0) + probes.read_errors.get(sig, 0))
        if n:
            out[sig] = n
    return out


def _run_time_summary(probes: ProbeSet) -> dict[str, dict[str, float]]:
    """Average kernel time per program run (ns) and runs, from the kernel's stats."""
    return {
        sig: {prog: round(ns / cnt, 1) if cnt else 0.0 for prog, (ns, cnt) in progs.items()}
        for sig, progs in probes.run_stats().items()
    }


def watch(signals: list[str], *, output: str, interval_s: float, duration_s: float | None,
          node: str, options: Any = None, out: IO[str] = sys.stdout) -> int:
    """Entry point for the CLI: open probes, report gaps, watch, close."""
    probes = ProbeSet(signals, options)
    try:
        probes.open()
        for sig, reason in probes.failures.items():
            log.warning("signal unavailable", signal=sig, reason=reason)
        for sig, gaps in probes.gaps().items():
            for gap in gaps:
                log.warning("signal degraded", signal=sig, gap=gap)
        if not probes.probes:
            log.error("no probe could be opened; run `sloctl prereq check`")
            return 1
        log.info("watching", signals=sorted(probes.probes), interval_s=interval_s,
                 duration_s=duration_s)
        totals = asyncio.run(run_watch(probes, make_printer(output, out), node=node,
                                       interval_s=interval_s, duration_s=duration_s))
        log.info("done", counters=probes.counters(), read_errors=probes.read_errors,
                 bpf_run_time=_run_time_summary(probes), **totals)
        return 0
    finally:
        probes.close()
