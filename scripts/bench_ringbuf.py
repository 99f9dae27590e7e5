#!/usr/bin/env python3
"""`make bench`: the agent's ring-buffer path and BPF costs, measured on this machine.

1. Drain + decode throughput against a real BPF producer: ``bpf/bench_producer.bpf.o``
   on ``raw_tp/sys_enter`` writes one 72-byte ``struct runq_event`` per getppid() of a C
   generator (``scripts/bench_producer.c``, compiled here with gcc into a temp dir) that
   calls it at a fixed rate. This process consumes with the agent's own code:
   ``RingBuffer.drain()`` every 20 ms, then (b) ``decode.runqueue_events``.
2. The same at 100k ev/s while another Python thread of this process is CPU-bound.
3. Per-program kernel cost (``run_time_ns / run_cnt`` with BPF run-time stats on) of the
   real probes under load: runqueue_delay (pipe ping-pong + CPU hogs), connect_latency
   (loopback connects), dns_latency (loopback UDP + some DNS).
4. RSS of an agent process with every probe open and idle.

Progress goes to stderr; results to docs/benchmarks/ringbuf.{json,md}. Every child
process is killed and every BPF object closed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import numpy as np  # noqa: E402
import structlog  # noqa: E402

from llm_slo import abi, decode  # noqa: E402
from llm_slo.bpf.libbpf import (  # noqa: E402
    BpfObject,
    enable_run_time_stats,
    libbpf_version,
    possible_cpus,
)
from llm_slo.bpf.ringbuf import RingBuffer  # noqa: E402
from llm_slo.machine import describe, loadavg  # noqa: E402
from llm_slo.probes.base import BpfProbe, ProbeOptions  # noqa: E402
from llm_slo.probes.kernel import ConnectLatency, DnsLatency, RunqueueDelay  # noqa: E402

COMMAND = "make bench  (= .venv/bin/python scripts/bench_ringbuf.py)"
OUT_JSON = ROOT / "docs" / "benchmarks" / "ringbuf.json"
OUT_MD = ROOT / "docs" / "benchmarks" / "ringbuf.md"
PRODUCER_OBJ = ROOT / "bpf" / "bench_producer.bpf.o"
GENERATOR_SRC = ROOT / "scripts" / "bench_producer.c"

RING_BYTES = 16 << 20
DRAIN_INTERVAL_S = 0.020
RATES = (100_000, 300_000, 500_000, 800_000)
GIL_RATE = 100_000
TARGET_DRAIN_RATE = 500_000
TARGET_STRUCT_NS = 1000.0
TARGET_SCHED_NS = 300.0
TARGET_RSS_BYTES = 80_000_000  # 80 MB


def sched_programs(programs: dict[str, Any]) -> dict[str, Any]:
    """The runqueue_delay programs that ran: whichever flavour (tp_btf or raw_tp) loaded."""
    return {n: p for n, p in programs.items() if n.startswith("runq_") and p["run_cnt"]}

DNS_ADDRS = ("127.77.0.53", "127.77.1.53", "127.78.0.53")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Resources: child processes, BPF objects, fds. All released by Cleanup.close().


class Cleanup:
    """Owns every child process and closable this run creates."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.closers: list[Callable[[], object]] = []

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.PIPE)
        proc = subprocess.Popen(argv, **kw)
        self.procs.append(proc)
        return proc

    def reap(self, proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """Wait for a generator to finish by itself and return its JSON report."""
        out, _ = proc.communicate(timeout=timeout)
        self.procs.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        return json.loads(out.decode().strip().splitlines()[-1])

    def close(self) -> None:
        # SIGTERM first (a ping-pong process then reaps its own child), SIGKILL after 2 s.
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5.0)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.procs.clear()
        while self.closers:
            with contextlib.suppress(Exception):
                self.closers.pop()()


@contextlib.contextmanager
def run_time_stats() -> Iterator[bool]:
    """BPF run-time accounting on for the block: the fd stays open until it ends."""
    fd = enable_run_time_stats()
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def build_generator(tmp: Path) -> str:
    exe = tmp / "bench_producer"
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("gcc not found (make deps installs it)")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(exe), str(GENERATOR_SRC)], check=True)
    return str(exe)


# ---------------------------------------------------------------------------------------
# Sections 1 and 2: streaming through the ring buffer.


class Producer:
    """bench_producer.bpf.o loaded and attached, with the agent's RingBuffer on it."""

    def __init__(self, ring_bytes: int) -> None:
        self.obj = BpfObject(str(PRODUCER_OBJ), probe="bench")
        self.ring: RingBuffer | None = None
        try:
            self.obj.maps["events"].set_max_entries(ring_bytes)
            self.obj.load()
            self.set_target(0)
            self.obj.programs["bench_sys_enter"].attach()
            m = self.obj.maps["events"]
            self.ring = RingBuffer(m.fd, m.max_entries, abi.RUNQ_EVENT)
        except BaseException:
            self.close()
            raise
        self.ncpus = possible_cpus()

    def set_target(self, tgid: int) -> None:
        self.obj.maps["settings"].update(b"\0" * 4, tgid.to_bytes(4, "little") + b"\0" * 4)

    def dropped(self) -> int:
        key = abi.COUNTER_RINGBUF_DROPPED.to_bytes(4, "little")
        raw = self.obj.maps["counters"].lookup(key, 8 * self.ncpus)
        return int(np.frombuffer(raw, dtype="<u8").sum()) if raw else 0

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        self.obj.close()


