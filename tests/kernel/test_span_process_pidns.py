"""SpanProcesses on the real /proc and cgroup tree: two containers of one kubelet-shaped
pod each run a process that is pid 1 in its own pid namespace (like pause and the app);
the span's pid 1 is translated to the app's host pid when the span names its container,
and left alone when it does not (ambiguous)."""

from __future__ import annotations

import contextlib
import random
import time

import pytest

from llm_slo.lab.cgroups import V2Cgroup, spawn_in
from llm_slo.mounts import cgroup2_mount
from llm_slo.span_process import SpanProcesses
from llm_slo.spans import Span

pytestmark = pytest.mark.kernel


def _span(container: str) -> Span:
    res = {"service.name": "rag", "process.pid": 1, "k8s.namespace.name": "llm",
           "k8s.pod.name": "rag-0"}
    if container:
        res["k8s.container.name"] = container
    return Span(trace_id="a" * 32, span_id="b" * 16, name="chat", start_unix_nano=1,
                end_unix_nano=2, resource=res)


def test_container_pid_1_is_translated_to_its_host_pid() -> None:
    uid = f"{random.getrandbits(32):08x}-0000-4000-8000-{random.getrandbits(48):012x}"
    base = f"llm-slo-test-pidns-{random.randint(0, 1 << 30)}"
    cids = {"pause": "0" * 64, "app": "e" * 64}
    with contextlib.ExitStack() as stack:
        pod = f"{base}/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice"
        for path in (base, f"{base}/kubepods.slice", pod):
            stack.enter_context(V2Cgroup(path))
        sleepers = {}
        for name, cid in cids.items():
            cg = stack.enter_context(V2Cgroup(f"{pod}/cri-containerd-{cid}.scope"))
            box = spawn_in([cg], ["unshare", "--pid", "--fork", "--mount-proc", "sleep", "30"])
            stack.callback(box.wait, 10)
            stack.callback(box.kill)
            deadline = time.monotonic() + 10
            while len(cg.pids()) < 2 and time.monotonic() < deadline:  # unshare, then sleep
                time.sleep(0.02)
            (sleepers[name],) = [(p, cg.id) for p in cg.pids() if p != box.pid]
        sp = SpanProcesses(str(cgroup2_mount()), uid_of=lambda ns, pod: uid,
                           container_id_of=lambda u, c: cids.get(c) if u == uid else None)
        app, anonymous = sp.host_spans([_span("app"), _span("")])
        host, cgroup = sleepers["app"]
        assert app.resource["process.pid"] == host != 1
        assert sp.cgroup_of_pid == {host: cgroup}
        assert anonymous.resource["process.pid"] == 1  # pause or app? not guessed
        assert sp.counters["ambiguous"] == 1
