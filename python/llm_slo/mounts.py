"""Mounts from ``/proc/self/mountinfo``: where the cgroup hierarchies live.

Shared by identity (cgroup2 root), CPU throttling (the cpu controller) and the lab.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


class Mount(NamedTuple):
    """One mount: where, which filesystem, and its super options (e.g. v1 controllers)."""

    point: str
    fstype: str
    options: list[str]


def parse_mountinfo(text: str) -> list[Mount]:
    """Pure: every well-formed mountinfo line; mount points unescaped (\\040 -> space)."""
    mounts = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = _OCTAL.sub(lambda m: chr(int(m[1], 8)), fields[4])
        mounts.append(Mount(point, tail[0], tail[2].split(",") if len(tail) > 2 else []))
    return mounts


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """The mounts in file ``mountinfo``; empty if it cannot be read."""
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return []


def cgroup2_mount(mountinfo: str = MOUNTINFO) -> str:
    """Mount point of the first cgroup2 filesystem, or "" (pure v1 host)."""
    return next((m.point for m in read_mounts(mountinfo) if m.fstype == "cgroup2"), "")


def cgroup1_mount(controller: str, mountinfo: str = MOUNTINFO) -> str:
    """Mount point of the v1 hierarchy carrying ``controller`` (or ``name=``), or ""."""
    return next((m.point for m in read_mounts(mountinfo) if m.fstype == "cgroup"
                 and (controller in m.options or f"name={controller}" in m.options)), "")
