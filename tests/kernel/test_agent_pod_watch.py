"""`sloctl agent` with `identity.kubernetes`: a process in a kubelet-shaped cgroup makes
failing connects; the kernel's connect probe sees them, and the agent names the pod and
container from a (fake, loopback) API server it lists and watches through a kubeconfig."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from llm_slo.lab.cgroups import V2Cgroup, spawn_in

pytestmark = pytest.mark.kernel

UID = f"{random.getrandbits(32):08x}-1111-4222-8333-444455556666"
CID = f"{random.getrandbits(64):016x}" * 4
NODE = "lab-node"


class _Api(BaseHTTPRequestHandler):
    """GET /api/v1/pods: this node's one pod; a watch stays open with no events."""

    stop = threading.Event()
    requests: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        q = parse_qs(urlparse(self.path).query)
        _Api.requests.append(q)
        if urlparse(self.path).path != "/api/v1/pods" or \
                q.get("fieldSelector") != [f"spec.nodeName={NODE}"]:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if q.get("watch") == ["true"]:
            self.end_headers()
            self.wfile.flush()
            _Api.stop.wait(30)
            return
        body = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [{
            "metadata": {"name": "rag-5c8d", "namespace": "llm", "uid": UID,
                         "resourceVersion": "4"},
            "status": {"containerStatuses": [
                {"name": "app", "containerID": f"containerd://{CID}"}]}}]}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_agent_names_pods_from_the_api_watch(tmp_path: Path) -> None:
    api = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    api.daemon_threads = True
    threading.Thread(target=api.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {
            "server": f"http://127.0.0.1:{api.server_address[1]}"}}],
        "users": [{"name": "agent", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}))
    (tmp_path / "agent.yaml").write_text(json.dumps({
        "node": NODE, "interval_s": 0.2, "signal_set": ["connect_latency_ms"],
        "intake": {"listen": "127.0.0.1:0"},
        "identity": {"kubernetes": True, "kubeconfig": str(kubeconfig)}}))
    with socket.socket() as s:  # a loopback port nobody listens on: connects are refused
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    out, log = tmp_path / "out", tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "llm_slo.cli", "agent", "--config", str(tmp_path / "agent.yaml"),
         "--output-dir", str(out)], stderr=open(log, "wb"))  # noqa: SIM115
    uid_ = UID.replace("-", "_")
    base = f"llm-slo-test-podwatch-{random.randint(0, 1 << 30)}"
    try:
        with contextlib.ExitStack() as stack:
            path = base  # kubelet's systemd layout, one directory at a time
            for part in ["", "kubepods.slice", "kubepods-burstable.slice",
                         f"kubepods-burstable-pod{uid_}.slice", f"cri-containerd-{CID}.scope"]:
                path = f"{path}/{part}" if part else path
                cg = stack.enter_context(V2Cgroup(path))
            # Ready when the probes are attached and the pods listed (a watch follows).
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    b"agent running" in log.read_bytes()
                    and any(q.get("watch") == ["true"] for q in _Api.requests)):
                time.sleep(0.2)
            client = spawn_in([cg], [sys.executable, "-c", (
                "import socket, time\n"
                "for _ in range(5):\n"
                f"    try: socket.create_connection(('127.0.0.1', {closed_port}), 1)\n"
                "    except OSError: pass\n"
                "    time.sleep(0.1)\n")])
            assert client.wait(timeout=30) == 0
            time.sleep(1.5)  # two polls
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        _Api.stop.set()
        api.shutdown()
    assert agent.returncode == 0, log.read_text()[-2000:]
    events = [json.loads(x) for x in (out / "probe-events.jsonl").read_text().splitlines()]
    ours = [e for e in events if e["signal"] == "connect_latency_ms" and e.get("pod_uid") == UID]
    assert ours, f"no connect event from the test cgroup among {len(events)}"
    assert all(e["pod"] == "rag-5c8d" and e["namespace"] == "llm" and e["container"] == "app"
               and e["node"] == NODE for e in ours), ours[0]
    assert any(q.get("watch") == ["true"] and q.get("resourceVersion") == ["5"]
               for q in _Api.requests), "the agent listed but never watched"
    stats = json.loads((out / "agent-stats.json").read_text())
    assert stats["pod_watch"]["lists"] == 1 and stats["pod_watch"]["error"] == ""
