"""Tests for llm_slo.prereq: every check's branches on a fake host, rendering, lib discovery."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from llm_slo.libraries import find_libc, find_libssl
from llm_slo.prereq import (
    BTF_KIND_STRUCT,
    UPROBE_PMU,
    VMLINUX_BTF,
    Check,
    Host,
    exit_code,
    render_json,
    render_text,
    run_checks,
)

NAMES = ["kernel_version", "btf", "bpf_syscall", "capabilities", "tracefs", "uprobe_pmu",
         "cgroup_v2", "libbpf", "libssl", "memlock", "bpf_stats"]
ALL_CAPS = 0x1FFFEFFFFFF
CAP_BPF_PERFMON = (1 << 39) | (1 << 38) | (1 << 12)  # + NET_ADMIN, no SYS_ADMIN
HYBRID = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
tracefs /sys/kernel/tracing tracefs rw,relatime 0 0
"""
SSL = "/lib/x86_64-linux-gnu/libssl.so.3"
GOOD_BTF = "/tmp/good.btf"


class FakeHost(Host):
    """A healthy 6.18 host as root; tests knock out one fact at a time."""

    def __init__(self, **over: object) -> None:
        self.release = "6.18.44-fc-v669"
        self.files = {
            "/proc/self/mounts": HYBRID,
            "/proc/self/status": f"Name:\tsloctl\nCapEff:\t{ALL_CAPS:016x}\n",
            VMLINUX_BTF: "",
            UPROBE_PMU: "8\n",
            "/proc/sys/kernel/unprivileged_bpf_disabled": "2\n",
            "/proc/sys/kernel/bpf_stats_enabled": "0\n",
        }
        self.uid = 0
        self.memlock: int | None = 8 << 20
        self.bpf_errno = 0
        self.libbpf: str | Exception = "v1.1"
        self.ssl = [SSL]
        self.bcc = False
        self.headers: str | None = None
        self.broken = ""  # name of a method that raises
        for key, value in over.items():
            setattr(self, key, value)

    def _maybe_raise(self, method: str) -> None:
        if self.broken == method:
            raise RuntimeError(f"boom in {method}\nsecond line")

    def uname(self) -> tuple[str, str]:
        self._maybe_raise("uname")
        return self.release, "x86_64"

    def read_text(self, path: str) -> str | None:
        self._maybe_raise("read_text")
        return self.files.get(path)

    def exists(self, path: str) -> bool:
        return path in self.files

    def euid(self) -> int:
        return self.uid

    def memlock_limit(self) -> int | None:
        return self.memlock

    def bpf_probe(self) -> int:
        return self.bpf_errno

    def libbpf_version(self) -> str:
        if isinstance(self.libbpf, Exception):
            raise self.libbpf
        return self.libbpf

    def btf_has(self, name: str, kind: int, btf_path: str | None) -> bool:
        return btf_path == GOOD_BTF and (name, kind) == ("task_struct", BTF_KIND_STRUCT)

    def libssl_paths(self) -> list[str]:
        self._maybe_raise("libssl_paths")
        return self.ssl

    def bcc_module(self) -> bool:
        return self.bcc

    def kernel_headers(self, configured: str | None) -> str | None:
        return configured or self.headers


def checks(host: FakeHost | None = None, btf_path: str | None = None) -> dict[str, Check]:
    return {c.name: c for c in run_checks(host or FakeHost(), btf_path=btf_path)}


def without(path: str) -> dict[str, str]:
    files = FakeHost().files
    del files[path]
    return files


def test_healthy_host_all_ok_in_stable_order():
    result = run_checks(FakeHost())
    assert [c.name for c in result] == NAMES
    assert [c.status for c in result] == ["ok"] * len(NAMES), render_text(result)
    assert all(c.fix == "" for c in result)
    assert exit_code(result, strict=True) == 0
    blockers = {c.name for c in result if c.blocker}
    assert blockers == {"kernel_version", "btf", "bpf_syscall", "capabilities", "cgroup_v2",
                        "libbpf"}


def test_old_kernel_fails_and_memlock_matters_again():
    c = checks(FakeHost(release="5.4.0-150-generic"))
    assert c["kernel_version"].status == "fail" and c["kernel_version"].blocker
    assert "5.4.0-150-generic x86_64" in c["kernel_version"].detail
    assert "5.8" in c["kernel_version"].fix
    assert c["memlock"].status == "warn" and "ulimit -l unlimited" in c["memlock"].fix
    assert checks(FakeHost(release="5.10.0", memlock=None))["memlock"].status == "ok"
    assert checks(FakeHost(release="5.10.0", memlock=128 << 20))["memlock"].status == "ok"
    assert checks(FakeHost(release="5.8.0"))["kernel_version"].status == "ok"


