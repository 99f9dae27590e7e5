"""End to end on this machine: an OpenTelemetry-instrumented client sends real OTLP spans
to `sloctl agent` while a local DNS server makes its lookups slow; the agent must emit
a ttft_ms breach and attribute it to network_dns with DNS evidence and the client's
identity."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llm_slo.lab.cgroups import V2Cgroup, spawn_in
from llm_slo.lab.dns_server import DnsServer

pytestmark = pytest.mark.kernel

# The client: resolves its provider through libc (so resolv.conf and the DNS server
# matter), "generates" for 20 ms, and reports TTFT as it measured it, per request.
CLIENT = textwrap.dedent("""
    import os, socket, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint, duration = sys.argv[1], float(sys.argv[2])
    tp = TracerProvider(resource=Resource.create({
        "service.name": "rag", "process.pid": os.getpid(), "k8s.pod.name": "rag-7d9f",
        "k8s.namespace.name": "llm", "k8s.cluster.name": "lab"}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    tracer = tp.get_tracer("rag")
    end = time.monotonic() + duration
    while time.monotonic() < end:
        with tracer.start_as_current_span("chat llm", kind=trace.SpanKind.SERVER) as span:
            t0 = time.monotonic()
            with tracer.start_as_current_span("retrieval docs") as r:
                r.set_attribute("gen_ai.operation.name", "retrieval")
                time.sleep(0.005)
            with tracer.start_as_current_span("chat gpt", kind=trace.SpanKind.CLIENT) as c:
                c.set_attribute("gen_ai.provider.name", "openai")
                try:
                    socket.getaddrinfo("provider.lab", 443, socket.AF_INET,
                                       socket.SOCK_STREAM)
                except OSError:
                    pass
                time.sleep(0.02)
                c.set_attribute("http.response.status_code", 200)
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("llm.slo.ttft_ms", (time.monotonic() - t0) * 1000)
        if not sys.stdout.closed:
            print("sent", flush=True)  # the test starts its calm clock on the first one
            sys.stdout.close()
        time.sleep(0.2)
    tp.shutdown()
""")

CONFIG = """
interval_s: 0.5
probes: {dns_slow_ms: 0}
engine:
  window_s: 1.0
  cooldown_s: 3.0
  baseline: {warmup: 5}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slow_dns_breach_is_attributed_to_dns(tmp_path: Path) -> None:
    dns_addr = f"127.53.{random.randint(1, 250)}.{random.randint(2, 250)}"
    port = _free_port()
    (tmp_path / "agent.yaml").write_text(CONFIG)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {dns_addr}\noptions attempts:1 timeout:5\n")
    out = tmp_path / "out"
    agent = subprocess.Popen(
        [sys.executable, "-m", "llm_slo.cli", "agent", "--config", str(tmp_path / "agent.yaml"),
         "--output-dir", str(out), "--listen", f"127.0.0.1:{port}"],
        stderr=open(tmp_path / "agent.log", "wb"))  # noqa: SIM115
    try:
        with DnsServer(dns_addr, 53, answers={"provider.lab.": "127.0.0.1"}) as dns, \
                V2Cgroup(f"llm-slo-test-e2e-{random.randint(0, 1 << 30)}") as cg:
            # Ready when the probes are attached, not when the output files exist (they
            # are opened first; loading the probes takes seconds on a cold CI machine).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and \
                    b"agent running" not in (tmp_path / "agent.log").read_bytes():
                time.sleep(0.2)
            client = spawn_in([cg], [
                "unshare", "-m", "sh", "-c",
                f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} -c "
                f"'{CLIENT}' http://127.0.0.1:{port}/v1/traces 16"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            # Start the calm clock when the first span has been sent, not at spawn: a cold
            # interpreter importing the OTel SDK can take seconds on a fresh CI machine.
            ready, _, _ = select.select([client.stdout], [], [], 30)
            assert ready and client.stdout.readline() == b"sent\n", "client never sent a span"
            time.sleep(8)  # calm phase: the agent learns this workload's baseline
            dns.delay_s = 1.2  # fault: every lookup now takes 1.2 s
            _, stderr = client.communicate(timeout=60)
            assert client.returncode == 0, stderr.decode()
            time.sleep(2)
            client_pid = client.pid
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-2000:]

    slo = [json.loads(x) for x in (out / "slo-events.jsonl").read_text().splitlines()]
    breaches = [e for e in slo if e["sli_name"] == "ttft_ms" and e["status"] == "breach"]
    assert breaches, "slow DNS must push TTFT past the 1000 ms breach threshold"
    assert all(e["service"] == "rag" and e["namespace"] == "llm" for e in breaches)

    atts = [json.loads(x) for x in (out / "attributions.jsonl").read_text().splitlines()]
    named = [a for a in atts if not a.get("abstain")]
    assert named, f"no attribution named a domain: {atts}"
    first = named[0]
    assert first["predicted_fault_domain"] == "network_dns", first
    assert first["service"] == "rag" and first["namespace"] == "llm"
    assert first["cluster"] == "lab"
    assert any(ev["signal"].startswith("dns") and ev["source"] == "ebpf"
               for ev in first["evidence"]), first["evidence"]
    assert set(first["trace_ids"]) <= {e["trace_id"] for e in breaches}
    ttft = [a for a in named if a["slo_impact"]["sli"] == "ttft_ms"]
    assert ttft and ttft[0]["predicted_fault_domain"] == "network_dns", named

    probes = [json.loads(x) for x in (out / "probe-events.jsonl").read_text().splitlines()]
    client_dns = [p for p in probes if p["signal"] == "dns_latency_ms"
                  and p["pid"] == client_pid and p.get("target") == "provider.lab"]
    assert client_dns, "the client's DNS queries must be seen with its pid"
    assert max(p["value"] for p in client_dns) >= 1000
    assert os.path.basename(client_dns[0]["cgroup_path"]).startswith("llm-slo-test-e2e-")
    # Identity learnt from the client's own spans: its kernel events carry its pod name
    # (all but the first lookup or so, which can be read before the first span arrives).
    named_pod = [p for p in client_dns if (p["namespace"], p["pod"]) == ("llm", "rag-7d9f")]
    assert len(named_pod) >= len(client_dns) - 2
