"""Find the shared libraries that uprobes attach to: libssl and libc.

A uprobe is placed on a file's inode, so every distinct copy matters: the host's, and
each container's own (reached through ``/proc/<pid>/root``, since containers have
their own mount namespace). Copies are deduplicated by (device, inode).
"""

from __future__ import annotations

import glob
import os
import re

HOST_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                 "/lib", "/usr/lib", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
LIBSSL = re.compile(r"/libssl\.so\.3$")
LIBC = re.compile(r"/(libc\.so\.6|ld-musl-[^/]+\.so\.1)$")


def _mapped(pattern: re.Pattern[str], proc: str) -> list[str]:
    """Libraries matching ``pattern`` mapped by running processes, as host-visible paths."""
    own_mnt = _mnt_ns(f"{proc}/self")
    found: list[str] = []
    for maps in glob.glob(f"{proc}/[0-9]*/maps"):
        pid_dir = os.path.dirname(maps)
        try:
            with open(maps, encoding="utf-8", errors="replace") as f:
                paths = {line.split(None, 5)[-1].strip() for line in f if "/" in line}
        except OSError:
            continue  # exited, or a kernel thread
        for path in paths:
            if pattern.search(path.removesuffix(" (deleted)")):
                same_ns = _mnt_ns(pid_dir) == own_mnt
                found.append(path if same_ns else f"{pid_dir}/root{path}")
    return found


def _mnt_ns(pid_dir: str) -> str:
    try:
        return os.readlink(f"{pid_dir}/ns/mnt")
    except OSError:
        return ""


def _find(pattern: re.Pattern[str], names: tuple[str, ...], proc: str) -> list[str]:
    candidates = [f"{d}/{n}" for d in HOST_LIB_DIRS for n in names]
    candidates += _mapped(pattern, proc)
    seen: set[tuple[int, int]] = set()
    out = []
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(path)
    return out


def find_libssl(proc: str = "/proc") -> list[str]:
    """Distinct OpenSSL 3 ``libssl.so.3`` files on the host and in container roots."""
    return _find(LIBSSL, ("libssl.so.3",), proc)


def find_libc(proc: str = "/proc") -> list[str]:
    """Distinct glibc ``libc.so.6`` and musl loader files on the host and in containers."""
    return _find(LIBC, ("libc.so.6",), proc)
