"""SpanProcesses: a span's process.pid, as its sender's pid namespace sees it, to a host pid.

/proc and the cgroup tree are built in tmp_path (``proc=`` and ``root=``), so the kubelet
layouts and pid namespaces under test need no containers; a process's pid namespace is
its ``NSpid`` line (one entry: the agent's own namespace).
"""

from __future__ import annotations

import os
from pathlib import Path

from llm_slo.identity import PodName
from llm_slo.span_process import SpanProcesses, ns_pids, pod_cgroup_dirs
from llm_slo.spans import Span

UID_A = "11111111-2222-4333-8444-555555555555"
UID_B = "66666666-7777-4888-9999-aaaaaaaaaaaa"


class World:
    """A fake /proc and cgroup2 mount."""

    def __init__(self, tmp: Path) -> None:
        self.proc, self.root = tmp / "proc", tmp / "cgroup"
        self.root.mkdir()
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "self" / "status").write_text("Name:\tsloctl\nNSpid:\t4000\n")

    def process(self, host: int, ns_chain: list[int], cgroup: str) -> None:
        """Process ``host``; ``ns_chain`` its ids in nested pid namespaces (none: ours)."""
        d = self.proc / str(host)
        d.mkdir(parents=True)
        (d / "status").write_text(f"Name:\tapp\nNSpid:\t{host}\t" +
                                  "\t".join(map(str, ns_chain)) + "\n")
        (d / "cgroup").write_text(f"0::{cgroup}\n")
        cg = self.root / cgroup.lstrip("/")
        cg.mkdir(parents=True, exist_ok=True)
        with open(cg / "cgroup.procs", "a") as f:
            f.write(f"{host}\n")

    def ino(self, cgroup: str) -> int:
        return (self.root / cgroup.lstrip("/")).stat().st_ino

    def spans(self, **kw: object) -> SpanProcesses:
        return SpanProcesses(str(self.root), proc=str(self.proc), **kw)  # type: ignore[arg-type]


