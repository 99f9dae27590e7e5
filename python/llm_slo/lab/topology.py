"""The incident lab's cluster on one machine: six "pods", each in its own network
namespace and cgroups, named the way Kubernetes names them.

Pods (role: what runs there): ``rag`` (the application), ``provider`` (LLM API),
``vectordb``, ``dns``, ``noisy`` (a neighbour that only burns CPU when told) and
``loadgen``. Each pod gets

* a network namespace joined to the root namespace by a veth pair; the root namespace
  routes between them (forwarding is switched on for the lab's veth interfaces only,
  never host-wide), so rag's packets to the provider really cross a router whose
  forward hook a fault can drop them in;
* a cgroup-v2 leaf shaped like kubelet's systemd layout
  (``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
  cri-containerd-<id>.scope``) under the lab's own top-level cgroup, so the agent's
  identity layer parses pod UID and container id from it exactly as on a node;
* for ``rag`` and ``noisy``, v1 ``cpu``, ``cpuset`` and ``memory`` cgroups (this host's
  resource controllers are v1) where faults set quotas and limits; both are pinned to
  the same CPU, as two pods scheduled on the same core would be.

``pods.json`` in the run directory lists the pods as ``kubectl get pods -A -o json``
would, for the agent's ``identity.pods_file``. The rag pod's resolver uses the DNS pod
with a Kubernetes search path (``/etc/netns/<ns>/resolv.conf``, which ``ip netns exec``
bind-mounts over /etc/resolv.conf).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec

from llm_slo import mounts
from llm_slo.errors import LabError
from llm_slo.lab.cgroups import Cgroup, V1Cgroup, V2Cgroup, cgroup2_mount, spawn_in
from llm_slo.lab.naming import unique_name
from llm_slo.lab.netns import NetnsPair
from llm_slo.lab.processes import run_cmd, stop_process

V1_CONTROLLERS = ("cpu", "cpuset", "memory")  # what the lab limits a pod by

ROLES = ("rag", "provider", "vectordb", "dns", "noisy", "loadgen")
NODE = "lab-node-1"
APP_NAMESPACE = "llm"  # rag, noisy and loadgen; backends live in "llm-backends"
ZONE_SEARCH = f"{APP_NAMESPACE}.svc.cluster.local svc.cluster.local cluster.local"
PROVIDER_HOST = "provider.lab"  # the name the provider's certificate carries
VECTORDB_HOST = "vectordb.lab"
NETNS_ETC = Path("/etc/netns")


class LabPod(msgspec.Struct, kw_only=True):
    """One lab pod: Kubernetes names, its namespace's addresses, its cgroups."""

    role: str
    name: str
    namespace: str
    uid: str
    container: str
    container_id: str
    netns: str
    addr: str  # inside the namespace
    gateway: str  # the root namespace's end of the veth
    cgroup_path: str  # cgroup-v2 leaf, absolute


def _pod_names(role: str, seed: str) -> tuple[str, str]:
    """A deployment-style pod name and a UID, stable for one lab instance."""
    u = uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}/{role}")
    return f"{role}-{u.hex[:9]}-{u.hex[9:14]}", str(u)


