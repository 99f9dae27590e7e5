"""The lab's running workload on a :class:`~llm_slo.lab.topology.Topology`: DNS server,
provider and vector DB emulators, the RAG service, and the knobs faults turn.

Implements :class:`~llm_slo.lab.faults.LabControl`. Every process runs in its pod's
network namespace and cgroups; control traffic (emulator ``/control``, the DNS server's
stdin) comes from the runner in the root namespace.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llm_slo.errors import LabError
from llm_slo.lab.dns_server import dns_server_argv
from llm_slo.lab.faults import WORKLOAD
from llm_slo.lab.join_truth import RAG_TRUTH
from llm_slo.lab.nft import NftDrop
from llm_slo.lab.processes import read_ready_line
from llm_slo.lab.provider import ensure_cert, provider_argv
from llm_slo.lab.topology import PROVIDER_HOST, VECTORDB_HOST, Topology
from llm_slo.lab.vectordb import vectordb_argv

PROVIDER_PORT = 8443
VECTORDB_PORT = 8080
RAG_PORT = 8000
# The rag's local re-ranking index (rag_service.LocalIndex): its page cache is what a
# memory limit on the rag pod squeezes.
RAG_INDEX_MB = 64
AGENT_PORT = 4318
_HOG = ("import time\nend = time.monotonic() + {max_s}\n"
        "while time.monotonic() < end: pass")


class LabServices:
    """Start with :meth:`start`; everything stops with the topology."""

    def __init__(self, topo: Topology, *, seed: int, max_s: float,
                 workload: Mapping[str, float] | None = None) -> None:
        self.topo = topo
        self.seed = seed
        self.max_s = max_s
        given = workload or {}
        self.workload = {name: given.get(name, p.default) for name, p in WORKLOAD.items()}
        self.cert_dir = topo.run_dir / "certs"
        self.dns: subprocess.Popen[bytes] | None = None
        self.rag: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, set[int]] = {role: set() for role in topo.pods}
        self._ctl_ssl = ssl.create_default_context(cafile=None)

    @property
    def rag_url(self) -> str:
        return f"http://{self.topo.pods['rag'].addr}:{RAG_PORT}/chat"

    @property
    def otlp_listen(self) -> str:
        """Where the agent must listen: the root end of the rag pod's link."""
        return f"{self.topo.pods['rag'].gateway}:{AGENT_PORT}"

    def _spawn(self, role: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = self.topo.spawn(role, argv, **kw)
        self.pids[role].add(proc.pid)
        return proc

    def start(self, log_dir: Path) -> None:
        pods = self.topo.pods
        cert, _ = ensure_cert(self.cert_dir)
        self._ctl_ssl = ssl.create_default_context(cafile=cert)
        self._ctl_ssl.check_hostname = False  # control goes to the pod IP, not the name
        answers = {f"{PROVIDER_HOST}.": pods["provider"].addr,
                   f"{VECTORDB_HOST}.": pods["vectordb"].addr}
        self.dns = self._spawn("dns", dns_server_argv(pods["dns"].addr, 53, answers,
                                                      self.max_s),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=open(log_dir / "dns.log", "wb"))  # noqa: SIM115
        read_ready_line(self.dns, "DNS server", 10)
        backends = [
            ("provider", provider_argv(pods["provider"].addr, PROVIDER_PORT,
                                       cert_dir=str(self.cert_dir), max_s=self.max_s,
                                       seed=self.seed,
                                       ttft_ms=self.workload["provider.ttft_ms"],
                                       tokens_per_s=self.workload["provider.tokens_per_s"])),
            ("vectordb", vectordb_argv(pods["vectordb"].addr, VECTORDB_PORT,
                                       max_s=self.max_s, seed=self.seed,
                                       latency_ms=self.workload["vectordb.base_latency_ms"])),
        ]
        for role, argv in backends:
            proc = self._spawn(role, argv, stdout=subprocess.PIPE,
                               stderr=open(log_dir / f"{role}.log", "wb"))  # noqa: SIM115
            read_ready_line(proc, role, 20)
        self.start_rag(log_dir)

    def start_rag(self, log_dir: Path) -> None:
        """Start the rag service; it writes its ground truth to ``log_dir/RAG_TRUTH``."""
        pod = self.topo.pods["rag"]
        argv = [sys.executable, "-m", "llm_slo.lab.rag_service", "--host", pod.addr,
                "--port", str(RAG_PORT),
                "--provider-url", f"https://{PROVIDER_HOST}:{PROVIDER_PORT}",
                "--vectordb-url", f"http://{VECTORDB_HOST}:{VECTORDB_PORT}",
                "--cafile", str(self.cert_dir / "cert.pem"),
                "--otlp-endpoint", f"http://{self.otlp_listen}/v1/traces",
                "--pod", pod.name, "--namespace", pod.namespace, "--node", "lab-node-1",
                "--connect-timeout", "3", "--max-seconds", str(self.max_s),
                "--index-path", str(self.topo.run_dir / "rag-index.bin"),
                "--index-mb", str(RAG_INDEX_MB),
                "--truth-path", str(log_dir / RAG_TRUTH)]
        # Spans leave every 200 ms instead of the SDK's 5 s default: detection delay
        # cannot be shorter than the time spans take to reach the agent.
        env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        self.rag = self._spawn("rag", argv, stdout=subprocess.PIPE, env=env,
                               stderr=open(log_dir / "rag.log", "wb"))  # noqa: SIM115
        read_ready_line(self.rag, "RAG service", 30)

    # --- LabControl --------------------------------------------------------------------

    def dns_set(self, **settings: Any) -> None:
        if self.dns is None or self.dns.stdin is None:
            raise LabError("DNS server not running")
        self.dns.stdin.write(json.dumps(settings).encode() + b"\n")
        self.dns.stdin.flush()
        ack = json.loads(read_ready_line(self.dns, "DNS server control", 5))
        if "error" in ack:
            raise LabError(f"DNS server refused {settings}: {ack['error']}")

    def _control(self, role: str, port: int, tls: bool, knobs: dict[str, Any]) -> None:
        addr = self.topo.pods[role].addr
        # A new control connection to the provider waits out its own tls_delay_ms fault
        # (same port), so its timeout covers the largest delay a fault may set.
        conn = (http.client.HTTPSConnection(addr, port, context=self._ctl_ssl, timeout=35)
                if tls else http.client.HTTPConnection(addr, port, timeout=5))
        try:
            conn.request("POST", "/control", body=json.dumps(knobs),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
        except OSError as e:
            raise LabError(f"{role} /control: {e}") from e
        finally:
            conn.close()
        if resp.status != 200:
            raise LabError(f"{role} /control {knobs}: HTTP {resp.status} {body[:200]!r}")

    def provider_set(self, **knobs: Any) -> None:
        self._control("provider", PROVIDER_PORT, True, knobs)

    def vectordb_set(self, **knobs: Any) -> None:
        self._control("vectordb", VECTORDB_PORT, False, knobs)

    def drop(self, *, percent: int, syn_only: bool) -> Callable[[], None]:
        pods = self.topo.pods
        nft = NftDrop("llm-slo-lab", daddr=pods["provider"].addr, dport=PROVIDER_PORT,
                      saddr=pods["rag"].addr, percent=percent, syn_only=syn_only,
                      direction="forward")
        nft.__enter__()
        return nft.close

    def noisy_hogs(self, n: int, shares: int) -> Callable[[], None]:
        # The weight that counts is the pod slice's: it competes with rag's pod slice
        # (a container's shares only weigh against its siblings), as kubelet sets it
        # from the pod's CPU requests.
        pod_slice = self.topo.v1[("noisy", "cpu")].path.parent
        (pod_slice / "cpu.shares").write_text(str(shares))
        argv = [sys.executable, "-S", "-c", _HOG.format(max_s=self.max_s)]
        hogs = [self._spawn("noisy", argv) for _ in range(n)]

        def undo() -> None:
            for h in hogs:
                h.kill()
            for h in hogs:
                h.wait(5)
            (pod_slice / "cpu.shares").write_text("1024")
        return undo

    def rag_cpu_quota(self, pct: float) -> Callable[[], None]:
        cpu = self.topo.v1[("rag", "cpu")]
        (cpu.path / "cpu.cfs_period_us").write_text("100000")
        (cpu.path / "cpu.cfs_quota_us").write_text(str(max(1000, int(pct * 1000))))
        return lambda: (cpu.path / "cpu.cfs_quota_us").write_text("-1")

    def rag_memory_squeeze(self, cache_mb: int) -> Callable[[], None]:
        mem = self.topo.v1[("rag", "memory")]
        stat = dict(line.split() for line in (mem.path / "memory.stat").read_text().splitlines())
        # Anonymous memory cannot go (no swap): the limit leaves cache_mb for page cache,
        # less than the rag's index, so its pages are evicted and read back per request.
        limit = int(stat["total_rss"]) + (cache_mb << 20)
        try:
            (mem.path / "memory.limit_in_bytes").write_text(str(limit))
        except OSError as exc:  # EBUSY: the kernel could not reclaim down to it
            raise LabError(f"cannot limit rag's memory to {limit >> 20} MiB: {exc}") from exc
        return lambda: (mem.path / "memory.limit_in_bytes").write_text("-1")
