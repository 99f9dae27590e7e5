"""Host prerequisite checks behind ``sloctl prereq check``.

Every check reads the machine through :class:`Host` (tests pass a fake), returns exactly
one :class:`Check` and never raises: an unexpected error becomes that check's result, so
one broken probe cannot hide the others. Blocker checks decide whether the agent can run
at all; the others name the signals that degrade.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import importlib.util
import os
import re
import resource
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from llm_slo.libraries import find_libssl

BTF_KIND_STRUCT = 4
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39
MIN_KERNEL = (5, 8)  # BPF ring buffer, CAP_BPF and CAP_PERFMON
MEMCG_KERNEL = (5, 11)  # from here BPF memory is charged to memcg, not RLIMIT_MEMLOCK
MIN_LIBBPF = (1, 1)  # the ABI our cffi declarations target
MEMLOCK_WANTED = 64 << 20
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
UPROBE_PMU = "/sys/bus/event_source/devices/uprobe/type"
# bpf(2) has no libc wrapper and its number differs per architecture (asm/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "loongarch64": 280, "i686": 357,
            "armv7l": 386, "ppc64le": 361, "ppc64": 361, "s390x": 351}


class Check(msgspec.Struct, frozen=True, kw_only=True):
    """One verdict; ``fix`` is one actionable line when ``status`` is not "ok"."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    blocker: bool  # a "fail" here means the agent cannot run
    detail: str
    fix: str = ""


class Host:
    """The host facts the checks read, from this machine; tests subclass it with fakes."""

    def uname(self) -> tuple[str, str]:
        """``(release, machine)`` as ``uname -rm`` prints them."""
        return os.uname().release, os.uname().machine

    def read_text(self, path: str) -> str | None:
        """A file's text, None if it does not exist (other errors reach the check)."""
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return os.path.exists(path)

    def euid(self) -> int:
        """Effective uid of this process."""
        return os.geteuid()

    def memlock_limit(self) -> int | None:
        """Soft RLIMIT_MEMLOCK in bytes; None means unlimited."""
        soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
        return None if soft == resource.RLIM_INFINITY else soft

    def bpf_probe(self) -> int:
        """errno of a raw bpf(BPF_MAP_CREATE) of a 1-entry array (fd closed), 0 if allowed."""
        nr = _SYS_BPF.get(os.uname().machine)
        if nr is None:
            raise OSError(f"bpf() syscall number unknown for {os.uname().machine}")
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        attr = (ctypes.c_uint32 * 5)(2, 4, 4, 1, 0)  # ARRAY, key 4 B, value 4 B, 1 entry
        fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0),  # cmd 0 = BPF_MAP_CREATE
                          ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
        if fd < 0:
            return ctypes.get_errno()
        os.close(fd)
        return 0

    def libbpf_version(self) -> str:
        """libbpf's version string (``v1.1``); OSError if the library cannot be loaded."""
        from llm_slo.bpf.libbpf import libbpf_version  # lazy: importing prereq stays cheap

        return libbpf_version()

    def btf_has(self, name: str, kind: int, btf_path: str | None) -> bool:
        """Whether kernel BTF (or the file ``btf_path``) defines ``name`` of ``kind``."""
        from llm_slo.bpf.libbpf import kernel_btf_has

        return kernel_btf_has(name, kind, btf_path)

    def libssl_paths(self) -> list[str]:
        """OpenSSL libraries the TLS probes could attach to (:func:`find_libssl`)."""
        return find_libssl()

    def kernel_headers(self, configured: str | None) -> str | None:
        """Where the BCC fallback would find kernel headers (:func:`find_kernel_headers`)."""
        from llm_slo.bpf.bcc import find_kernel_headers

        return find_kernel_headers(configured)

    def bcc_module(self) -> bool:
        """Whether BCC's Python module is installed (here or in the distribution's
        packages, where the fallback loader looks); not imported: that loads libbcc."""
        from llm_slo.bpf.bcc import DIST_PACKAGES

        return importlib.util.find_spec("bcc") is not None or any(
            os.path.isdir(os.path.join(d, "bcc")) for d in DIST_PACKAGES)


class _R(NamedTuple):
    status: str
    detail: str
    fix: str = ""
    blocker: bool | None = None  # overrides the plan's default (a bad --btf file blocks)


