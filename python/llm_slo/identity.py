"""Who a kernel event belongs to: cgroup id → cgroup path → container → pod.

BPF programs tag events with ``bpf_get_current_cgroup_id()``, which is the inode number
of the task's cgroup-v2 directory. :class:`CgroupResolver` turns that id back into a
path by walking the v2 hierarchy, and :func:`parse_cgroup_path` turns the path into a
container and pod identity. Kubelet, container runtimes, kind/k3d and ``--cgroup-root``
all put different prefixes in front of the pod and container components, so parsing
looks only at the trailing components that carry the identity.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable

import msgspec

from llm_slo.mounts import cgroup2_mount

# Runtimes differ only in how long an id they show; 12 hex digits keeps short forms
# while rejecting ordinary words that happen to be hex ("cafe", "deadbeef").
_ID = r"[0-9a-fA-F]{12,}"
# Kubelet UIDs are UUIDs (systemd slices spell the dashes as underscores because "-"
# is the slice hierarchy separator); static pods use a bare 32-hex config hash.
_H = "[0-9a-fA-F]"
_UID = rf"{_H}{{8}}[-_]{_H}{{4}}[-_]{_H}{{4}}[-_]{_H}{{4}}[-_]{_H}{{12}}|{_H}{{32}}"
# Anything may precede "kubepods-": kind names it "kubelet-kubepods-...", and a
# --cgroup-root of /a/b becomes "a-b-kubepods-...".
_SYSTEMD_POD = re.compile(rf"(?:.+-)?kubepods-(?:(burstable|besteffort)-)?pod({_UID})\.slice")
_CGROUPFS_POD = re.compile(rf"pod({_UID})")
_SCOPE_LEAF = re.compile(rf"(cri-containerd|crio-conmon|crio|docker)-({_ID})\.scope")
_CRIO_LEAF = re.compile(rf"(crio-conmon|crio)-({_ID})")
_BARE_LEAF = re.compile(_ID)
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}
_QOS = ("burstable", "besteffort")


class ContainerRef(msgspec.Struct, frozen=True, kw_only=True):
    """Container identity carried by a cgroup path.

    ``runtime`` is "containerd", "cri-o", "docker", or "" when the path names a pod but
    not the runtime. ``container_id`` is "" for the pod cgroup itself (and for CRI-O's
    conmon, which is pod overhead, not a workload). ``pod_uid`` is dashed and "" outside
    Kubernetes; ``qos_class`` is "guaranteed", "burstable", "besteffort" or "".
    """

    runtime: str
    container_id: str
    pod_uid: str
    qos_class: str


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Everything known about one cgroup id; ``cgroup_path`` is "" if the id is unknown."""

    cgroup_id: int
    cgroup_path: str
    container_id: str = ""
    pod_uid: str = ""
    qos_class: str = ""
    runtime: str = ""


class HostProcess(msgspec.Struct, frozen=True, kw_only=True):
    """A process identified by pid, command name and v2 cgroup path (no container)."""

    pid: int
    comm: str
    cgroup_path: str


def _pod_at(parts: list[str], j: int) -> tuple[str, str] | None:
    """(pod_uid, qos_class) if ``parts[j]`` is a pod cgroup."""
    if j < 0:
        return None
    if m := _SYSTEMD_POD.fullmatch(parts[j]):
        return m[2].replace("_", "-").lower(), m[1] or "guaranteed"
    if (m := _CGROUPFS_POD.fullmatch(parts[j])) and j >= 1:
        # "pod<uid>" alone is too generic a name, so cgroupfs pods must sit where
        # kubelet puts them.
        uid = m[1].lower()
        if parts[j - 1] == "kubepods":
            return uid, "guaranteed"
        if parts[j - 1] in _QOS and j >= 2 and parts[j - 2] == "kubepods":
            return uid, parts[j - 1]
    return None


def _ref_at(parts: list[str], i: int) -> ContainerRef | None:
    """The identity if component ``i`` is a pod or container cgroup."""
    if pod := _pod_at(parts, i):
        return ContainerRef(runtime="", container_id="", pod_uid=pod[0], qos_class=pod[1])
    name = parts[i]
    pod = _pod_at(parts, i - 1)
    uid, qos = pod or ("", "")
    # Systemd scope names are unambiguous on their own; bare cgroupfs names are not,
    # so those count only directly under a pod (or under "docker" for plain Docker).
    runtime, cid = "", name
    if m := _SCOPE_LEAF.fullmatch(name) or (_CRIO_LEAF.fullmatch(name) if pod else None):
        runtime, cid = _RUNTIMES.get(m[1], "cri-o"), m[2]
        if m[1] == "crio-conmon":
            # conmon is CRI-O's per-container monitor: pod overhead, not the workload.
            if not pod:
                return None
            cid = ""
    elif not _BARE_LEAF.fullmatch(name):
        return None
    elif not pod:
        if i == 0 or parts[i - 1] != "docker":
            return None
        runtime = "docker"
    return ContainerRef(runtime=runtime, container_id=cid, pod_uid=uid, qos_class=qos)


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """Pure: container identity from a cgroup path (host view), or None for non-container cgroups.

    Works on v2 paths, v1 paths and full filesystem paths alike, because only the
    components from the pod or container leaf downwards matter. The deepest match wins:
    a cgroup nested inside a container (systemd or a sub-cgroup made by the workload)
    belongs to that container, and a kind node's pods beat the node's own container.
    """
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        if (ref := _ref_at(parts, i)) is not None:
            return ref
    return None