def _cpu() -> float:
    """Process user+sys CPU seconds (getrusage: microsecond resolution, unlike os.times)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _host_cpu() -> tuple[float, int, int]:
    """(monotonic s, idle+iowait jiffies, steal jiffies) summed over CPUs (/proc/stat).

    Busy time in /proc/stat is sampled at the tick and misses short bursts; idle time is
    measured exactly on NO_HZ kernels, so busy share is derived from idle and wall time.
    """
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    return time.monotonic(), vals[3] + vals[4], vals[7]


def _host_pct(before: tuple[float, int, int], after: tuple[float, int, int]
              ) -> dict[str, float]:
    """Host-wide busy and steal share (% of all CPUs) between two _host_cpu() samples."""
    capacity = max(after[0] - before[0], 1e-9) * (os.cpu_count() or 1) * os.sysconf("SC_CLK_TCK")
    busy = 100.0 * (1.0 - (after[1] - before[1]) / capacity)
    return {"host_busy_pct": min(100.0, max(0.0, busy)),
            "host_steal_pct": 100.0 * (after[2] - before[2]) / capacity}


def spin_thread(stop: threading.Event) -> threading.Thread:
    """A pure-Python CPU-bound thread in this process (holds the GIL when it can)."""

    def loop() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                n += 1

    th = threading.Thread(target=loop, name="cpu-bound", daemon=True)
    th.start()
    return th


def stream_run(prod: Producer, gen: str, cleanup: Cleanup, rate: int, secs: float, *,
               structs: bool, contended: bool = False) -> dict[str, Any]:
    """One generator run at ``rate``; this thread drains every 20 ms until all is in."""
    ring = prod.ring
    assert ring is not None
    ring.drain()  # nothing may be left from an earlier run
    bad0 = ring.bad_records
    stats = decode.DecodeStats()
    proc = cleanup.spawn([gen, "getppid", str(rate), str(secs)], stdin=subprocess.PIPE)
    prod.set_target(proc.pid)
    drop0 = prod.dropped()
    stop = threading.Event()
    spinner = spin_thread(stop) if contended else None
    received = made = drains = late = 0
    max_pending = 0
    max_batch = 0
    deadline = time.monotonic() + secs + 60
    try:
        t0, c0, th0, h0 = time.monotonic(), _cpu(), time.thread_time(), _host_cpu()
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()  # left open: communicate() in reap() closes it
        next_t = t0
        while True:
            max_pending = max(max_pending, ring.pending_bytes)
            exited = proc.poll() is not None
            recs = ring.drain()
            drains += 1
            received += len(recs)
            max_batch = max(max_batch, len(recs))
            if structs:
                made += len(decode.runqueue_events(recs, stats))
            if exited and len(recs) == 0 and ring.pending_bytes == 0:
                break
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError("consumer never caught up; giving up")
            next_t += DRAIN_INTERVAL_S
            if next_t > now:
                time.sleep(next_t - now)
            else:
                late += 1
                next_t = now
        t1, c1, th1, h1 = time.monotonic(), _cpu(), time.thread_time(), _host_cpu()
    finally:
        stop.set()
        if spinner is not None:
            spinner.join()
        prod.set_target(0)
    gen_report = cleanup.reap(proc, timeout=10)
    dropped = prod.dropped() - drop0
    produced = int(gen_report["calls"])
    wall = t1 - t0
    proc_cpu = c1 - c0
    thread_cpu = th1 - th0
    return {
        "target_rate": rate,
        "mode": "drain+decode" if structs else "drain",
        "contended": contended,
        "seconds": secs,
        "produced": produced,
        "generator_rate": produced / gen_report["elapsed_s"],
        "generator_cpu_s": gen_report["cpu_s"],
        "received": received,
        "dropped": dropped,
        "unaccounted": produced - received - dropped,
        "structs": made if structs else None,
        "bad_records": sum(stats.bad_records.values()) + ring.bad_records - bad0,
        "drains": drains,
        "late_drains": late,
        "max_batch": max_batch,
        "max_ring_fill_pct": 100.0 * max_pending / ring.size,
        "wall_s": wall,
        "process_cpu_s": proc_cpu,
        "consumer_thread_cpu_s": thread_cpu,
        "process_ns_per_event": 1e9 * proc_cpu / received if received else None,
        "consumer_ns_per_event": 1e9 * thread_cpu / received if received else None,
        "process_core_pct": 100.0 * proc_cpu / wall,
        "consumer_core_pct": 100.0 * thread_cpu / wall,
        **_host_pct(h0, h1),
    }


def _fmt_run(r: dict[str, Any]) -> str:
    ns = r["consumer_ns_per_event"] if r["contended"] else r["process_ns_per_event"]
    pct = r["consumer_core_pct"] if r["contended"] else r["process_core_pct"]
    return (f"{r['mode']:<12} {r['target_rate'] / 1000:>5.0f}k/s: produced {r['produced']}, "
            f"received {r['received']}, dropped {r['dropped']}, "
            f"{ns or 0:.0f} ns/event, {pct:.1f}% core, ring max {r['max_ring_fill_pct']:.1f}%")


def section_stream(prod: Producer, gen: str, cleanup: Cleanup, secs: float
                   ) -> list[dict[str, Any]]:
    runs = []
    for structs in (False, True):
        for rate in RATES:
            r = stream_run(prod, gen, cleanup, rate, secs, structs=structs)
            say(_fmt_run(r))
            runs.append(r)
    return runs


def section_gil(prod: Producer, gen: str, cleanup: Cleanup, secs: float
                ) -> list[dict[str, Any]]:
    runs = []
    for structs in (False, True):
        r = stream_run(prod, gen, cleanup, GIL_RATE, secs, structs=structs, contended=True)
        say("contended " + _fmt_run(r))
        runs.append(r)
    return runs


def publish_diagnostic(prod: Producer, gen: str, cleanup: Cleanup, rate: int, secs: float
                       ) -> list[dict[str, Any]]:
    """Drops caused by *how* the consumer position is published, nothing else.

    Not the agent's path: every 20 ms the consumer position jumps to the producer
    position (records are skipped, not read), written either with ``struct.pack_into``
    or with one aligned 8-byte store. With the ring nearly empty, any reserve failure
    here comes from the publish itself.
    """
    import ctypes
    import mmap
    import struct

    assert prod.ring is not None
    fd, page = prod.obj.maps["events"].fd, mmap.PAGESIZE
    out = []
    for method in ("struct.pack_into", "single 8-byte store"):
        cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        prod_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        cons_word = ctypes.c_uint64.from_buffer(cons_map)
        try:
            prod.ring.drain()
            proc = cleanup.spawn([gen, "getppid", str(rate), str(secs)],
                                 stdin=subprocess.PIPE)
            prod.set_target(proc.pid)
            drop0 = prod.dropped()
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            publishes = 0
            while proc.poll() is None:
                time.sleep(DRAIN_INTERVAL_S)
                (pos,) = struct.unpack_from("<Q", prod_map, 0)
                if method == "struct.pack_into":
                    struct.pack_into("<Q", cons_map, 0, pos)
                else:
                    cons_word.value = pos
                publishes += 1
            prod.set_target(0)
            produced = int(cleanup.reap(proc, timeout=10)["calls"])
            cons_word.value = struct.unpack_from("<Q", prod_map, 0)[0]  # leave it empty
            dropped = prod.dropped() - drop0
        finally:
            prod.set_target(0)
            del cons_word
            cons_map.close()
            prod_map.close()
        out.append({"publish": method, "target_rate": rate, "seconds": secs,
                    "produced": produced, "publishes": publishes, "dropped": dropped})
        say(f"publish diagnostic, {method}: {publishes} publishes, {dropped} dropped "
            f"of {produced}")
    return out


def decode_breakdown(n: int = 50_000) -> dict[str, float]:
    """Where ``decode.runqueue_events`` spends its time, on synthetic valid records."""
    recs = np.zeros(n, dtype=abi.RUNQ_EVENT)
    hdr = recs["hdr"]
    hdr["kind"], hdr["version"], hdr["size"] = abi.EVENT_RUNQ_SLOW, abi.ABI_VERSION, 72
    hdr["pid_tgid"], hdr["comm"] = (4242 << 32) | 4242, b"bench_producer"
    recs["delay_ns"] = 12_345_678

    def per_event(fn: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return 1e9 * best / n

    stats = decode.DecodeStats()
    return {
        "records": n,
        "runqueue_events_ns": per_event(lambda: decode.runqueue_events(recs, stats)),
        "valid_mask_ns": per_event(lambda: decode.valid(recs, abi.EVENT_RUNQ_SLOW, stats)),
        "row_iteration_ns": per_event(lambda: [r for r in recs]),
        "row_field_reads_ns": per_event(lambda: [
            (int(r["hdr"]["ts_ns"]), int(r["hdr"]["cgroup_id"]), int(r["hdr"]["pid_tgid"]),
             r["hdr"]["comm"], int(r["delay_ns"]), int(r["prev_cgroup_id"]), int(r["cpu"]))
            for r in recs]),
    }


# ---------------------------------------------------------------------------------------
# Section 3: kernel cost per program run of the real probes.


def _ctxt() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def probe_cost(probe: BpfProbe, cleanup: Cleanup, load: list[list[str]], secs: float
               ) -> dict[str, Any]:
    """Open ``probe``, run the ``load`` commands for ``secs``, diff per-program stats."""
    with run_time_stats() as enabled:
        try:
            probe.open()
            assert probe.obj is not None
            sections = {n: p.section for n, p in probe.obj.programs.items()}
            before = probe.run_stats()
            ctxt0, t0, h0 = _ctxt(), time.monotonic(), _host_cpu()
            procs = [cleanup.spawn(argv) for argv in load]
            polled = 0
            while any(p.poll() is None for p in procs):
                if time.monotonic() - t0 > secs + 30:
                    raise RuntimeError("load generators did not stop")
                time.sleep(1.0)
                polled += len(probe.poll(time.monotonic_ns()))  # as the agent does
            after = probe.run_stats()
            wall, ctxt, host = time.monotonic() - t0, _ctxt() - ctxt0, _host_pct(h0, _host_cpu())
            reports = [cleanup.reap(p, timeout=5) for p in procs]
            counters = probe.counters()
        finally:
            probe.close()
    programs = {}
    for name, (rt1, cnt1) in after.items():
        rt0, cnt0 = before.get(name, (0, 0))
        runs, ns = cnt1 - cnt0, rt1 - rt0
        programs[name] = {
            "section": sections.get(name),
            "run_cnt": runs,
            "run_time_ns": ns,
            "avg_ns": ns / runs if runs else None,
            "runs_per_s": runs / wall,
            "core_pct": 100.0 * ns / (wall * 1e9),
        }
    return {
        "signal": probe.signal,
        "stats_enabled": enabled,
        "wall_s": wall,
        "context_switches_per_s": ctxt / wall,
        **host,
        "load": [" ".join([Path(a[0]).name, *a[1:]]) for a in load],
        "load_reports": reports,
        "records_polled": polled,
        "counters": counters,
        "programs": programs,
    }


def _free_dns_addr() -> str:
    for addr in DNS_ADDRS:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((addr, 53))
            except OSError:
                continue
            return addr
    raise RuntimeError(f"port 53 busy on every bench address {DNS_ADDRS}")


def _fmt_programs(res: dict[str, Any]) -> str:
    parts = []
    for name, p in res["programs"].items():
        avg = f"{p['avg_ns']:.0f} ns" if p["avg_ns"] is not None else "no runs"
        parts.append(f"{name} {avg} x {p['runs_per_s']:.0f}/s")
    return "; ".join(parts)


def section_kernel(gen: str, cleanup: Cleanup, sched_s: float, net_s: float,
                   errors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    opts = ProbeOptions()
    s, n = str(sched_s), str(net_s)
    runs: list[tuple[str, str, Callable[[], BpfProbe], Callable[[], list[list[str]]],
                     float]] = [
        ("runqueue_delay",
         f"runqueue_delay under 2 pipe ping-pong pairs + 2 CPU hogs for {sched_s:.0f} s",
         lambda: RunqueueDelay(opts),
         lambda: [[gen, "pingpong", s], [gen, "pingpong", s], [gen, "hog", s],
                  [gen, "hog", s]], sched_s),
        ("connect_latency", f"connect_latency under ~2000 loopback connects/s for "
         f"{net_s:.0f} s", lambda: ConnectLatency(opts),
         lambda: [[gen, "connect", "2000", n]], net_s),
        ("dns_latency", f"dns_latency under ~2000 loopback UDP datagrams/s, 1 in 20 a DNS "
         f"query, for {net_s:.0f} s", lambda: DnsLatency(opts),
         lambda: [[gen, "udp", "2000", n, "20", _free_dns_addr()]], net_s),
    ]
    for key, what, make_probe, make_load, secs in runs:
        say(what)
        try:
            out[key] = probe_cost(make_probe(), cleanup, make_load(), secs)
        except Exception as e:  # one probe failing must not hide the others
            errors.append(f"section 3 {key}: {type(e).__name__}: {e}")
            say(f"  FAILED: {e}")
            continue
        say("  " + _fmt_programs(out[key]))
    return out


# ---------------------------------------------------------------------------------------
# Section 4: RSS of an idle agent with every probe open.

RSS_CHILD = r"""
import json, os, sys, time
import logging, structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
                    wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
