"""Which host process sent a span: ``process.pid`` as its sender saw it -> host pid, cgroup.

An application in a container reports ``process.pid`` in its own pid namespace (often
1); BPF programs report host pids, and two pods may both claim pid 1. Read as a host
pid, a container's ``process.pid`` names some unrelated host process, and its cgroup
would be given the span's pod name. So the pid is translated before anything joins on it:

- the span's pod is known (``k8s.pod.uid``, or ``k8s.namespace.name``/``k8s.pod.name``
  looked up in the pod table): among the processes in that pod's cgroups, the one whose
  innermost pid (``NSpid`` in ``/proc/<pid>/status``) is the span's pid;
- otherwise the pid is taken as a host pid only if that process shares the agent's pid
  namespace (hostPID pods, processes outside containers, the incident lab) and is not in
  the root cgroup; anything else stays unresolved and is counted.

Answers are cached per (namespace, pod, uid, pid) and looked up again after
``recheck_s``: containers restart and pids are reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import msgspec

from llm_slo.identity import PodName, cgroup_id_of_path, process_cgroup_path
from llm_slo.spans import Span

_Key = tuple[str, str, str, int]  # namespace, pod, pod uid, pid as the span says
_QOS = ("burstable", "besteffort")  # cgroupfs layout: /kubepods/burstable/pod<uid>/...


def ns_pids(pid: int, proc: str = "/proc") -> list[int]:
    """``pid``'s ids from the outermost pid namespace to its own (``NSpid``); raises OSError."""
    with open(f"{proc}/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return [pid]  # kernels before 4.1 have no NSpid: no nesting to see


def pod_cgroup_dirs(root: str, uid: str) -> list[str]:
    """Cgroup-v2 directories of pod ``uid`` (its pod cgroup and everything below).

    Kubelet names the pod cgroup ``...pod<uid>.slice`` (systemd, dashes as underscores)
    or ``pod<uid>`` (cgroupfs), under ``kubepods*`` somewhere below the mount.
    """
    names = {f"pod{uid}", f"pod{uid.replace('-', '_')}"}
    found: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                name = entry.name.removesuffix(".slice").rpartition("-")[2]
                if name in names or entry.name in names:
                    found += _subtree(entry.path)
                elif directory == root or "kubepods" in entry.name or entry.name in _QOS:
                    stack.append(entry.path)
    return found


def _subtree(path: str) -> list[str]:
    out, stack = [], [path]
    while stack:
        d = stack.pop()
        out.append(d)
        with contextlib.suppress(OSError), os.scandir(d) as entries:
            stack += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    return out


class SpanProcesses:
    """Translates spans' ``process.pid`` to host pids and learns their cgroups.

    ``cgroup_of_pid`` (host pid -> cgroup id) is what the engine reads to know a
    service's cgroups; ``pods`` (cgroup id -> names the spans gave) names those cgroups'
    kernel events. ``uid_of(namespace, pod)`` is the pod table's lookup.
    """

    def __init__(self, root: str, *, proc: str = "/proc",
                 uid_of: Callable[[str, str], str | None] = lambda ns, pod: None,
                 recheck_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.proc = root, proc
        self.uid_of = uid_of
        self.cgroup_of_pid: dict[int, int] = {}
        self.pods: dict[int, PodName] = {}
        self.counters = {"resolved": 0, "translated": 0, "unresolved": 0}
        self._recheck_s, self._clock = recheck_s, clock
        self._cache: dict[_Key, tuple[float, tuple[int, int] | None]] = {}
        self._own_pidns = self._pidns("self")

    def host_spans(self, spans: list[Span]) -> list[Span]:
        """``spans`` with ``process.pid`` replaced by the host pid where they differ."""
        out = spans
        moved: dict[int, dict[str, Any]] = {}  # id(resource) -> translated copy, per call
        for i, span in enumerate(spans):
            res = span.resource
            pid = res.get("process.pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                continue
            ns, pod = str(res.get("k8s.namespace.name", "")), str(res.get("k8s.pod.name", ""))
            key = (ns, pod, str(res.get("k8s.pod.uid", "")).lower(), pid)
            hit = self._cache.get(key)
            if hit is None or self._clock() - hit[0] >= self._recheck_s:
                hit = (self._clock(), self._resolve(key))
                self._cache[key] = hit
                if len(self._cache) > 1 << 16:  # pods churn; forget the oldest half
                    for k in list(self._cache)[: 1 << 15]:
                        del self._cache[k]
                if hit[1] is not None:
                    host, cgroup = hit[1]
                    self.cgroup_of_pid[host] = cgroup
                    if pod:
                        self.pods[cgroup] = PodName(ns, pod, str(res.get("k8s.container.name", "")))
            if hit[1] is not None and hit[1][0] != pid:
                if out is spans:
                    out = list(spans)
                # Spans of one OTLP resource share its dict: so do their translations.
                if (new := moved.get(id(res))) is None:
                    new = moved[id(res)] = {**res, "process.pid": hit[1][0]}
                out[i] = msgspec.structs.replace(span, resource=new)
        return out

    def _resolve(self, key: _Key) -> tuple[int, int] | None:
        ns, pod, uid, pid = key
        found = None
        with contextlib.suppress(OSError, ValueError):
            uid = uid or (self.uid_of(ns, pod) if pod else None) or ""
            found = self._in_pod(uid, pid) if uid else self._in_own_ns(pid, bool(pod))
        if found is None:
            self.counters["unresolved"] += 1
        else:
            self.counters["resolved"] += 1
            self.counters["translated"] += found[0] != pid
        return found

    def _in_pod(self, uid: str, pid: int) -> tuple[int, int] | None:
        """The process of pod ``uid`` whose own-namespace pid is ``pid``."""
        for d in pod_cgroup_dirs(self.root, uid):
            with contextlib.suppress(OSError), open(f"{d}/cgroup.procs") as f:
                for line in f:
                    host = int(line)
                    with contextlib.suppress(OSError):
                        if ns_pids(host, self.proc)[-1] == pid:
                            return host, cgroup_id_of_path(d)
        return None

    def _in_own_ns(self, pid: int, claims_pod: bool) -> tuple[int, int] | None:
        """``pid`` as a host pid, if that process shares the agent's pid namespace."""
        if not self.root or self._pidns(str(pid)) != self._own_pidns:
            return None
        path = process_cgroup_path(pid, self.proc)
        if not path or (claims_pod and path == "/"):
            return None  # a pod named by a span does not live in the root cgroup
        return pid, cgroup_id_of_path(self.root + path)

    def _pidns(self, pid: str) -> int:
        try:
            return os.stat(f"{self.proc}/{pid}/ns/pid").st_ino
        except OSError:
            return -1