def cgroup_id_under(root: str, path: str) -> int:
    """Id of the cgroup at ``path`` relative to the cgroup2 mount ``root``; 0 if none.

    On hybrid hosts a v1 path (e.g. from ``cpu.stat`` polling) usually has a v2 twin.
    """
    try:
        return cgroup_id_of_path(root + path) if root else 0
    except OSError:
        return 0


def cgroup_id_of_path(path: str) -> int:
    """BPF cgroup id of a cgroup2 directory (its inode number)."""
    return os.stat(path).st_ino


def _walk(root: str) -> dict[int, str]:
    """{inode: path relative to ``root``} for every directory under ``root``."""
    paths: dict[int, str] = {}
    with contextlib.suppress(OSError):
        paths[os.stat(root).st_ino] = "/"
    stack = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    # Cgroups vanish mid-walk as containers exit: skip just that one.
                    with contextlib.suppress(OSError):
                        if entry.is_dir(follow_symlinks=False):
                            child = f"{rel}/{entry.name}"
                            paths[entry.stat(follow_symlinks=False).st_ino] = child
                            stack.append((entry.path, child))
        except OSError:
            continue
    return paths


class CgroupResolver:
    """Maps BPF cgroup ids to paths and identities by walking the cgroup-v2 hierarchy.

    ``root`` is the cgroup2 mount (None: the first one in /proc/self/mountinfo; the
    resolver stays empty if there is none). The first lookup scans the hierarchy; later
    unknown ids trigger a rescan at most once per ``rescan_interval_s``, because a burst
    of events from a just-started container must not turn into a burst of full walks.
    Not thread-safe: use one per thread or guard it.
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        rescan_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = cgroup2_mount() if root is None else root
        self._interval = rescan_interval_s
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._identities: dict[int, Identity] = {}
        self._last_scan: float | None = None
        self._rescans = 0

    @property
    def root(self) -> str:
        """The cgroup2 mount walked ("" if none was found)."""
        return self._root

    @property
    def rescans(self) -> int:
        """Rescans triggered by unknown ids (the initial scan is not counted)."""
        return self._rescans

    def _scan(self) -> None:
        self._paths = _walk(self._root) if self._root else {}
        self._identities = {}
        self._last_scan = self._clock()

    def path_of(self, cgroup_id: int) -> str:
        """Path of ``cgroup_id`` relative to the mount (e.g. "/kubepods.slice/..."), or ""."""
        if self._last_scan is None:
            self._scan()
        path = self._paths.get(cgroup_id)
        last = self._last_scan or 0.0
        if path is None and self._root and self._clock() - last >= self._interval:
            self._rescans += 1
            self._scan()
            path = self._paths.get(cgroup_id)
        return path or ""

    def resolve(self, cgroup_id: int) -> Identity:
        """Identity of ``cgroup_id``; ``cgroup_path`` is "" if it is unknown even after a rescan."""
        if (known := self._identities.get(cgroup_id)) is not None:
            return known
        path = self.path_of(cgroup_id)
        if not path:
            return Identity(cgroup_id=cgroup_id, cgroup_path="")
        ref = parse_cgroup_path(path)
        fields = msgspec.structs.asdict(ref) if ref is not None else {}
        ident = Identity(cgroup_id=cgroup_id, cgroup_path=path, **fields)
        self._identities[cgroup_id] = ident
        return ident


def process_cgroup_path(pid: int, proc: str = "/proc") -> str:
    """The v2 ("0::") cgroup path of ``pid``, or "" if it has none (pure v1 host).

    Read it through the host's /proc: inside a private cgroup namespace the kernel shows
    paths relative to that namespace ("/" or "/../.."). Raises OSError if ``pid`` is gone.
    """
    with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return ""


def host_process(pid: int, proc: str = "/proc") -> HostProcess | None:
    """Identity of a process outside containers; None if it vanished."""
    try:
        with open(f"{proc}/{pid}/comm", encoding="utf-8", errors="replace") as f:
            comm = f.read().rstrip("\n")
        cgroup_path = process_cgroup_path(pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return HostProcess(pid=pid, comm=comm, cgroup_path=cgroup_path)


class PodName(msgspec.Struct, frozen=True):
    """Kubernetes names of the pod and container a cgroup belongs to."""

    namespace: str
    pod: str
    container: str = ""


class _Meta(msgspec.Struct):
    uid: str = ""
    name: str = ""
    namespace: str = ""
    resourceVersion: str = ""


class _ContainerStatus(msgspec.Struct):
    name: str = ""
    containerID: str = ""  # "containerd://<64 hex>"


class _PodStatus(msgspec.Struct):
    containerStatuses: list[_ContainerStatus] = msgspec.field(default_factory=list)
    initContainerStatuses: list[_ContainerStatus] = msgspec.field(default_factory=list)


class PodObject(msgspec.Struct):
    """The few fields of a Kubernetes Pod that name its cgroups (the rest is ignored)."""

    metadata: _Meta = msgspec.field(default_factory=_Meta)
    status: _PodStatus = msgspec.field(default_factory=_PodStatus)


class PodList(msgspec.Struct):
    """``kubectl get pods -o json`` / the API's PodList; ``metadata.resourceVersion``
    is where a watch resumes."""

    items: list[PodObject]
    metadata: _Meta = msgspec.field(default_factory=_Meta)


class PodTable:
    """Pod and container names by pod UID and container id; pure, fed by a source.

    Sources: :class:`PodDirectory` (a PodList file) and
    :class:`llm_slo.pod_watch.KubernetesPods` (a list+watch of this node's pods).
    """

    def __init__(self) -> None:
        self._pods: dict[str, PodName] = {}
        self._containers: dict[str, dict[str, str]] = {}  # pod uid -> container id -> name
        self._uids: dict[tuple[str, str], str] = {}  # (namespace, name) -> pod uid

    def __len__(self) -> int:
        return len(self._pods)

    def replace(self, pods: list[PodObject]) -> None:
        """Forget everything and hold exactly ``pods`` (a fresh list)."""
        self._pods.clear()
        self._containers.clear()
        self._uids.clear()
        for pod in pods:
            self.upsert(pod)

    def upsert(self, pod: PodObject) -> None:
        """Add or update one pod (a watch's ADDED / MODIFIED)."""
        uid = pod.metadata.uid.lower()
        if not uid:
            return
        self._pods[uid] = PodName(pod.metadata.namespace, pod.metadata.name)
        self._uids[(pod.metadata.namespace, pod.metadata.name)] = uid
        statuses = [*pod.status.initContainerStatuses, *pod.status.containerStatuses]
        self._containers[uid] = {cs.containerID.rpartition("//")[2].lower(): cs.name
                                 for cs in statuses if cs.containerID}

    def delete(self, pod: PodObject) -> None:
        """Forget one pod (a watch's DELETED)."""
        uid = pod.metadata.uid.lower()
        self._pods.pop(uid, None)
        self._containers.pop(uid, None)
        key = (pod.metadata.namespace, pod.metadata.name)
        if self._uids.get(key) == uid:  # a pod of that name may already be back
            del self._uids[key]

    def uid_of(self, namespace: str, name: str) -> str | None:
        """The UID of pod ``namespace/name``, if the table has it."""
        return self._uids.get((namespace, name))

    def container_id_of(self, uid: str, container: str) -> str | None:
        """The id of container ``container`` of pod ``uid``, if the table has it."""
        return next((cid for cid, name in self._containers.get(uid, {}).items()
                     if name == container), None)

    def pod_of(self, ident: Identity) -> PodName | None:
        """Names of the pod (and container) ``ident`` belongs to, if the table has it."""
        pod = self._pods.get(ident.pod_uid) if ident.pod_uid else None
        if pod is None:
            return None
        container = self._containers[ident.pod_uid].get(ident.container_id.lower(), "")
        return msgspec.structs.replace(pod, container=container) if container else pod


class PodDirectory:
    """Pod and container names from a PodList JSON file.

    The file has the shape ``kubectl get pods -A -o json`` prints (only
    ``metadata.uid/name/namespace`` and ``status.containerStatuses[].name/containerID``
    are read), so a snapshot of a real cluster works as well as the one the incident lab
    writes for its namespaces. It is re-read when its modification time changes, at most
    once per ``recheck_s``. A file that cannot be read or parsed keeps the last good
    directory and records why in ``error``.
    """

    def __init__(self, path: str, *, recheck_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.error = ""
        self._recheck_s, self._clock = recheck_s, clock
        self._checked = -float("inf")
        self._mtime_ns = -1
        self._table = PodTable()

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._recheck_s:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime_ns:
                return
            with open(self.path, "rb") as f:
                pods = msgspec.json.decode(f.read(), type=PodList).items
        except (OSError, msgspec.DecodeError) as e:
            self.error = f"pods file {self.path}: {e}"
            return
        self._mtime_ns, self.error = mtime, ""
        self._table.replace(pods)

    def pod_of(self, ident: Identity) -> PodName | None:
        """Names of the pod (and container) ``ident`` belongs to, if the file lists it."""
        if not ident.pod_uid:
            return None
        self._refresh()
        return self._table.pod_of(ident)

    def uid_of(self, namespace: str, name: str) -> str | None:
        """The UID of pod ``namespace/name``, if the file lists it."""
        self._refresh()
        return self._table.uid_of(namespace, name)

    def container_id_of(self, uid: str, container: str) -> str | None:
        return self._table.container_id_of(uid, container)
