"""Which host process sent a span: ``process.pid`` as its sender saw it -> host pid, cgroup.

An application in a container reports ``process.pid`` in its own pid namespace (often
1); BPF programs report host pids, and two pods may both claim pid 1. Read as a host
pid, a container's ``process.pid`` names some unrelated host process, and its cgroup
would be given the span's pod name. So the pid is translated before anything joins on it:

- the span's pod is known (``k8s.pod.uid``, or ``k8s.namespace.name``/``k8s.pod.name``
  looked up in the pod table): among the processes in that pod's cgroups (only its
  container's, when ``k8s.container.name`` names one the table knows), the one whose
  innermost pid (``NSpid`` in ``/proc/<pid>/status``) is the span's pid. Every container
  of a pod, the pause container included, may have a pid 1: more than one match is
  ambiguous and stays unresolved;
- a pod table exists but does not know the span's pod (yet): unresolved, never a guess;
- no pod table at all (bare hosts, the end-to-end test): the pid is taken as a host pid
  if that process is in the agent's own pid namespace (same ``NSpid`` depth, readable
  without ptrace) and, when the span claims a pod, not in the root cgroup.

Answers are cached per (namespace, pod, uid, container, pid) and looked up again after
``recheck_s`` (containers restart, pids are reused); unresolved ones after 2 s, so a
pod appears as soon as the pod watch lists it. Only the resource's ``process.pid`` is
translated: that is where SDKs put it.
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

_Key = tuple[str, str, str, str, int]  # namespace, pod, pod uid, container, pid
_UNRESOLVED_RECHECK_S = 2.0
_QOS = ("burstable", "besteffort")  # cgroupfs layout: /kubepods/burstable/pod<uid>/...


def ns_pids(pid: int | str, proc: str = "/proc") -> list[int]:
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
    kernel events. ``uid_of(namespace, pod)`` and ``container_id_of(uid, name)`` are the
    pod table's lookups; ``uid_of`` None means there is no pod table.
    """

    def __init__(self, root: str, *, proc: str = "/proc",
                 uid_of: Callable[[str, str], str | None] | None = None,
                 container_id_of: Callable[[str, str], str | None] = lambda uid, c: None,
                 recheck_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.root, self.proc = root, proc
        self.uid_of, self.container_id_of = uid_of, container_id_of
        self.cgroup_of_pid: dict[int, int] = {}
        self.pods: dict[int, PodName] = {}
        self.counters = {"resolved": 0, "translated": 0, "unresolved": 0, "ambiguous": 0}
        self._recheck_s, self._clock = recheck_s, clock
        self._cache: dict[_Key, tuple[float, tuple[int, int] | None]] = {}
        try:
            self._own_depth = len(ns_pids("self", proc))
        except OSError:
            self._own_depth = -1

    def host_spans(self, spans: list[Span]) -> list[Span]:
        """``spans`` with ``process.pid`` replaced by the host pid where they differ."""
        out = spans
        moved: dict[int, dict[str, Any]] = {}  # id(resource) -> translated copy, per call
        now = self._clock()
        for i, span in enumerate(spans):
            res = span.resource
            pid = res.get("process.pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                continue
            ns, pod = str(res.get("k8s.namespace.name", "")), str(res.get("k8s.pod.name", ""))
            container = str(res.get("k8s.container.name", ""))
            key = (ns, pod, str(res.get("k8s.pod.uid", "")).lower(), container, pid)
            hit = self._cache.get(key)
            if hit is None or now - hit[0] >= (
                    self._recheck_s if hit[1] is not None else _UNRESOLVED_RECHECK_S):
                hit = (now, self._resolve(key))
                self._cache[key] = hit
                if len(self._cache) > 1 << 16:  # pods churn; forget the oldest half
                    for k in list(self._cache)[: 1 << 15]:
                        del self._cache[k]
                if hit[1] is not None:
                    host, cgroup = hit[1]
                    self.cgroup_of_pid[host] = cgroup
                    if pod:
                        self.pods[cgroup] = PodName(ns, pod, container)
            if hit[1] is not None and hit[1][0] != pid:
                if out is spans:
                    out = list(spans)
                # Spans of one OTLP resource share its dict: so do their translations.
                if (new := moved.get(id(res))) is None:
                    new = moved[id(res)] = {**res, "process.pid": hit[1][0]}
                out[i] = msgspec.structs.replace(span, resource=new)
        return out

    def _resolve(self, key: _Key) -> tuple[int, int] | None:
        ns, pod, uid, container, pid = key
        found = None
        with contextlib.suppress(OSError, ValueError):
            if not uid and pod and self.uid_of is not None:
                uid = self.uid_of(ns, pod) or ""
            if uid:
                cid = self.container_id_of(uid, container) if container else None
                found = self._in_pod(uid, pid, cid)
            elif not pod or self.uid_of is None:  # with a pod table, an unknown pod waits
                found = self._in_own_ns(pid, bool(pod))
        if found is None:
            self.counters["unresolved"] += 1
        else:
            self.counters["resolved"] += 1
            self.counters["translated"] += found[0] != pid
        return found

    def _in_pod(self, uid: str, pid: int, cid: str | None) -> tuple[int, int] | None:
        """The one process of pod ``uid`` (container ``cid``) whose own pid is ``pid``."""
        found: list[tuple[int, int]] = []
        for d in pod_cgroup_dirs(self.root, uid):
            if cid and cid not in os.path.basename(d):
                continue
            with contextlib.suppress(OSError), open(f"{d}/cgroup.procs") as f:
                for line in f:
                    host = int(line)
                    with contextlib.suppress(OSError):
                        if ns_pids(host, self.proc)[-1] == pid:
                            found.append((host, cgroup_id_of_path(d)))
        if len(found) > 1:
            self.counters["ambiguous"] += 1
        return found[0] if len(found) == 1 else None

    def _in_own_ns(self, pid: int, claims_pod: bool) -> tuple[int, int] | None:
        """``pid`` as a host pid, if that process is in the agent's pid namespace."""
        if not self.root or len(ns_pids(pid, self.proc)) != self._own_depth:
            return None
        path = process_cgroup_path(pid, self.proc)
        if not path or (claims_pod and path == "/"):
            return None  # a pod named by a span does not live in the root cgroup
        return pid, cgroup_id_of_path(self.root + path)