def _systemd(uid: str, cid: str) -> str:
    return (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{uid.replace('-', '_')}.slice/cri-containerd-{cid}.scope")


def _span(pid: int, pod: str = "", ns: str = "llm", uid: str = "",
          container: str = "app") -> Span:
    res: dict[str, object] = {"service.name": "rag", "process.pid": pid}
    if pod:
        res |= {"k8s.pod.name": pod, "k8s.namespace.name": ns, "k8s.container.name": container}
    if uid:
        res["k8s.pod.uid"] = uid
    return Span(trace_id="a" * 32, span_id="b" * 16, name="chat", start_unix_nano=1,
                end_unix_nano=2, resource=res)  # type: ignore[arg-type]


def test_two_pods_both_pid_1_get_their_own_host_pids(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(4242, [1], _systemd(UID_A, "a" * 64))
    w.process(5353, [1], _systemd(UID_B, "b" * 64))
    w.process(1, [], "/init.scope")  # the host's pid 1: must not be picked
    uids = {("llm", "rag-0"): UID_A, ("llm", "vectordb-0"): UID_B}
    sp = w.spans(uid_of=lambda ns, pod: uids.get((ns, pod)))
    out = sp.host_spans([_span(1, "rag-0"), _span(1, "vectordb-0")])
    assert [s.resource["process.pid"] for s in out] == [4242, 5353]
    assert out[0].attributes == {} and out[0].trace_id == "a" * 32  # nothing else changed
    assert sp.cgroup_of_pid == {4242: w.ino(_systemd(UID_A, "a" * 64)),
                                5353: w.ino(_systemd(UID_B, "b" * 64))}
    assert sp.pods[w.ino(_systemd(UID_A, "a" * 64))] == PodName("llm", "rag-0", "app")
    assert sp.counters == {"resolved": 2, "translated": 2, "unresolved": 0, "ambiguous": 0}


def test_uid_from_the_span_resource_and_the_cgroupfs_layout(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(777, [7], f"/kubepods/burstable/pod{UID_A}/{'c' * 64}")
    sp = w.spans()  # no pod table: the resource's k8s.pod.uid is enough
    (out,) = sp.host_spans([_span(7, "rag-0", uid=UID_A.upper())])
    assert out.resource["process.pid"] == 777


def test_without_a_pod_table_only_processes_in_the_agents_pid_namespace(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(900, [], "/system.slice/app.service")
    w.process(901, [3], "/user.slice/box")
    w.process(902, [], "/")
    sp = w.spans()  # uid_of None: no pod table
    spans = [_span(900), _span(901), _span(902, "rag-0"), _span(903)]
    out = sp.host_spans(spans)
    assert out == spans  # nothing translated: same objects back
    assert sp.cgroup_of_pid == {900: w.ino("/system.slice/app.service")}
    # 901: another pid namespace; 902: a pod does not live in the root cgroup; 903: gone.
    assert sp.counters["unresolved"] == 3


def test_with_a_pod_table_an_unknown_pod_is_never_guessed(tmp_path: Path) -> None:
    # Container pid 1 would otherwise read as the host's pid 1 (init.scope) until the
    # pod watch lists the pod; it is retried after 2 s instead.
    w = World(tmp_path)
    w.process(1, [], "/init.scope")
    w.process(4242, [1], _systemd(UID_A, "a" * 64))
    uids: dict[tuple[str, str], str] = {}
    now = [0.0]
    sp = w.spans(uid_of=lambda ns, pod: uids.get((ns, pod)), clock=lambda: now[0])
    assert sp.host_spans([_span(1, "rag-0")])[0].resource["process.pid"] == 1
    assert sp.cgroup_of_pid == {} and sp.counters["unresolved"] == 1
    uids[("llm", "rag-0")] = UID_A  # listed now
    now[0] = 2.5
    assert sp.host_spans([_span(1, "rag-0")])[0].resource["process.pid"] == 4242


def test_pid_1_of_several_containers_needs_the_container_name(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(700, [1], _systemd(UID_A, "0" * 64))  # pause
    w.process(701, [1], _systemd(UID_A, "a" * 64))  # app
    w.process(702, [1], _systemd(UID_A, "b" * 64))  # sidecar
    containers = {"app": "a" * 64, "sidecar": "b" * 64}
    sp = w.spans(uid_of=lambda ns, pod: UID_A,
                 container_id_of=lambda uid, c: containers.get(c) if uid == UID_A else None)
    app, side, unknown = sp.host_spans([_span(1, "rag-0"), _span(1, "rag-0", container="sidecar"),
                                        _span(1, "rag-0", container="init")])
    assert app.resource["process.pid"] == 701 and side.resource["process.pid"] == 702
    assert unknown.resource["process.pid"] == 1  # three candidates: ambiguous, not guessed
    assert sp.counters["ambiguous"] == 1 and sp.counters["unresolved"] == 1


def test_answers_are_cached_then_looked_up_again(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(4242, [1], _systemd(UID_A, "a" * 64))
    now = [0.0]
    sp = w.spans(uid_of=lambda ns, pod: UID_A, recheck_s=30.0, clock=lambda: now[0])
    assert sp.host_spans([_span(1, "rag-0")])[0].resource["process.pid"] == 4242
    # The container restarts: pid 1 is now host pid 6000 in a new container cgroup.
    (w.root / _systemd(UID_A, "a" * 64).lstrip("/") / "cgroup.procs").write_text("")
    w.process(6000, [1], _systemd(UID_A, "d" * 64))
    assert sp.host_spans([_span(1, "rag-0")])[0].resource["process.pid"] == 4242  # cached
    now[0] = 31.0
    assert sp.host_spans([_span(1, "rag-0")])[0].resource["process.pid"] == 6000
    assert sp.counters["resolved"] == 2


def test_pod_cgroup_dirs_and_ns_pids_on_this_machine(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(10, [1], _systemd(UID_A, "a" * 64))
    dirs = pod_cgroup_dirs(str(w.root), UID_A)
    assert len(dirs) == 2 and dirs[0].endswith(f"pod{UID_A.replace('-', '_')}.slice")
    assert pod_cgroup_dirs(str(w.root), UID_B) == []
    assert ns_pids(os.getpid())[-1] == os.getpid()  # the real /proc: our own namespace
    real = SpanProcesses("/sys/fs/cgroup")
    assert real.host_spans([_span(os.getpid())])[0].resource["process.pid"] == os.getpid()
    assert os.getpid() in real.cgroup_of_pid and real.counters["resolved"] == 1


def test_spans_of_one_resource_share_one_translated_resource(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.process(4242, [1], _systemd(UID_A, "a" * 64))
    sp = w.spans(uid_of=lambda ns, pod: UID_A)
    first = _span(1, "rag-0")
    second = Span(trace_id="c" * 32, span_id="d" * 16, name="retrieval", start_unix_nano=1,
                  end_unix_nano=2, resource=first.resource)  # as OTLP decoding shares it
    a, b = sp.host_spans([first, second])
    assert a.resource is b.resource and a.resource["process.pid"] == 4242
    assert first.resource["process.pid"] == 1  # the input is never mutated
