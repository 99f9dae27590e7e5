"""Tests for llm_slo.identity: cgroup path parsing, id resolution, /proc lookups."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_slo.identity import (
    CgroupResolver,
    ContainerRef,
    HostProcess,
    Identity,
    cgroup_id_of_path,
    host_process,
    parse_cgroup_path,
    process_cgroup_path,
)
from llm_slo.mounts import cgroup2_mount

CID = "4c8e7f1b2a3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9d0e1f2a3b"
CID2 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
KIND = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
UID_ = UID.replace("-", "_")
STATIC_UID = "6c9b5d2f0e1a4b3c8d7e6f5a4b3c2d1e"  # kubelet's config hash for static pods


def ref(runtime: str, cid: str, uid: str = "", qos: str = "") -> ContainerRef:
    return ContainerRef(runtime=runtime, container_id=cid, pod_uid=uid, qos_class=qos)


PARSE_CASES = [
    # systemd driver, cgroup v2
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        ref("containerd", CID, UID, "burstable"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
        ref("cri-o", CID, UID, "besteffort"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        ref("containerd", CID, UID, "guaranteed"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope",
        ref("docker", CID, UID, "guaranteed"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        ref("", "", UID, "burstable"),
    ),
    (f"/kubepods.slice/kubepods-pod{UID_}.slice", ref("", "", UID, "guaranteed")),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-conmon-{CID}.scope",
        ref("cri-o", "", UID, "besteffort"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
        f"cri-containerd-{CID}.scope",
        ref("containerd", CID, STATIC_UID, "burstable"),
    ),
    # a cgroup the container made inside its own (systemd in the container, crun's
    # "container" sub-cgroup) still belongs to it
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope/container",
        ref("cri-o", CID, UID, "guaranteed"),
    ),
    # systemd driver, cgroup v1 full mount paths
    (
        f"/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/docker-{CID}.scope",
        ref("docker", CID, UID, "burstable"),
    ),
    (
        f"/sys/fs/cgroup/memory/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope",
        ref("cri-o", CID, UID, "guaranteed"),
    ),
    # cgroupfs driver (k3s, older clusters), v2 and v1
    (f"/kubepods/burstable/pod{UID}/{CID}", ref("", CID, UID, "burstable")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ref("", CID, UID, "besteffort")),
    (f"/kubepods/pod{UID}/{CID}", ref("", CID, UID, "guaranteed")),
    (f"/kubepods/burstable/pod{UID}/crio-{CID}", ref("cri-o", CID, UID, "burstable")),
    (f"/kubepods/pod{UID}/crio-conmon-{CID}", ref("cri-o", "", UID, "guaranteed")),
    (f"/kubepods/besteffort/pod{UID}", ref("", "", UID, "besteffort")),
    (f"/kubepods/pod{UID}", ref("", "", UID, "guaranteed")),
    (
        f"/sys/fs/cgroup/cpu,cpuacct/kubepods/burstable/pod{UID}/{CID}",
        ref("", CID, UID, "burstable"),
    ),
    (f"/sys/fs/cgroup/pids/kubepods/pod{UID}/crio-{CID}", ref("cri-o", CID, UID, "guaranteed")),
    # kind / k3d / --cgroup-root prefixes
    (
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope",
        ref("containerd", CID, UID, "besteffort"),
    ),
    (
        f"/system.slice/docker-{KIND}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        ref("containerd", CID, UID, "guaranteed"),
    ),
    (f"/docker/{KIND}/kubepods/burstable/pod{UID}/{CID}", ref("", CID, UID, "burstable")),
    (f"/docker/{KIND}/kubepods/besteffort/pod{UID}", ref("", "", UID, "besteffort")),
    (
        f"/sys/fs/cgroup/memory/docker/{KIND}/kubepods/pod{UID}/{CID2}",
        ref("", CID2, UID, "guaranteed"),
    ),
    (f"/custom-root/kubepods/burstable/pod{UID}/{CID}", ref("", CID, UID, "burstable")),
    # plain Docker, no Kubernetes
    (f"/system.slice/docker-{CID}.scope", ref("docker", CID, "", "")),
    (f"/docker/{CID}", ref("docker", CID, "", "")),
    (f"/sys/fs/cgroup/cpu,cpuacct/docker/{CID2}", ref("docker", CID2, "", "")),
    # the kind node container itself (its system.slice, containerd, kubelet)
    (f"/docker/{KIND}/system.slice/containerd.service", ref("docker", KIND, "", "")),
    # not containers
    ("/", None),
    ("", None),
    ("/user.slice/user-1000.slice/session-3.scope", None),
    ("/system.slice/ssh.service", None),
    ("/system.slice/containerd.service", None),
    ("/kubepods.slice", None),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/kubepods/burstable", None),
    (f"/pod{UID}/{CID}", None),  # a "pod" dir kubelet did not make
    (f"/elsewhere/{CID}", None),  # bare hex outside a pod or docker
    ("/docker/cafe", None),  # too short to be a container id
    (f"/system.slice/crio-conmon-{CID}.scope", None),
    (f"/machine.slice/crio-{CID}", None),
]


@pytest.mark.parametrize(("path", "expected"), PARSE_CASES)
def test_parse_cgroup_path(path: str, expected: ContainerRef | None) -> None:
    assert parse_cgroup_path(path) == expected


# --- property tests -------------------------------------------------------------------

hexstr = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
prefixes = st.sampled_from(
    ["", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu,cpuacct", f"/docker/{KIND}", "/a/b"]
)


@given(st.text())
def test_parse_never_raises(text: str) -> None:
    result = parse_cgroup_path(text)
    assert result is None or isinstance(result, ContainerRef)


@given(
    driver=st.sampled_from(["systemd", "cgroupfs"]),
    runtime=st.sampled_from(["containerd", "cri-o", "docker", ""]),
    qos=st.sampled_from(["guaranteed", "burstable", "besteffort"]),
    uid=st.uuids().map(str),
    cid=hexstr,
    pod_level=st.booleans(),
    prefix=prefixes,
)
def test_parse_round_trips_generated_paths(
    driver: str, runtime: str, qos: str, uid: str, cid: str, pod_level: bool, prefix: str
) -> None:
    if driver == "systemd":
        u = uid.replace("-", "_")
        pod = (
            f"/kubepods.slice/kubepods-pod{u}.slice"
            if qos == "guaranteed"
            else f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"
        )
        runtime = runtime or "containerd"  # systemd leaves always name the runtime
        leaf = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[runtime]
        leaf = f"/{leaf}-{cid}.scope"
    else:
        pod = f"/kubepods/pod{uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{uid}"
        runtime = "cri-o" if runtime == "cri-o" else ""  # cgroupfs ids are bare otherwise
        leaf = f"/crio-{cid}" if runtime else f"/{cid}"
    path = prefix + pod + ("" if pod_level else leaf)
    expected = ref("" if pod_level else runtime, "" if pod_level else cid, uid, qos)
    assert parse_cgroup_path(path) == expected


# --- resolver on an ordinary directory tree (no root needed) --------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


POD_DIR = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
LEAF_DIR = f"{POD_DIR}/cri-containerd-{CID}.scope"


def test_resolver_maps_inodes_to_paths(tmp_path: Path) -> None:
    (tmp_path / LEAF_DIR).mkdir(parents=True)
    (tmp_path / "system.slice" / "ssh.service").mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("")  # files are not cgroups
    res = CgroupResolver(str(tmp_path), clock=FakeClock())
    assert res.root == str(tmp_path)
    assert res.path_of(cgroup_id_of_path(str(tmp_path))) == "/"
    leaf_id = cgroup_id_of_path(str(tmp_path / LEAF_DIR))
    assert res.resolve(leaf_id) == Identity(
        cgroup_id=leaf_id,
        cgroup_path="/" + LEAF_DIR,
        container_id=CID,
        pod_uid=UID,
        qos_class="burstable",
        runtime="containerd",
    )
    pod_id = cgroup_id_of_path(str(tmp_path / POD_DIR))
    assert res.resolve(pod_id).pod_uid == UID and res.resolve(pod_id).container_id == ""
    ssh_id = cgroup_id_of_path(str(tmp_path / "system.slice" / "ssh.service"))
    assert res.resolve(ssh_id) == Identity(
        cgroup_id=ssh_id, cgroup_path="/system.slice/ssh.service"
    )
    assert res.rescans == 0


def test_resolver_rescans_rate_limited(tmp_path: Path) -> None:
    clock = FakeClock()
    res = CgroupResolver(str(tmp_path), rescan_interval_s=5.0, clock=clock)
    res.resolve(cgroup_id_of_path(str(tmp_path)))  # initial scan
    (tmp_path / LEAF_DIR).mkdir(parents=True)
    leaf_id = cgroup_id_of_path(str(tmp_path / LEAF_DIR))
    # the map is fresh: a new id waits for the interval rather than forcing a walk
    assert res.resolve(leaf_id) == Identity(cgroup_id=leaf_id, cgroup_path="")
    assert res.rescans == 0
    clock.now += 5.0
    assert res.resolve(leaf_id).container_id == CID
    assert res.rescans == 1
    for _ in range(50):
        assert res.resolve(2**62 + 7) == Identity(cgroup_id=2**62 + 7, cgroup_path="")
    assert res.rescans == 1
    clock.now += 4.9
    res.resolve(2**62 + 7)
    assert res.rescans == 1
    clock.now += 0.1
    res.resolve(2**62 + 7)
    assert res.rescans == 2
    assert res.resolve(leaf_id).pod_uid == UID  # known ids never rescan
    assert res.rescans == 2


def test_resolver_without_cgroup2_mount_stays_empty() -> None:
    res = CgroupResolver("", clock=FakeClock())
    assert res.resolve(1) == Identity(cgroup_id=1, cgroup_path="")
    assert res.path_of(1) == ""
    assert res.rescans == 0


def test_cgroup2_mount_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /host\\040cg/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n"
        "42 31 0:39 / /second rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mount(str(info)) == "/host cg/unified"
    info.write_text("32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n")
    assert cgroup2_mount(str(info)) == ""
    assert cgroup2_mount(str(tmp_path / "missing")) == ""


# --- /proc lookups on a fake /proc ----------------------------------------------------


def test_process_cgroup_path_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text(
        "4:memory:/kubepods/pod1\n0::/system.slice/ssh.service\n"
    )
    (tmp_path / "7" / "comm").write_text("sshd\n")
    (tmp_path / "8").mkdir()
    (tmp_path / "8" / "cgroup").write_text("4:memory:/x\n1:cpu:/x\n")  # pure v1
    (tmp_path / "8" / "comm").write_text("old\n")
    assert process_cgroup_path(7, str(tmp_path)) == "/system.slice/ssh.service"
    assert process_cgroup_path(8, str(tmp_path)) == ""
    assert host_process(7, str(tmp_path)) == HostProcess(
        pid=7, comm="sshd", cgroup_path="/system.slice/ssh.service"
    )
    assert host_process(9, str(tmp_path)) is None
    with pytest.raises(FileNotFoundError):
        process_cgroup_path(9, str(tmp_path))


def test_host_process_self() -> None:
    me = host_process(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.comm


# --- real cgroup2 filesystem (root) ---------------------------------------------------


class Sandbox:
    """A throwaway cgroup tree under the real cgroup2 mount, and the processes put in it."""

    def __init__(self, mount: str, top: Path) -> None:
        self.mount = mount
        self.top = top
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn_into(self, cgroup: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])
        self.procs.append(proc)  # registered before the move so cleanup always sees it
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if not self.top.exists():
            return
        dirs = [Path(d) for d, _, _ in os.walk(self.top)]
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            # anything still inside (a process that would not die) goes back to the root,
            # otherwise rmdir fails with EBUSY and the test cgroup leaks
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        Path(self.mount, "cgroup.procs").write_text(pid)
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # a task killed a moment ago can keep its cgroup busy briefly
                    if attempt == 49:
                        raise
                    time.sleep(0.02)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A k8s-shaped cgroup tree under the real cgroup2 mount; always removed."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")
    mount = cgroup2_mount()
    if not mount:
        pytest.skip("no cgroup2 mount on this host")
    box = Sandbox(mount, Path(mount) / f"llm-slo-test-{secrets.token_hex(6)}")
    try:
        (box.top / LEAF_DIR).mkdir(parents=True)
        yield box
    finally:
        box.cleanup()


@pytest.mark.kernel
def test_real_resolve(sandbox: Sandbox) -> None:
    mount, top = sandbox.mount, sandbox.top
    clock = FakeClock()
    res = CgroupResolver(rescan_interval_s=1.0, clock=clock)
    assert res.root == mount
    rel = "/" + str((top / LEAF_DIR).relative_to(mount))
    leaf_id = cgroup_id_of_path(str(top / LEAF_DIR))
    assert res.resolve(leaf_id) == Identity(
        cgroup_id=leaf_id,
        cgroup_path=rel,
        container_id=CID,
        pod_uid=UID,
        qos_class="burstable",
        runtime="containerd",
    )
    assert res.path_of(cgroup_id_of_path(mount)) == "/"
    # a cgroup created after the scan shows up only after the rate limit allows a rescan
    late = top / f"kubepods/besteffort/pod{UID}"
    late.mkdir(parents=True)
    late_id = cgroup_id_of_path(str(late))
    assert res.resolve(late_id).cgroup_path == ""
    assert res.rescans == 0
    clock.now += 1.0
    assert res.resolve(late_id).qos_class == "besteffort"
    assert res.rescans == 1
    unknown = 2**62 + 11
    assert res.resolve(unknown) == Identity(cgroup_id=unknown, cgroup_path="")
    assert res.resolve(unknown) == Identity(cgroup_id=unknown, cgroup_path="")
    assert res.rescans == 1


@pytest.mark.kernel
def test_real_process_cgroup_path(sandbox: Sandbox) -> None:
    leaf = sandbox.top / LEAF_DIR
    proc = sandbox.spawn_into(leaf)
    rel = "/" + str(leaf.relative_to(sandbox.mount))
    assert process_cgroup_path(proc.pid) == rel
    assert parse_cgroup_path(rel) == ref("containerd", CID, UID, "burstable")
    assert host_process(proc.pid) == HostProcess(pid=proc.pid, comm="sleep", cgroup_path=rel)
    assert str(proc.pid) in (leaf / "cgroup.procs").read_text().split()
    assert CgroupResolver().resolve(cgroup_id_of_path(str(leaf))).cgroup_path == rel