def test_unparseable_kernel_release_fails_the_blocker_without_raising():
    c = checks(FakeHost(release="weird"))
    assert c["kernel_version"].status == "fail"
    assert "cannot parse kernel release" in c["kernel_version"].detail
    assert c["memlock"].status == "warn"  # depends on the version too, but is no blocker


def test_btf_missing_is_a_blocker():
    c = checks(FakeHost(files=without(VMLINUX_BTF)))["btf"]
    assert (c.status, c.blocker) == ("fail", True)
    assert "CONFIG_DEBUG_INFO_BTF=y" in c.fix and "--btf FILE" in c.fix
    assert "python3-bpfcc" in c.fix and "linux-headers-6.18.44-fc-v669" in c.fix


def test_btf_missing_with_bcc_falls_back():
    """Without BTF the BCC fallback serves when its module, headers and tracefs are there;
    the check names whichever is missing, and configured headers count."""
    files = without(VMLINUX_BTF)
    build = "/lib/modules/6.18.44-fc-v669/build"
    c = checks(FakeHost(files=files, bcc=True, headers=build))
    assert (c["btf"].status, c["btf"].blocker) == ("warn", False)
    assert "BCC fallback" in c["btf"].detail and build in c["btf"].detail
    assert exit_code(list(c.values()), strict=False) == 0
    no_headers = checks(FakeHost(files=files, bcc=True))["btf"]
    assert (no_headers.status, no_headers.blocker) == ("fail", True)
    assert "linux-headers-" in no_headers.fix and "python3-bpfcc" not in no_headers.fix
    given = {c.name: c for c in run_checks(FakeHost(files=files, bcc=True),
                                           kernel_headers="/srv/headers")}["btf"]
    assert given.status == "warn" and "/srv/headers" in given.detail
    no_tracefs = {**files, "/proc/self/mounts": HYBRID.replace("tracefs", "none")}
    untraced = checks(FakeHost(files=no_tracefs, bcc=True, headers=build))["btf"]
    assert untraced.status == "fail" and "tracefs" in untraced.fix


def test_btf_file_replaces_kernel_btf_for_core_only():
    c = checks(FakeHost(files=without(VMLINUX_BTF)), btf_path=GOOD_BTF)
    assert (c["btf"].status, c["btf"].blocker) == ("warn", False)
    assert "tp_btf" in c["btf"].detail and GOOD_BTF in c["btf"].detail
    assert exit_code(list(c.values()), strict=False) == 0
    both = checks(FakeHost(), btf_path=GOOD_BTF)["btf"]
    assert (both.status, both.blocker) == ("ok", False)


def test_bad_btf_file_blocks():
    c = checks(FakeHost(files=without(VMLINUX_BTF)), btf_path="/etc/passwd")["btf"]
    assert (c.status, c.blocker) == ("fail", True)
    assert "BTFHub" in c.fix


def test_bpf_syscall_eperm_names_privileges():
    c = checks(FakeHost(bpf_errno=errno.EPERM))["bpf_syscall"]
    assert (c.status, c.blocker) == ("fail", True)
    assert "EPERM" in c.detail and "unprivileged_bpf_disabled=2" in c.detail
    assert "root" in c.fix and "CAP_BPF+CAP_PERFMON" in c.fix


def test_bpf_syscall_enosys_names_kconfig():
    c = checks(FakeHost(bpf_errno=errno.ENOSYS))["bpf_syscall"]
    assert c.status == "fail" and "CONFIG_BPF_SYSCALL" in c.detail


def test_bpf_syscall_other_errno():
    c = checks(FakeHost(bpf_errno=errno.EINVAL))["bpf_syscall"]
    assert c.status == "fail" and "EINVAL" in c.detail and c.fix


def status_with_caps(caps: int, uid: int = 1000) -> FakeHost:
    host = FakeHost(uid=uid)
    host.files["/proc/self/status"] = f"CapEff:\t{caps:016x}\n"
    return host


def test_no_capabilities_fails_even_as_container_root():
    for uid in (1000, 0):
        c = checks(status_with_caps(0, uid))["capabilities"]
        assert (c.status, c.blocker) == ("fail", True)
        assert "CAP_BPF and CAP_PERFMON" in c.fix