class Topology:
    """Context manager building (and on exit removing) every pod; see the module doc."""

    def __init__(self, run_dir: Path, *, rag_cpus: str | None = None) -> None:
        self.run_dir = run_dir
        self.name = unique_name("llm-slo-lab")
        self.pods: dict[str, LabPod] = {}
        self.v1: dict[tuple[str, str], V1Cgroup] = {}  # (role, controller) -> cgroup
        self.leaves: dict[str, Cgroup] = {}
        ncpu = os.cpu_count() or 1
        self.rag_cpus = rag_cpus if rag_cpus is not None else str(ncpu - 1)
        self._stack = contextlib.ExitStack()
        self._procs: list[subprocess.Popen[Any]] = []

    @property
    def pods_file(self) -> Path:
        return self.run_dir / "pods.json"

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _build(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        v2_root = self._stack.enter_context(V2Cgroup(self.name))
        slices = v2_root.path / "kubepods.slice" / "kubepods-burstable.slice"
        slices.mkdir(parents=True)
        for role in ROLES:
            pair = self._stack.enter_context(NetnsPair("llm-slo-lab"))
            run_cmd(["ip", "-n", pair.ns, "route", "add", "default", "via", pair.host_addr])
            # A packet is routed between two interfaces only if both forward; the
            # setting goes away with the interface.
            Path(f"/proc/sys/net/ipv4/conf/{pair.host_if}/forwarding").write_text("1")
            name, uid = _pod_names(role, self.name)
            cid = uuid.uuid5(uuid.NAMESPACE_OID, f"{self.name}/{role}").hex * 2
            pod_slice = slices / f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
            pod_slice.mkdir()
            leaf = self._stack.enter_context(
                Cgroup(pod_slice / f"cri-containerd-{cid}.scope", kill_members=True))
            self.leaves[role] = leaf
            self.pods[role] = LabPod(
                role=role, name=name,
                namespace=APP_NAMESPACE if role in ("rag", "noisy", "loadgen")
                else "llm-backends",
                uid=uid, container=role, container_id=cid, netns=pair.ns,
                addr=pair.ns_addr, gateway=pair.host_addr, cgroup_path=str(leaf.path))
        self._v1_cgroups()
        self._write_resolv_conf()
        self._write_pods_file()

    def _v1_cgroups(self) -> None:
        # Kubelet uses the same relative path in every hierarchy; so does the lab, so a
        # v1 cpu.stat path (CFS throttling) names the same pod as the v2 cgroup id.
        cpuset = {"cpuset.cpus": self.rag_cpus, "cpuset.mems": "0"}
        for controller in V1_CONTROLLERS:
            settings = cpuset if controller == "cpuset" else {}
            top = self._stack.enter_context(V1Cgroup(controller, self.name, settings))
            for role in ("rag", "noisy"):
                rel = Path(self.pods[role].cgroup_path).relative_to(cgroup2_mount())
                parent = top.path
                for part in rel.parts[1:-1]:  # the slices between the top and the leaf
                    parent = parent / part
                    if not parent.is_dir():
                        parent.mkdir()
                        for key, value in settings.items():  # cpuset: set at every level
                            (parent / key).write_text(value)
                self.v1[(role, controller)] = self._stack.enter_context(
                    V1Cgroup(controller, str(rel), settings))

    def _write_resolv_conf(self) -> None:
        d = NETNS_ETC / self.pods["rag"].netns
        d.mkdir(parents=True, exist_ok=True)
        self._stack.callback(shutil.rmtree, d, True)
        # Kubernetes' default for a pod in namespace llm: ndots:5 sends a short external
        # name through every search domain first, which is what makes DNS delay hurt.
        (d / "resolv.conf").write_text(
            f"nameserver {self.pods['dns'].addr}\nsearch {ZONE_SEARCH}\n"
            "options ndots:5 timeout:2 attempts:2\n")

    def _write_pods_file(self) -> None:
        items = [{
            "metadata": {"uid": p.uid, "name": p.name, "namespace": p.namespace,
                         "labels": {"app": p.role}},
            "spec": {"nodeName": NODE},
            "status": {"phase": "Running", "podIP": p.addr, "containerStatuses": [
                {"name": p.container, "containerID": f"containerd://{p.container_id}",
                 "ready": True}]},
        } for p in self.pods.values()]
        self.pods_file.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                              "items": items}, indent=1))

    def cgroups_of(self, role: str) -> list[Cgroup]:
        """Every cgroup a process of ``role`` belongs in (v2 leaf, then v1 if any)."""
        return [self.leaves[role], *(cg for (r, _), cg in self.v1.items() if r == role)]

    def spawn(self, role: str, argv: list[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``role``'s network namespace and cgroups; stopped on exit."""
        pod = self.pods[role]
        proc = spawn_in(self.cgroups_of(role), ["ip", "netns", "exec", pod.netns, *argv],
                        **popen_kw)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop processes, remove namespaces, cgroups and files."""
        for proc in reversed(self._procs):
            stop_process(proc, grace_s=3.0)
        self._procs.clear()
        self._stack.close()


def clean_netns_etc(prefix: str = "llm-slo-lab") -> list[str]:
    """Remove ``/etc/netns/<prefix>*`` directories whose namespace no longer exists."""
    if not NETNS_ETC.is_dir():
        return []
    alive = set(run_cmd(["ip", "netns", "list"], check=False).stdout.split())
    removed = []
    for d in NETNS_ETC.iterdir():
        if d.name.startswith(prefix) and d.name not in alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


def check_environment() -> None:
    """Fail early, naming what is missing, before anything is created."""
    if os.geteuid() != 0:
        raise LabError("the incident lab needs root (network namespaces, cgroups, nftables)")
    for tool in ("ip", "nft", "openssl"):
        if shutil.which(tool) is None:
            raise LabError(f"the incident lab needs `{tool}` on PATH")
    cgroup2_mount()  # each pod's identity is its cgroup v2 id
    missing = [c for c in V1_CONTROLLERS if not mounts.cgroup1_mount(c)]
    if missing:
        raise LabError(
            "the incident lab sets CPU pinning, quotas and memory limits through cgroup "
            f"v1 controllers, and this host mounts none for {', '.join(missing)} (a "
            "cgroup-v2-only host; the lab needs the hybrid layout, v1 controllers beside "
            "the v2 tree at /sys/fs/cgroup/unified, e.g. systemd.unified_cgroup_hierarchy=0 "
            "on the kernel command line). The agent itself needs only cgroup v2.")