from llm_slo.events import SIGNALS
from llm_slo.probes import ProbeSet

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out

at_import = status()
ps = ProbeSet(SIGNALS)
try:
    ps.open()
    at_open = status()
    t = os.times(); c0 = t.user + t.system
    records = 0
    for _ in range(int(sys.argv[1])):
        time.sleep(1.0)
        records += len(ps.poll(time.monotonic_ns()))
    t = os.times(); cpu = t.user + t.system - c0
    final = status()
    print("BENCH_RSS " + json.dumps({
        "at_import": at_import, "after_open": at_open, "after_polls": final,
        "open": sorted(ps.probes), "failures": ps.failures, "gaps": ps.gaps(),
        "records": records, "poll_cpu_s": cpu, "polls": int(sys.argv[1])}), flush=True)
finally:
    ps.close()
"""


def section_rss(cleanup: Cleanup, secs: int) -> dict[str, Any]:
    say(f"agent RSS: ProbeSet(all signals) open, polled every 1 s for {secs} s")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = cleanup.spawn([sys.executable, "-c", RSS_CHILD, str(secs)], env=env)
    out, _ = proc.communicate(timeout=secs + 60)
    cleanup.procs.remove(proc)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("BENCH_RSS ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"RSS child failed with exit status {proc.returncode}")
    res = json.loads(lines[-1].removeprefix("BENCH_RSS "))
    say(f"  VmRSS {res['after_polls']['VmRSS'] / 2**20:.1f} MiB, "
        f"VmHWM {res['after_polls']['VmHWM'] / 2**20:.1f} MiB; open {res['open']}; "
        f"failed {sorted(res['failures'])}")
    return res


# ---------------------------------------------------------------------------------------
# Report.


def evaluate(res: dict[str, Any]) -> dict[str, Any]:
    """Targets vs measurements; a section that did not run is not met."""
    verdict: dict[str, Any] = {}
    stream = res.get("stream") or []
    drain = [r for r in stream if r["mode"] == "drain"]
    full = [r for r in stream if r["mode"] == "drain+decode"]
    if drain:
        at = [r for r in drain if r["target_rate"] == TARGET_DRAIN_RATE]
        verdict["drain_500k_zero_drops"] = {
            "target": ">= 500k ev/s at zero drops, consumer within one core (drain path)",
            "measured": "; ".join(
                f"{r['generator_rate'] / 1000:.0f}k ev/s: {r['dropped']} dropped, "
                f"{r['process_core_pct']:.1f} % core" for r in drain
                if r["target_rate"] >= TARGET_DRAIN_RATE),
            "met": bool(at) and all(
                r["dropped"] == 0 and r["unaccounted"] == 0
                and r["process_core_pct"] <= 100.0
                and r["generator_rate"] >= 0.99 * TARGET_DRAIN_RATE for r in at),
        }
    if full:
        worst = max(r["process_ns_per_event"] or 0.0 for r in full)
        verdict["struct_1us_per_event"] = {
            "target": "<= 1000 ns consumer CPU per event streamed to a Struct",
            "measured": f"{min(r['process_ns_per_event'] or 0.0 for r in full):.0f}-"
                        f"{worst:.0f} ns/event",
            "met": worst <= TARGET_STRUCT_NS,
        }
    gil = res.get("gil") or []
    if gil:
        verdict["gil_no_drops"] = {
            "target": "no drops at 100k ev/s with a CPU-bound Python thread",
            "measured": ", ".join(f"{r['mode']}: {r['dropped']} dropped" for r in gil),
            "met": all(r["dropped"] == 0 and r["unaccounted"] == 0 for r in gil),
        }
    sched = (res.get("kernel") or {}).get("runqueue_delay")
    if sched:
        progs = sched_programs(sched["programs"])
        runs = sum(p["run_cnt"] for p in progs.values())
        total = sum(p["run_time_ns"] for p in progs.values())
        # The issue's target is the average over the scheduler hooks' runs; per-hook
        # averages are reported next to it so a rare expensive hook stays visible.
        verdict["sched_hooks_300ns"] = {
            "target": "<= 300 ns on average per run of the scheduler hooks (run-weighted)",
            "measured": (f"run-weighted {total / runs:.0f} ns; " if runs else "")
                        + "per hook: " + ", ".join(f"{n} {p['avg_ns']:.0f} ns"
                                                   for n, p in progs.items()
                                                   if p["avg_ns"] is not None),
            "met": sched["stats_enabled"] and bool(runs) and total / runs <= TARGET_SCHED_NS,
        }
    rss = res.get("rss")
    if rss:
        verdict["rss_80mb"] = {
            "target": "<= 80 MB (76.3 MiB) VmRSS, all probes open and idle",
            "measured": f"VmRSS {rss['after_polls']['VmRSS'] / 2**20:.1f} MiB, "
                        f"VmHWM {rss['after_polls']['VmHWM'] / 2**20:.1f} MiB",
            "met": rss["after_polls"]["VmRSS"] <= TARGET_RSS_BYTES,
        }
    return verdict


def explain_misses(res: dict[str, Any]) -> list[str]:
    """Likely reasons for each missed target, stated only where the data shows them."""
    v, out = res["verdict"], []
    stream = res.get("stream") or []
    pub = {d["publish"]: d["dropped"] for d in res.get("publish_diagnostic") or []}
    drops_low_fill = [r for r in stream + (res.get("gil") or [])
                      if r["dropped"] and r["max_ring_fill_pct"] < 50.0]
    publish_bug = bool(drops_low_fill) and pub.get("struct.pack_into", 0) > 0 \
        and pub.get("single 8-byte store") == 0
    if publish_bug:
        out.append(
            f"Drops with the ring nearly empty ({len(drops_low_fill)} runs dropped records "
            "while the ring never passed "
            f"{max(r['max_ring_fill_pct'] for r in drops_low_fill):.1f} % fill) are not a "
            "capacity limit. The publish diagnostic shows that publishing the consumer "
            f"position with `struct.pack_into` alone loses records "
            f"({pub['struct.pack_into']} here) and one 8-byte store loses none: CPython's "
            "pack_into zero-fills the 8 bytes before it stores the value, and a reserve "
            "that reads the position in between sees 0, i.e. a full ring. Check how "
            "python/llm_slo/bpf/ringbuf.py publishes the consumer position.")
    if not v.get("struct_1us_per_event", {}).get("met", True):
        bd = res.get("decode_breakdown") or {}
        if bd and bd["runqueue_events_ns"] > 0.5 * bd["row_field_reads_ns"]:
            out.append(
                "Struct decoding is over the 1 µs budget and `decode.runqueue_events` costs "
                f"{bd['runqueue_events_ns']:.0f} ns/record even in memory, close to the "
                f"{bd['row_field_reads_ns']:.0f} ns of merely reading each record's fields "
                "as numpy scalars row by row: per-row access dominates, not the drain. It "
                "also caps the decoded stream on one core at the capacity shown in the "
                "table, so higher rates fill the ring and drop.")
        else:
            out.append(
                "Struct decoding is over the 1 µs budget end to end although "
                "`decode.runqueue_events` alone costs "
                f"{bd.get('runqueue_events_ns', float('nan')):.0f} ns/record in memory: "
                "the rest is the drain copy, cache misses on fresh ring data and "
                "interpreter overhead at this rate.")
    if "sched_hooks_300ns" in v:  # hooks over budget are named even when the average is met
        progs = (res.get("kernel") or {}).get("runqueue_delay", {}).get("programs", {})
        over = {n: p for n, p in sched_programs(progs).items()
                if p["avg_ns"] is not None and p["avg_ns"] > TARGET_SCHED_NS}
        why = {  # raw_tp flavours carry a _raw suffix
            "runq_wakeup_new": "runs once per fork and likely pays the creation of the new "
                               "task's storage",
            "runq_wakeup": "runs on every wakeup: one task-storage get with create and a "
                           "clock read",
            "runq_switch": "runs on every context switch: prev's state, prev's and next's "
                           "task storage, clock reads, next's cgroup, a per-CPU LRU hash "
                           "histogram and the settings map (switch_in() in "
                           "bpf/runqueue_delay.bpf.c)",
        }
        for name, p in over.items():
            out.append(
                f"{name} averages {p['avg_ns']:.0f} ns at {p['runs_per_s']:,.0f} runs/s "
                f"({p['core_pct']:.3f} % of one core): it "
                f"{why.get(name.removesuffix('_raw'), 'is over budget')}.")
    if not v.get("gil_no_drops", {}).get("met", True):
        gil = res.get("gil") or []
        if publish_bug and all(r["max_ring_fill_pct"] < 50.0 for r in gil):
            out.append(
                "The GIL-contention runs never filled the ring past "
                f"{max(r['max_ring_fill_pct'] for r in gil):.1f} %, so their drops come from "
                "the consumer-position publish above, not from the contending thread.")
    return out


def _targets(verdict: dict[str, Any], *keys: str) -> list[str]:
    rows = [verdict[k] for k in keys if k in verdict]
    if not rows:
        return ["Target: not evaluated (section did not complete).", ""]
    return (["| Target | Measured | Met |", "|---|---|---|"]
            + [f"| {x['target']} | {x['measured']} | {_yes(x['met'])} |" for x in rows]
            + [""])


def _yes(v: bool) -> str:
    return "yes" if v else "**no**"


def _n(v: float | None, fmt: str = ".0f") -> str:
    return "—" if v is None else format(v, fmt)


def render_md(res: dict[str, Any]) -> str:
    m, v = res["machine"], res["verdict"]
    lines = [
        "# Ring buffer and BPF overhead benchmarks",
        "",
        f"Command: `{COMMAND}`. Generated {res['date']} by scripts/bench_ringbuf.py; "
        "numbers are from that one run, not edited. Raw data: [ringbuf.json](ringbuf.json).",
        "",
        f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, kernel {m['kernel']}, "
        f"Python {m['python']}, libbpf {m['libbpf']}, numpy {m['versions']['numpy']}, "
        f"msgspec {m['versions']['msgspec']}; load average {' '.join(m['loadavg'])} at start, "
        f"{' '.join(m.get('loadavg_at_end', ['?']))} at the end (1/5/15 min; a shared dev "
        "VM, so other work may have run at the same time). Whole run: "
        f"{res.get('elapsed_s', 0):.0f} s.",
        "",
        "## Summary",
        "",
        "| Target | Measured | Met |",
        "|---|---|---|",
    ]
    lines += [f"| {x['target']} | {x['measured']} | {_yes(x['met'])} |" for x in v.values()]
    lines += [
        "",
        "## 1. Drain and decode throughput (real BPF producer)",
        "",
        "Producer: `bpf/bench_producer.bpf.o` on `raw_tp/sys_enter`, one 72-byte "
        "`struct runq_event` per getppid() of the C generator (`scripts/bench_producer.c`, "
        "paced in batches at the target rate) into a 16 MiB ring. Consumer: this process, "
        "`RingBuffer.drain()` every 20 ms; (a) drain only (records copied out as a numpy "
        "structured array), (b) drain + `decode.runqueue_events` to msgspec Structs. "
        "Dropped = failed `bpf_ringbuf_reserve` (counters map). CPU = this process's "
        "user+sys (getrusage) over the run, including the tail drain after the generator "
        "stops. Generator rate = calls it achieved (its syscall and the BPF program run "
        "on its own CPU time).",
        "",
        "| Mode | Target ev/s | Generator ev/s | Produced | Received | Dropped | "
        "CPU ns/event | % of one core | One-core capacity ev/s | Max ring fill | "
        "Late drains | Host busy % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.get("stream") or []:
        ns = r["process_ns_per_event"]
        lines.append(
            f"| {r['mode']} | {r['target_rate']:,} | {r['generator_rate']:,.0f} | "
            f"{r['produced']:,} | {r['received']:,} | {r['dropped']:,} | "
            f"{_n(ns)} | {r['process_core_pct']:.1f} | "
            f"{_n(1e9 / ns if ns else None, ',.0f')} | "
            f"{r['max_ring_fill_pct']:.1f} % | {r['late_drains']}/{r['drains']} | "
            f"{r['host_busy_pct']:.0f} |")
    lines += [
        "",
        "Host busy % = share of all CPUs not idle host-wide during the run (from the "
        "/proc/stat idle time and wall time), "
        "generator and consumer included; well above their own use means other work ran "
        "concurrently. One-core capacity = 1 s / CPU per event: the rate at which this "
        "consumer would need a whole core. Late drains = drains that started late "
        "because the previous one overran the 20 ms period (consumer saturated).",
        "",
    ]
    lines += _targets(v, "drain_500k_zero_drops", "struct_1us_per_event")
    bd = res.get("decode_breakdown")
    if bd:
        lines += [
            f"Decode cost in memory ({bd['records']:,} synthetic valid records, best of "
            "3, ns per record): `decode.runqueue_events` "
            f"{bd['runqueue_events_ns']:.0f}, of which the `decode.valid` mask "
            f"{bd['valid_mask_ns']:.0f}. For comparison, iterating the structured array "
            f"row by row costs {bd['row_iteration_ns']:.0f}, and reading the 7 fields of "
            f"each row as numpy scalars {bd['row_field_reads_ns']:.0f}.",
            "",
        ]
    pub = res.get("publish_diagnostic")
    if pub:
        lines += [
            "Consumer-position publish diagnostic (not the agent's path): every 20 ms the "
            "consumer position is set to the producer position without reading records, "
            "written either with `struct.pack_into` or with one aligned 8-byte store "
            "(ctypes `c_uint64`). The ring stays nearly empty, so any failed reserve is "
            "caused by the publish itself.",
            "",
            "| Publish | Target ev/s | Produced | Publishes | Dropped |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {d['publish']} | {d['target_rate']:,} | {d['produced']:,} | "
                  f"{d['publishes']} | {d['dropped']:,} |" for d in pub]
        lines.append("")
    lines += [
        "",
        "## 2. GIL contention",
        "",
        f"As above at {GIL_RATE:,} ev/s while a second thread of the consumer process runs "
        "a pure-Python loop. CPU here is the consumer thread's own (time.thread_time); the "
        "process total includes the spinning thread.",
        "",
        "| Mode | Target ev/s | Produced | Received | Dropped | Consumer ns/event | "
        "Consumer % core | Process % core | Max ring fill | Late drains | Host busy % | "
        "Met (no drops) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res.get("gil") or []:
        ok = r["dropped"] == 0 and r["unaccounted"] == 0
        lines.append(
            f"| {r['mode']} | {r['target_rate']:,} | {r['produced']:,} | {r['received']:,} | "
            f"{r['dropped']:,} | {_n(r['consumer_ns_per_event'])} | "
            f"{r['consumer_core_pct']:.1f} | {r['process_core_pct']:.1f} | "
            f"{r['max_ring_fill_pct']:.1f} % | {r['late_drains']}/{r['drains']} | "
            f"{r['host_busy_pct']:.0f} | {_yes(ok)} |")
    lines.append("")
    lines += _targets(v, "gil_no_drops")
    lines += [
        "",
        "## 3. Kernel cost per program run",
        "",
        "`bpf_enable_stats(BPF_STATS_RUN_TIME)` held open for the run; avg = "
        "Δrun_time_ns / Δrun_cnt of each program of the real probe object "
        "(ProbeOptions defaults), % core = Δrun_time_ns / wall time. The stats cover the "
        "program body only, not the trampoline or the hook that calls it.",
        "",
    ]
    for key, res_k in (res.get("kernel") or {}).items():
        target = (f"<= {TARGET_SCHED_NS:.0f} ns" if key == "runqueue_delay"
                  else "— (reported only)")
        lines += [
            f"### {key}",
            "",
            f"Load: {'; '.join(res_k['load'])} for {res_k['wall_s']:.1f} s "
            f"({res_k['context_switches_per_s']:,.0f} context switches/s, "
            f"{res_k.get('host_busy_pct', 0):.0f} % of all CPUs busy, host-wide). "
            f"Target: {target}.",
            "",
            "| Program | Section | Runs | Runs/s | Avg ns/run | % of one core | Met |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, p in res_k["programs"].items():
            if key == "runqueue_delay" and name in sched_programs(res_k["programs"]):
                met = _yes(p["avg_ns"] is not None and p["avg_ns"] <= TARGET_SCHED_NS)
            else:
                met = "—"
            lines.append(
                f"| {name} | `{p['section']}` | {p['run_cnt']:,} | {p['runs_per_s']:,.0f} | "
                f"{_n(p['avg_ns'])} | {p['core_pct']:.3f} | {met} |")
        lines.append("")
        if key == "runqueue_delay":
            lines += _targets(v, "sched_hooks_300ns")
    rss = res.get("rss")
    if rss:
        lines += [
            "## 4. Agent RSS, all probes loaded and idle",
            "",
            "A fresh `python -c` process opens `llm_slo.probes.ProbeSet(SIGNALS)`, polls "
            f"once a second for {rss['polls']} s, and reads /proc/self/status.",
            "",
            "| Point | VmRSS MiB | VmHWM MiB |",
            "|---|---|---|",
        ]
        for label, k in (("after imports", "at_import"), ("after ProbeSet.open()",
                                                          "after_open"),
                         (f"after {rss['polls']} polls", "after_polls")):
            lines.append(f"| {label} | {rss[k]['VmRSS'] / 2**20:.1f} | "
                         f"{rss[k]['VmHWM'] / 2**20:.1f} |")
        lines += [
            "",
            f"Probes open: {', '.join(rss['open']) or 'none'}. "
            f"Failed: {', '.join(f'{k} ({w})' for k, w in rss['failures'].items()) or 'none'}. "
            f"Idle polling CPU: {100 * rss['poll_cpu_s'] / rss['polls']:.1f} % of one core.",
            "",
        ]
        lines += _targets(v, "rss_80mb")
    why = explain_misses(res)
    if why:
        lines += ["## Why targets were missed (from the data above)", ""]
        lines += [f"- {w}" for w in why] + [""]
    if res.get("errors"):
        lines += ["## Errors", ""] + [f"- {e}" for e in res["errors"]] + [""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream-seconds", type=float, default=4.0)
    ap.add_argument("--sched-seconds", type=float, default=10.0)
    ap.add_argument("--net-seconds", type=float, default=5.0)
    ap.add_argument("--rss-seconds", type=int, default=10)
    ap.add_argument("--sections", default="1,2,3,4", help="comma list of 1-4")
    ap.add_argument("--no-write", action="store_true", help="print JSON, write no files")
    args = ap.parse_args()
    sections = {s.strip() for s in args.sections.split(",")}
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def on_term(signum: int, _frame: object) -> None:
        say("terminated; cleaning up")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if os.geteuid() != 0:
        say("needs root (BPF load and run-time stats)")
        return 1

    res: dict[str, Any] = {
        "command": COMMAND,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {**describe(("numpy", "msgspec", "cffi")), "libbpf": libbpf_version()},
        "settings": {"ring_bytes": RING_BYTES, "drain_interval_s": DRAIN_INTERVAL_S,
                     "stream_seconds": args.stream_seconds,
                     "sched_seconds": args.sched_seconds, "net_seconds": args.net_seconds,
                     "rss_seconds": args.rss_seconds, "sections": sorted(sections)},
        "errors": [],
    }
    cleanup = Cleanup()
    started = time.monotonic()
    errors: list[str] = res["errors"]

    def guarded(label: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # record and go on: one broken section hides nothing else
            errors.append(f"{label}: {type(e).__name__}: {e}")
            say(f"{label} FAILED: {type(e).__name__}: {e}")
            return None

    try:
        with tempfile.TemporaryDirectory(prefix="llm-slo-bench-") as tmp:
            gen = build_generator(Path(tmp))
            prod = (guarded("ring buffer producer", lambda: Producer(RING_BYTES))
                    if sections & {"1", "2"} else None)
            if prod is not None:
                cleanup.closers.append(prod.close)
                if "1" in sections:
                    say(f"1. drain/decode throughput, {args.stream_seconds:.0f} s per run")
                    res["stream"] = guarded("section 1", lambda: section_stream(
                        prod, gen, cleanup, args.stream_seconds))
                    res["decode_breakdown"] = guarded("decode breakdown", decode_breakdown)
                    res["publish_diagnostic"] = guarded("publish diagnostic", lambda: (
                        publish_diagnostic(prod, gen, cleanup, 800_000, 2.0)))
                if "2" in sections:
                    say(f"2. GIL contention at {GIL_RATE // 1000}k ev/s")
                    res["gil"] = guarded("section 2", lambda: section_gil(
                        prod, gen, cleanup, args.stream_seconds))
                prod.close()
            if "3" in sections:
                say("3. kernel cost per program run")
                res["kernel"] = section_kernel(gen, cleanup, args.sched_seconds,
                                               args.net_seconds, errors)
            if "4" in sections:
                say("4. agent RSS")
                res["rss"] = guarded("section 4", lambda: section_rss(
                    cleanup, args.rss_seconds))
    except KeyboardInterrupt:
        say("interrupted; cleaned up, wrote nothing")
        return 130
    finally:
        cleanup.close()
    res["elapsed_s"] = time.monotonic() - started
    res["machine"]["loadavg_at_end"] = loadavg()
    res["verdict"] = evaluate(res)
    if args.no_write:
        print(json.dumps(res, indent=2))
    else:
        OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
        OUT_JSON.write_text(json.dumps(res, indent=2) + "\n")
        OUT_MD.write_text(render_md(res))
        say(f"wrote {OUT_JSON.relative_to(ROOT)} and {OUT_MD.relative_to(ROOT)}")
    for name, x in res["verdict"].items():
        say(f"{name}: {x['measured']} -> {'met' if x['met'] else 'NOT met'}")
    say(f"done in {res['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