def _kver(host: Host) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release := host.uname()[0])
    if not m:
        raise ValueError(f"cannot parse kernel release {release!r}")
    return int(m[1]), int(m[2])


def _mounts(host: Host) -> list[tuple[str, str]]:
    """(mount point, fs type) pairs; the mount table escapes spaces as \\040."""
    rows = [line.split() for line in (host.read_text("/proc/self/mounts") or "").splitlines()]
    return [(r[1].replace("\\040", " "), r[2]) for r in rows if len(r) >= 3]


def _cap(host: Host, bit: int) -> bool:
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", host.read_text("/proc/self/status") or "", re.M)
    return bool(int(m[1], 16) >> bit & 1) if m else host.euid() == 0


def _kernel_version(host: Host, _: str | None) -> _R:
    release, machine = host.uname()
    detail = f"{release} {machine} (>= 5.8 needed)"
    if _kver(host) < MIN_KERNEL:
        return _R("fail", detail, "upgrade to kernel >= 5.8 (BPF ring buffer, CAP_BPF)")
    return _R("ok", detail)


def _btf(host: Host, btf_path: str | None, kernel_headers: str | None = None) -> _R:
    vmlinux = host.exists(VMLINUX_BTF)
    if btf_path and not host.btf_has("task_struct", BTF_KIND_STRUCT, btf_path):
        return _R("fail", f"{btf_path}: not a vmlinux BTF (no struct task_struct)",
                  "pass this kernel's BTF, e.g. BTFHub <os>/<version>/<arch>/<uname -r>.btf",
                  blocker=True)
    if btf_path and not vmlinux:  # btf_custom_path serves CO-RE only, not tp_btf attach
        return _R("warn", f"CO-RE from {btf_path}; no {VMLINUX_BTF}, so tp_btf probes (run "
                  "queue, retransmits, connect, reclaim) cannot attach",
                  "use a kernel with CONFIG_DEBUG_INFO_BTF=y for the tp_btf probes")
    if vmlinux:
        return _R("ok", f"{VMLINUX_BTF} present" + (f"; CO-RE from {btf_path}" * bool(btf_path)))
    headers = host.kernel_headers(kernel_headers)
    lacks = [] if host.bcc_module() else ["BCC's Python module (python3-bpfcc)"]
    if headers is None:
        lacks.append(f"kernel headers (linux-headers-{host.uname()[0]})")
    if not any(fs == "tracefs" for _, fs in _mounts(host)):
        lacks.append("a tracefs mount (mount -t tracefs nodev /sys/kernel/tracing)")
    if not lacks:
        return _R("warn", f"{VMLINUX_BTF} missing: probes use the BCC fallback, compiled "
                  f"against {headers}; no wire DNS there (getaddrinfo only)",
                  "use a kernel with CONFIG_DEBUG_INFO_BTF=y for the CO-RE probes",
                  blocker=False)
    return _R("fail", f"{VMLINUX_BTF} missing, and the BCC fallback lacks "
              + " and ".join(lacks),
              "use a kernel with CONFIG_DEBUG_INFO_BTF=y, pass --btf FILE (e.g. from BTFHub), "
              "or provide " + " and ".join(lacks))


def _bpf_syscall(host: Host, _: str | None) -> _R:
    unpriv = (host.read_text("/proc/sys/kernel/unprivileged_bpf_disabled") or "?").strip()
    note = f"kernel.unprivileged_bpf_disabled={unpriv}"
    if (err := host.bpf_probe()) == 0:
        return _R("ok", f"BPF_MAP_CREATE allowed; {note}")
    if err == errno.ENOSYS:
        return _R("fail", "bpf() returned ENOSYS: kernel without CONFIG_BPF_SYSCALL",
                  "use a kernel built with CONFIG_BPF_SYSCALL=y")
    detail = f"BPF_MAP_CREATE: {errno.errorcode.get(err, err)} ({os.strerror(err)}); {note}"
    if err == errno.EPERM:
        return _R("fail", detail, "run as root or grant CAP_BPF+CAP_PERFMON (CAP_SYS_ADMIN "
                  "before 5.8); in a container also allow bpf() in its seccomp profile")
    return _R("fail", detail, "check seccomp/LSM policy and dmesg for what refuses bpf()")


