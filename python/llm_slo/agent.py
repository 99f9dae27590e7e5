"""``sloctl agent``: probes, span intake, identity, correlator, attributor and outputs in
one asyncio process.

The shell around :class:`~llm_slo.engine.SloEngine`: it polls the probes, turns kernel
records into identified ProbeEvents, receives OTLP spans, translates each span's
``process.pid`` to the host pid and finds its cgroup (so joins on pids are sound and
the engine knows a service's cgroups), ticks the
engine and writes results to JSONL files and/or an OTLP/HTTP logs endpoint. SIGTERM
and SIGINT stop it cleanly: outputs flushed, every BPF link detached.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from llm_slo.config import AgentConfig, parse_listen
from llm_slo.engine import SloEngine
from llm_slo.errors import ConfigError
from llm_slo.identity import (
    CgroupResolver,
    PodDirectory,
    PodName,
    cgroup_id_under,
)
from llm_slo.mounts import cgroup2_mount
from llm_slo.otlp_export import OtlpLogExporter
from llm_slo.otlp_receiver import OtlpReceiver
from llm_slo.pod_watch import KubernetesPods, api_endpoint
from llm_slo.probe_event import ProbeEvent, ProbeEventBuilder
from llm_slo.probes import ProbeSet
from llm_slo.span_process import SpanProcesses
from llm_slo.spans import Span

log = structlog.get_logger("agent")

EARLY_POLL_GAP_S = 0.05  # the least time between polls when breaches wake the agent
OUTPUT_FILES = {"probe": "probe-events.jsonl", "slo": "slo-events.jsonl",
                "attribution": "attributions.jsonl", "span": "spans.jsonl"}


class _GcPauses:
    """The cyclic garbage collector's work while the agent runs (start-up and shutdown
    are not counted), from ``gc.callbacks``: collections per generation and how long
    they held the event loop."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.pause_s = [0.0, 0.0, 0.0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            gen = info["generation"]
            self.collections[gen] += 1
            self.pause_s[gen] += time.perf_counter() - self._began