def test_bpf_perfmon_without_sys_admin_warns_about_bpf_stats():
    c = checks(status_with_caps(CAP_BPF_PERFMON))
    assert c["capabilities"].status == "warn"
    assert "bpf_stats (per-program run time) needs CAP_SYS_ADMIN" in c["capabilities"].fix
    assert c["bpf_stats"].status == "warn"
    assert "sysctl -w kernel.bpf_stats_enabled=1" in c["bpf_stats"].fix
    host = status_with_caps(CAP_BPF_PERFMON)
    host.files["/proc/sys/kernel/bpf_stats_enabled"] = "1\n"
    assert checks(host)["capabilities"].status == "ok"
    assert checks(host)["bpf_stats"].status == "ok"


def test_missing_net_admin_warns_for_dns_probe():
    c = checks(status_with_caps((1 << 39) | (1 << 38)))["capabilities"]
    assert c.status == "warn" and "CAP_NET_ADMIN" in c.fix


def test_unreadable_capeff_falls_back_to_euid():
    host = FakeHost(files=without("/proc/self/status"))
    assert checks(host)["capabilities"].status == "ok"
    host.uid = 1000
    assert checks(host)["capabilities"].status == "fail"


def test_no_tracefs_warns_with_mount_command():
    host = FakeHost()
    host.files["/proc/self/mounts"] = HYBRID.replace("tracefs /sys/kernel/tracing tracefs", "")
    result = run_checks(host)
    c = {x.name: x for x in result}["tracefs"]
    assert (c.status, c.blocker) == ("warn", False)
    assert c.fix == "mount -t tracefs nodev /sys/kernel/tracing"
    assert exit_code(result, strict=False) == 0
    assert exit_code(result, strict=True) == 1


def test_no_uprobe_pmu_warns():
    c = checks(FakeHost(files=without(UPROBE_PMU)))["uprobe_pmu"]
    assert (c.status, c.blocker) == ("warn", False)
    assert "CONFIG_UPROBE_EVENTS" in c.fix


def test_cgroup2_missing_fails_and_modes_are_reported():
    host = FakeHost()
    host.files["/proc/self/mounts"] = HYBRID.replace("cgroup2 /sys/fs/cgroup/unified cgroup2", "")
    c = checks(host)["cgroup_v2"]
    assert (c.status, c.blocker) == ("fail", True)
    assert "v1 only" in c.detail and "mount -t cgroup2" in c.fix
    assert "hybrid" in checks(FakeHost())["cgroup_v2"].detail
    host.files["/proc/self/mounts"] = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
    c = checks(host)["cgroup_v2"]
    assert c.status == "ok" and "/sys/fs/cgroup (unified)" in c.detail


def test_old_libbpf_fails():
    c = checks(FakeHost(libbpf="v0.8"))["libbpf"]
    assert (c.status, c.blocker) == ("fail", True)
    assert "v0.8" in c.detail and "libbpf1" in c.fix
    assert checks(FakeHost(libbpf="v1.6"))["libbpf"].status == "ok"


def test_missing_libbpf_fails_with_install_hint():
    c = checks(FakeHost(libbpf=OSError("libbpf.so.1 not found")))["libbpf"]
    assert c.status == "fail" and c.fix == "apt-get install libbpf1"
    assert "libbpf.so.1 not found" in c.detail


def test_libssl_missing_warns_and_many_are_shortened():
    c = checks(FakeHost(ssl=[]))["libssl"]
    assert (c.status, c.blocker) == ("warn", False)
    assert "tls_handshake_ms disabled" in c.detail
    paths = [f"/proc/{p}/root/usr/lib/libssl.so.3" for p in range(5)]
    c = checks(FakeHost(ssl=paths))["libssl"]
    assert c.status == "ok" and c.detail.startswith("5 found:") and "(+2 more)" in c.detail
    assert paths[2] in c.detail and paths[3] not in c.detail


def test_bpf_stats_enabled_or_missing():
    host = FakeHost()
    host.files["/proc/sys/kernel/bpf_stats_enabled"] = "1\n"
    assert checks(host)["bpf_stats"].detail == "kernel.bpf_stats_enabled=1"
    c = checks(FakeHost(files=without("/proc/sys/kernel/bpf_stats_enabled")))["bpf_stats"]
    assert (c.status, c.blocker) == ("warn", False)


