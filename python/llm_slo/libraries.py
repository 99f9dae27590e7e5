"""Find the shared libraries that uprobes attach to: libssl and libc.

A uprobe is placed on a file's inode, so every distinct copy matters: the host's, and
each container's own, reached through ``/proc/<pid>/root`` because containers have
their own mount namespace. Copies are deduplicated by (device, inode).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

_LIBSSL = re.compile(r"libssl\.so\.\d[\d.]*")  # OpenSSL 3 and 1.x, not NSS's libssl3.so
_LIBC = re.compile(r"libc\.so\.6|ld-musl-[^/]+\.so\.1")  # musl's libc is its loader
_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")


def find_libssl(proc: str = "/proc", *, lib_dirs: Iterable[str] | None = None,
                ldconfig: bool = True) -> list[str]:
    """OpenSSL ``libssl.so.N`` files on the host and inside container roots.

    Host: ``ldconfig -p`` and the usual lib dirs (``lib_dirs`` replaces those). Containers:
    libraries mapped in ``<proc>/<pid>/maps``, returned as ``<proc>/<pid>/root<path>`` for
    processes in another mount namespace or root. Deduplicated by (st_dev, st_ino);
    libraries of a foreign architecture (e.g. /lib32) are left out.
    """
    return _find_libs(_LIBSSL, proc, lib_dirs, ldconfig)


def find_libc(proc: str = "/proc", *, lib_dirs: Iterable[str] | None = None,
              ldconfig: bool = True) -> list[str]:
    """glibc ``libc.so.6`` and musl ``ld-musl-*.so.1`` files, found as :func:`find_libssl`."""
    return _find_libs(_LIBC, proc, lib_dirs, ldconfig)


def _try(fn: Callable[[str], object], path: str) -> object:
    try:
        return fn(path)
    except OSError:  # gone, or not ours to read: callers treat it as unknown
        return None


def _elf_id(path: str) -> bytes | None:
    """ELF class, byte order and machine: a uprobe needs the probed process's arch."""
    with open(path, "rb") as f:
        head = f.read(20)
    return head[4:6] + head[18:20] if len(head) == 20 and head[:4] == b"\x7fELF" else None


def _find_libs(pattern: re.Pattern[str], proc: str, lib_dirs: Iterable[str] | None,
               ldconfig: bool) -> list[str]:
    own, seen, found = _try(_elf_id, sys.executable), set(), []
    for path in [*_host_libs(pattern, lib_dirs, ldconfig), *_mapped_libs(pattern, proc)]:
        st = _try(os.stat, path)
        if not isinstance(st, os.stat_result) or not stat.S_ISREG(st.st_mode):
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            if None in (own, elf := _try(_elf_id, path)) or elf == own:
                found.append(path)
    return found


def _host_libs(pattern: re.Pattern[str], lib_dirs: Iterable[str] | None,
               ldconfig: bool) -> Iterator[str]:
    exe = shutil.which("ldconfig") or "/sbin/ldconfig"
    if ldconfig and os.path.exists(exe):
        try:
            out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():  # "\tlibssl.so.3 (libc6,x86-64) => /lib/.../libssl.so.3"
            if " => " in line and pattern.fullmatch(line.split()[0]):
                yield line.rsplit(" => ", 1)[1].strip()
    if lib_dirs is None:
        lib_dirs = [*_LIB_DIRS, *sorted(glob.glob("/lib/*-linux-*")),
                    *sorted(glob.glob("/usr/lib/*-linux-*"))]
    for d in lib_dirs:
        names = sorted(os.listdir(d)) if os.path.isdir(d) else []
        yield from (os.path.join(d, n) for n in names if pattern.fullmatch(n))


def _mapped_libs(pattern: re.Pattern[str], proc: str) -> Iterator[str]:
    def mnt_ns(base: str) -> object:
        st = _try(os.stat, f"{base}/ns/mnt")
        return st.st_ino if isinstance(st, os.stat_result) else None

    own_ns = mnt_ns(f"{proc}/self")
    pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit()) if os.path.isdir(proc) else []
    for pid in pids:
        base = f"{proc}/{pid}"
        text = _try(lambda p: Path(p).read_text(errors="replace"), f"{base}/maps")
        # Deleted files ("... (deleted)") fail the full match and drop out here.
        paths = {r[5] for r in (ln.split(maxsplit=5) for ln in str(text or "").splitlines())
                 if len(r) == 6 and pattern.fullmatch(r[5].rsplit("/", 1)[-1])}
        foreign = mnt_ns(base) != own_ns or _try(os.readlink, f"{base}/root") != "/"
        yield from (f"{base}/root{p}" if foreign else p for p in sorted(paths))