def _peak_rss_kib() -> int | None:
    """This process's peak RSS (``VmHWM``), KiB. Not ``ru_maxrss``: Linux carries that
    over ``execve`` from the image it replaced, so an agent started by a big parent
    (the lab's runner, forking) would report the parent's peak as its own."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class JsonlOutputs:
    """One JSONL file per record kind in ``directory``, flushed after each batch."""

    def __init__(self, directory: str, kinds: Iterable[str]) -> None:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            self._files: dict[str, IO[bytes]] = {
                kind: open(Path(directory) / OUTPUT_FILES[kind], "ab")  # noqa: SIM115
                for kind in kinds  # closed in close()
            }
        except OSError as e:
            raise ConfigError(f"output directory {directory}: {e.strerror or e}") from e
        self._enc = msgspec.json.Encoder()

    def write(self, kind: str, records: list[Any]) -> None:
        if records:
            f = self._files[kind]
            f.write(self._enc.encode_lines(records))
            f.flush()

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class Agent:
    """The running agent; ``run()`` returns after ``stop()`` or a signal."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.node = config.node or os.environ.get("NODE_NAME") or socket.gethostname()
        root = cgroup2_mount()
        # uid_of is set in run(), once the pod sources are known.
        self.span_processes = SpanProcesses(root, container_id_of=self._container_id_of)
        self.engine = SloEngine(config.engine, cgroup_of_pid=self.span_processes.cgroup_of_pid)
        self.resolver = CgroupResolver()
        pods_file = config.identity.pods_file
        # Pod names for cgroups whose workloads send no spans: a PodList file and/or
        # the API server's view of this node (started in run()).
        self.pod_sources: list[PodDirectory | KubernetesPods] = (
            [PodDirectory(pods_file)] if pods_file else [])
        self._pods_errors: dict[int, str] = {}
        self.kube_pods: KubernetesPods | None = None
        self.builder = ProbeEventBuilder(self.node, self.resolver.resolve,
                                         lambda p: cgroup_id_under(root, p), self._pod_of)
        self.probes = ProbeSet(config.signal_set, config.probes)
        host, port = parse_listen(config.intake.listen)
        self.receiver = OtlpReceiver(self._on_spans, host, port, config.intake.max_body_bytes)
        out = config.outputs
        kinds = ["probe", "slo", "attribution"] + (["span"] if out.spans else [])
        self.jsonl = JsonlOutputs(out.jsonl_dir, kinds) if out.jsonl_dir else None
        self.exporter = (OtlpLogExporter(out.otlp_endpoint, node=self.node)
                         if out.otlp_endpoint else None)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # stop, or a breach to explain now
        self.counters = {"probe_events": 0, "slo_events": 0, "attributions": 0}
        self.gc_pauses = _GcPauses()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _pod_of(self, cgroup_id: int) -> PodName | None:
        # Names a workload's own spans gave win; the pods file covers everything else
        # (pods that send no spans: neighbours, backends).
        pod = self.span_processes.pods.get(cgroup_id)
        if pod is not None or not self.pod_sources:
            return pod
        ident = self.resolver.resolve(cgroup_id)
        for i, source in enumerate(self.pod_sources):
            pod = source.pod_of(ident)
            if isinstance(source, PodDirectory) and source.error != self._pods_errors.get(i):
                self._pods_errors[i] = source.error  # once per change, not per event
                if source.error:
                    log.warning("pod names unavailable", error=source.error)
            if pod is not None:
                break
        return pod

    def _uid_of(self, namespace: str, pod: str) -> str | None:
        for source in self.pod_sources:
            if uid := source.uid_of(namespace, pod):
                return uid
        return None

    def _container_id_of(self, uid: str, container: str) -> str | None:
        for source in self.pod_sources:
            if cid := source.container_id_of(uid, container):
                return cid
        return None

    def _emit(self, kind: str, records: list[Any], ts_status: list[tuple[int, str]]) -> None:
        if self.jsonl:
            self.jsonl.write(kind, records)
        if self.exporter:
            for rec, (ts, status) in zip(records, ts_status, strict=True):
                self.exporter.submit(kind, rec, ts, status)

    def _on_spans(self, spans: list[Span]) -> None:
        spans = self.span_processes.host_spans(spans)  # before anything joins on pids
        if self.jsonl and self.config.outputs.spans:
            self.jsonl.write("span", spans)
        events = self.engine.add_spans(spans)
        now = time.time_ns()
        self._emit("slo", events, [(now, e.status) for e in events])
        self.counters["slo_events"] += len(events)
        if self.engine.breach_due(now):
            self._wake.set()  # explain it now, not at the next interval

    def _poll(self) -> None:
        records = self.probes.poll(time.monotonic_ns())
        events: list[ProbeEvent] = self.builder.build_batch(records)
        now = time.time_ns()
        self.engine.add_signals(events)
        if self.config.outputs.probe_events:
            self._emit("probe", events, [(e.ts_unix_nano, e.status) for e in events])
        self.counters["probe_events"] += len(events)
        atts = self.engine.tick(time.time_ns())
        self._emit("attribution", atts, [(now, "breach") for _ in atts])
        self.counters["attributions"] += len(atts)
        for a in atts:
            log.info("attribution", service=a.service, domain=a.predicted_fault_domain,
                     confidence=round(a.confidence, 3), abstain=a.abstain, sli=a.slo_impact.sli)

    def _write_stats(self, probe_counters: dict[str, dict[str, int]]) -> None:
        """``agent-stats.json``: what the agent did and what it cost, for tools (the lab)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        run_stats = self.probes.run_stats()
        stats = {
            **self.counters, "engine": self.engine.counters, "probes": probe_counters,
            "failures": self.probes.failures,
            "span_processes": self.span_processes.counters,
            "pod_watch": ({**self.kube_pods.counters, "error": self.kube_pods.error}
                          if self.kube_pods else None),
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kib": _peak_rss_kib(),
            "gc": {"collections": self.gc_pauses.collections,
                   "pause_s": [round(s, 6) for s in self.gc_pauses.pause_s]},
            "bpf": {sig: {prog: {"run_time_ns": t, "run_cnt": n} for prog, (t, n) in progs.items()}
                    for sig, progs in run_stats.items()},
        }
        path = Path(str(self.config.outputs.jsonl_dir)) / "agent-stats.json"
        with contextlib.suppress(OSError):
            path.write_bytes(msgspec.json.format(msgspec.json.encode(stats), indent=1))

    async def run(self) -> int:
        # First, so that a bad kubeconfig stops the agent before any probe is loaded.
        api = (await api_endpoint(self.config.identity.kubeconfig)
               if self.config.identity.kubernetes else None)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        self.probes.open()
        self.engine.set_active_signals(self.probes.probes)
        for sig, reason in self.probes.failures.items():
            log.warning("signal unavailable", signal=sig, reason=reason)
        watch: asyncio.Task[None] | None = None
        try:
            if api is not None:
                self.kube_pods = KubernetesPods(api, self.node)
                self.pod_sources.append(self.kube_pods)
                watch = asyncio.create_task(self.kube_pods.run(), name="pod-watch")
            if self.pod_sources:  # a pod table: spans naming unknown pods are not guessed
                self.span_processes.uid_of = self._uid_of
            try:
                await self.receiver.start()
            except OSError as e:
                raise ConfigError(f"cannot listen on {self.config.intake.listen}: "
                                  f"{e.strerror or e}") from e
            if self.exporter:
                await self.exporter.start()
            gc.callbacks.append(self.gc_pauses)
            log.info("agent running", node=self.node, signals=sorted(self.probes.probes),
                     otlp_traces=f"http://{self.config.intake.listen}/v1/traces",
                     jsonl_dir=self.config.outputs.jsonl_dir,
                     otlp_logs=self.config.outputs.otlp_endpoint)
            gap = min(EARLY_POLL_GAP_S, self.config.interval_s)
            while not self._stop.is_set():
                # A breach polls at once (its evidence may still be in a ring buffer),
                # but a stream of them polls at most once per gap.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.interval_s - gap)
                self._wake.clear()
                self._poll()
                await asyncio.sleep(gap)
            return 0
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self.gc_pauses)
            if watch is not None:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)  # never raises here
            if self.kube_pods is not None:
                await self.kube_pods.close()
            probe_counters = self.probes.counters()
            if self.config.outputs.jsonl_dir:
                self._write_stats(probe_counters)
            await self.receiver.stop()
            if self.exporter:
                await self.exporter.stop()
            self.probes.close()
            if self.jsonl:
                self.jsonl.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            log.info("agent stopped", **self.counters, engine=self.engine.counters,
                     probes=probe_counters,
                     exporter=self.exporter.counters if self.exporter else {})