def test_a_raising_check_is_contained():
    result = run_checks(FakeHost(broken="libssl_paths"))
    by = {c.name: c for c in result}
    assert [c.name for c in result] == NAMES
    assert by["libssl"].status == "warn"
    assert "RuntimeError: boom in libssl_paths second line" in by["libssl"].detail
    assert by["libssl"].fix
    assert all(by[n].status == "ok" for n in NAMES if n != "libssl")


def test_raising_everywhere_still_reports_every_check():
    result = run_checks(FakeHost(broken="read_text"))
    assert [c.name for c in result] == NAMES
    by = {c.name: c for c in result}
    assert by["cgroup_v2"].status == "fail"  # blocker: unverified is not claimed ok
    assert by["tracefs"].status == "warn"
    assert by["kernel_version"].status == "ok"  # does not read files
    assert exit_code(result, strict=False) == 1


def make(name: str, status: str, blocker: bool) -> Check:
    return Check(name=name, status=status, blocker=blocker, detail="d",
                 fix="" if status == "ok" else "do x")


@pytest.mark.parametrize(
    ("statuses", "loose", "strict"),
    [
        ([("ok", True), ("ok", False)], 0, 0),
        ([("ok", True), ("warn", False)], 0, 1),
        ([("warn", True), ("ok", False)], 0, 1),
        ([("ok", True), ("fail", False)], 0, 1),
        ([("fail", True), ("ok", False)], 1, 1),
        ([], 0, 0),
    ],
)
def test_exit_code(statuses, loose, strict):
    cs = [make(f"c{i}", s, b) for i, (s, b) in enumerate(statuses)]
    assert exit_code(cs, strict=False) == loose
    assert exit_code(cs, strict=True) == strict


def test_render_text_one_aligned_line_per_check_with_fix_and_summary():
    host = FakeHost(bpf_errno=errno.EPERM)
    host.files["/proc/self/mounts"] = HYBRID.replace("tracefs /sys/kernel/tracing tracefs", "")
    result = run_checks(host)
    lines = render_text(result).splitlines()
    assert len(lines) == len(result) + 1
    for line, c in zip(lines, result, strict=False):
        assert line.startswith(c.status) and f" {c.name} " in line and c.detail in line
        assert ("fix: " in line) == (c.status != "ok")
    assert len({line.index(c.name) for line, c in zip(lines, result, strict=False)}) == 1
    assert len({line.index(c.detail) for line, c in zip(lines, result, strict=False)}) == 1
    assert "fix: mount -t tracefs nodev /sys/kernel/tracing" in lines[NAMES.index("tracefs")]
    assert lines[-1] == "11 checks: 9 ok, 1 warn, 1 fail; agent cannot run (blocked by bpf_syscall)"
    assert render_text(run_checks(FakeHost())).splitlines()[-1].endswith("agent can run")


@given(st.lists(st.tuples(st.sampled_from(["ok", "warn", "fail"]), st.booleans(), st.text()),
                max_size=12))
def test_render_text_never_breaks_lines(rows):
    cs = [Check(name=f"n{i}", status=s, blocker=b, detail=d, fix=d)
          for i, (s, b, d) in enumerate(rows)]
    assert len(render_text(cs).splitlines()) == len(cs) + 1


def test_render_json_parses_back():
    result = run_checks(FakeHost(libbpf="v0.7"))
    doc = msgspec.json.decode(render_json(result))
    assert doc["ok"] is False
    assert [c["name"] for c in doc["checks"]] == NAMES
    assert msgspec.json.decode(msgspec.json.encode(doc["checks"]), type=list[Check]) == result
    assert msgspec.json.decode(render_json(run_checks(FakeHost())))["ok"] is True
    with_warn = run_checks(FakeHost(ssl=[]))
    assert msgspec.json.decode(render_json(with_warn))["ok"] is True  # warns don't block


# --- library discovery over a fake /proc -------------------------------------------------

def fake_elf(path: Path, machine_of: str = sys.executable) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(machine_of).read_bytes()[:64])
    return path


def maps_line(path: str) -> str:
    return f"7f0000000000-7f0000001000 r-xp 00000000 fd:01 1234 {path}\n"