def _capabilities(host: Host, _: str | None) -> _R:
    names = {CAP_BPF: "CAP_BPF", CAP_PERFMON: "CAP_PERFMON", CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
             CAP_NET_ADMIN: "CAP_NET_ADMIN"}
    has = {bit: _cap(host, bit) for bit in names}
    held = ", ".join(n for bit, n in names.items() if has[bit]) or "none of them"
    detail = f"euid {host.euid()}; effective: {held}"
    # CapEff decides, not euid 0: container root often lacks these bits.
    if not (has[CAP_SYS_ADMIN] or (has[CAP_BPF] and has[CAP_PERFMON])):
        return _R("fail", detail, "run as root or grant CAP_BPF and CAP_PERFMON "
                  "(CAP_SYS_ADMIN on kernels before 5.8)")
    fixes = []
    stats_on = (host.read_text("/proc/sys/kernel/bpf_stats_enabled") or "").strip() == "1"
    if not has[CAP_SYS_ADMIN] and not stats_on:
        fixes.append("bpf_stats (per-program run time) needs CAP_SYS_ADMIN or "
                     "sysctl kernel.bpf_stats_enabled=1")
    if not (has[CAP_NET_ADMIN] or has[CAP_SYS_ADMIN]):
        fixes.append("the cgroup_skb DNS probe needs CAP_NET_ADMIN")
    return _R("warn", detail, "; ".join(fixes)) if fixes else _R("ok", detail)


def _tracefs(host: Host, _: str | None) -> _R:
    if where := [mp for mp, fs in _mounts(host) if fs == "tracefs"]:
        return _R("ok", "mounted at " + ", ".join(where))
    return _R("warn", "not mounted: classic tracepoints unavailable (the BCC fallback needs "
              "them; tp_btf probes are unaffected)",
              "mount -t tracefs nodev /sys/kernel/tracing")


def _uprobe_pmu(host: Host, _: str | None) -> _R:
    if (pmu := host.read_text(UPROBE_PMU)) is not None:
        return _R("ok", f"uprobe PMU type {pmu.strip()}")
    return _R("warn", f"{UPROBE_PMU} missing: TLS handshake and getaddrinfo probes need uprobes",
              "use a kernel with CONFIG_UPROBE_EVENTS=y")


def _cgroup_v2(host: Host, _: str | None) -> _R:
    v2 = [mp for mp, fs in _mounts(host) if fs == "cgroup2"]
    v1 = any(fs == "cgroup" for _, fs in _mounts(host))
    if not v2:
        return _R("fail", "no cgroup2 mount" + (" (cgroup v1 only)" if v1 else ""),
                  "mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified")
    return _R("ok", f"cgroup2 at {', '.join(v2)} ({'hybrid with v1' if v1 else 'unified'})")


def _libbpf(host: Host, _: str | None) -> _R:
    try:
        version = host.libbpf_version()
    except OSError as exc:
        return _R("fail", f"libbpf cannot be loaded: {exc}", "apt-get install libbpf1")
    if not (m := re.match(r"v?(\d+)\.(\d+)", version)):
        raise ValueError(f"unparseable libbpf version {version!r}")
    detail = f"libbpf {version} (>= 1.1 needed)"
    if (int(m[1]), int(m[2])) < MIN_LIBBPF:
        return _R("fail", detail, "install libbpf >= 1.1 (Debian 12+: apt-get install libbpf1)")
    return _R("ok", detail)


def _libssl(host: Host, _: str | None) -> _R:
    if not (paths := host.libssl_paths()):
        return _R("warn", "no libssl.so found on the host or in running containers: "
                  "tls_handshake_ms disabled", "apt-get install libssl3")
    more = f" (+{len(paths) - 3} more)" if len(paths) > 3 else ""
    return _R("ok", f"{len(paths)} found: {', '.join(paths[:3])}{more}")


def _memlock(host: Host, _: str | None) -> _R:
    limit = host.memlock_limit()
    shown = "unlimited" if limit is None else f"{limit / (1 << 20):g} MiB"
    if _kver(host) >= MEMCG_KERNEL:
        return _R("ok", f"RLIMIT_MEMLOCK {shown}, unused: kernel >= 5.11 charges BPF to memcg")
    if limit is not None and limit < MEMLOCK_WANTED:
        return _R("warn", f"RLIMIT_MEMLOCK {shown} < 64 MiB on a kernel < 5.11 (BPF maps "
                  "count against it)", "ulimit -l unlimited (systemd: LimitMEMLOCK=infinity)")
    return _R("ok", f"RLIMIT_MEMLOCK {shown}")


