"""SpanProcesses on the real /proc and cgroup tree: a process in its own pid namespace
(pid 1 there), inside a kubelet-shaped pod cgroup, is found from the span's pid 1."""

from __future__ import annotations

import contextlib
import os
import random
import time

import pytest

from llm_slo.lab.cgroups import V2Cgroup, spawn_in
from llm_slo.mounts import cgroup2_mount
from llm_slo.span_process import SpanProcesses
from llm_slo.spans import Span

pytestmark = pytest.mark.kernel


def test_container_pid_1_is_translated_to_its_host_pid() -> None:
    uid = f"{random.getrandbits(32):08x}-0000-4000-8000-{random.getrandbits(48):012x}"
    base = f"llm-slo-test-pidns-{random.randint(0, 1 << 30)}"
    with contextlib.ExitStack() as stack:
        path = base
        for part in ["", "kubepods.slice", f"kubepods-pod{uid.replace('-', '_')}.slice",
                     f"cri-containerd-{'e' * 64}.scope"]:
            path = f"{path}/{part}" if part else path
            cg = stack.enter_context(V2Cgroup(path))
        box = spawn_in([cg], ["unshare", "--pid", "--fork", "--mount-proc", "sleep", "30"])
        stack.callback(box.wait, 10)
        stack.callback(box.kill)
        deadline = time.monotonic() + 10
        while len(cg.pids()) < 2 and time.monotonic() < deadline:  # unshare, then sleep
            time.sleep(0.02)
        (sleeper,) = [p for p in cg.pids() if p != box.pid]
        sp = SpanProcesses(str(cgroup2_mount()), uid_of=lambda ns, pod: uid)
        span = Span(trace_id="a" * 32, span_id="b" * 16, name="chat", start_unix_nano=1,
                    end_unix_nano=2, resource={"service.name": "rag", "process.pid": 1,
                                               "k8s.namespace.name": "llm",
                                               "k8s.pod.name": "rag-0"})
        (out,) = sp.host_spans([span])
        assert out.resource["process.pid"] == sleeper != 1
        assert sp.cgroup_of_pid == {sleeper: cg.id}
        assert os.path.exists(f"/proc/{sleeper}")