@pytest.fixture
def fake_proc(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A /proc with own ns, a same-ns process, a container process and junk entries."""
    proc, host_lib, ctr = tmp_path / "proc", tmp_path / "host/lib", tmp_path / "ctr"
    ssl = fake_elf(host_lib / "libssl.so.3")
    (host_lib / "libssl.so").symlink_to("libssl.so.3")  # same inode: reported once
    fake_elf(host_lib / "libssl3.so")  # NSS, not OpenSSL
    fake_elf(host_lib / "libc.so.6")
    fake_elf(ctr / "usr/lib/libssl.so.3")
    fake_elf(ctr / "lib/ld-musl-x86_64.so.1")
    for pid, ns, root in (("self", "a", "/"), ("100", "a", "/"), ("200", "b", str(ctr)),
                          ("300", "a", "/")):
        (proc / pid / "ns").mkdir(parents=True)
        (proc / "nsfiles").mkdir(exist_ok=True)
        (proc / "nsfiles" / ns).touch()
        (proc / pid / "ns" / "mnt").symlink_to(proc / "nsfiles" / ns)
        (proc / pid / "root").symlink_to(root)
    (proc / "100" / "maps").write_text(maps_line(str(ssl)) + maps_line(str(ssl)) + "junk\n")
    (proc / "300" / "maps").write_text(maps_line(str(host_lib / "libssl.so")))
    (proc / "200" / "maps").write_text(
        maps_line("/usr/lib/libssl.so.3") + maps_line("/usr/lib/libssl.so.3.old (deleted)")
        + maps_line("/usr/lib/libcrypto.so.3") + maps_line("/lib/ld-musl-x86_64.so.1"))
    (proc / "400").mkdir()  # exited between listdir and open: no maps
    (proc / "sys").mkdir()
    return proc, host_lib, ctr


def test_find_libssl_host_and_container_dedup(fake_proc):
    proc, host_lib, _ = fake_proc
    found = find_libssl(str(proc), lib_dirs=[str(host_lib)], ldconfig=False)
    assert found == [str(host_lib / "libssl.so.3"), f"{proc}/200/root/usr/lib/libssl.so.3"]


def test_find_libc_glibc_and_musl(fake_proc):
    proc, host_lib, _ = fake_proc
    found = find_libc(str(proc), lib_dirs=[str(host_lib)], ldconfig=False)
    assert found == [str(host_lib / "libc.so.6"), f"{proc}/200/root/lib/ld-musl-x86_64.so.1"]


def test_find_libc_skips_foreign_architecture(tmp_path):
    lib32 = tmp_path / "lib32" / "libc.so.6"
    lib32.parent.mkdir()
    head = bytearray(Path(sys.executable).read_bytes()[:64])
    head[4] = 1 if head[4] == 2 else 2  # flip ELFCLASS32/64
    lib32.write_bytes(bytes(head))
    assert find_libc(str(tmp_path / "noproc"), lib_dirs=[str(lib32.parent)], ldconfig=False) == []


def test_find_libs_tolerate_missing_proc(tmp_path):
    assert find_libssl(str(tmp_path / "nope"), lib_dirs=[str(tmp_path / "x")], ldconfig=False) == []


# --- this machine -------------------------------------------------------------------------

@pytest.mark.kernel
def test_real_host_has_no_blocker_failures():
    result = run_checks()
    assert [c.name for c in result] == NAMES
    assert exit_code(result, strict=False) == 0, render_text(result)
    by = {c.name: c for c in result}
    ssl = "/lib/x86_64-linux-gnu/libssl.so.3"
    assert by["libssl"].status == "ok"
    found = find_libssl()
    assert ssl in found or os.path.realpath(ssl) in found
    assert any(os.path.basename(p) == "libc.so.6" for p in find_libc())


@pytest.mark.kernel
def test_real_container_mount_namespace_library_is_found(tmp_path):
    """A process in its own mount namespace maps a libssl invisible from the host."""
    ssl = "/lib/x86_64-linux-gnu/libssl.so.3"
    if not shutil.which("unshare") or not os.path.exists(ssl):
        pytest.skip("needs unshare and libssl.so.3")
    hidden = tmp_path / "ctr"
    hidden.mkdir()
    script = (f"mount -t tmpfs none {hidden} && cp {ssl} {hidden}/ && "
              f"LD_PRELOAD={hidden}/libssl.so.3 exec sleep 30")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script])
    try:
        want = f"/proc/{proc.pid}/root{hidden}/libssl.so.3"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if want in (found := find_libssl()):
                break
            time.sleep(0.1)
        assert want in found
        assert not (hidden / "libssl.so.3").exists()  # only reachable through /proc/<pid>/root
        assert os.path.realpath(ssl) in map(os.path.realpath, found)
    finally:
        proc.kill()
        proc.wait()