def _bpf_stats(host: Host, _: str | None) -> _R:
    if (value := host.read_text("/proc/sys/kernel/bpf_stats_enabled")) is None:
        return _R("warn", "kernel.bpf_stats_enabled missing: no per-program run time",
                  "use a kernel >= 5.8")
    if (value := value.strip()) == "1":
        return _R("ok", "kernel.bpf_stats_enabled=1")
    if _cap(host, CAP_SYS_ADMIN):  # the agent turns stats on itself via BPF_ENABLE_STATS
        return _R("ok", f"kernel.bpf_stats_enabled={value}; the agent enables stats itself")
    return _R("warn", f"kernel.bpf_stats_enabled={value} and no CAP_SYS_ADMIN: per-program "
              "run_time_ns stays 0", "sysctl -w kernel.bpf_stats_enabled=1")


_Fn = Callable[[Host, str | None], _R]


def _run_one(name: str, blocker: bool, fn: _Fn, host: Host, btf_path: str | None) -> Check:
    try:
        r = fn(host, btf_path)
    except Exception as exc:  # a broken check reports itself; it must not stop the others
        # An unverified blocker is not claimed to be met; anything else only warns.
        return Check(name=name, status="fail" if blocker else "warn", blocker=blocker,
                     detail=" ".join(f"check error: {type(exc).__name__}: {exc}".split()),
                     fix="rerun as root; if it persists, report this error")
    return Check(name=name, status=r.status, blocker=blocker if r.blocker is None else r.blocker,
                 detail=r.detail, fix="" if r.status == "ok" else r.fix)


def run_checks(host: Host | None = None, *, btf_path: str | None = None,
               kernel_headers: str | None = None) -> list[Check]:
    """Run every check, in a stable order, against ``host`` (default: this machine).

    ``btf_path`` is the ``--btf FILE`` the agent would use for CO-RE; given a valid one, a
    missing kernel BTF no longer blocks the agent; nor does a usable BCC fallback, which
    would compile against ``kernel_headers`` (default: the running kernel's).
    """
    host = host if host is not None else Host()
    btf = functools.partial(_btf, kernel_headers=kernel_headers)
    plan: list[tuple[str, bool, _Fn]] = [
        ("kernel_version", True, _kernel_version), ("btf", btf_path is None, btf),
        ("bpf_syscall", True, _bpf_syscall), ("capabilities", True, _capabilities),
        ("tracefs", False, _tracefs), ("uprobe_pmu", False, _uprobe_pmu),
        ("cgroup_v2", True, _cgroup_v2), ("libbpf", True, _libbpf),
        ("libssl", False, _libssl), ("memlock", False, _memlock),
        ("bpf_stats", False, _bpf_stats),
    ]
    return [_run_one(name, blocker, fn, host, btf_path) for name, blocker, fn in plan]


def exit_code(checks: list[Check], strict: bool) -> int:
    """1 if a blocker failed, or with ``strict`` if anything is not ok; else 0."""
    if strict:
        return int(any(c.status != "ok" for c in checks))
    return int(any(c.blocker and c.status == "fail" for c in checks))


def render_text(checks: list[Check]) -> str:
    """One aligned line per check (status, name, detail, fix), then a summary line."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        fix = f"  fix: {c.fix}" if c.status != "ok" and c.fix else ""
        lines.append(" ".join(f"{c.status:<4}  {c.name:<{width}}  {c.detail}{fix}".splitlines()))
    count = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    blocked = [c.name for c in checks if c.blocker and c.status == "fail"]
    verdict = f"agent cannot run (blocked by {', '.join(blocked)})" if blocked else "agent can run"
    lines.append(f"{len(checks)} checks: {count['ok']} ok, {count['warn']} warn, "
                 f"{count['fail']} fail; {verdict}")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> bytes:
    """``{"checks": [...], "ok": bool}``; ``ok`` is false when a blocker failed."""
    return msgspec.json.encode({"checks": checks, "ok": exit_code(checks, strict=False) == 0})
