"""The machine a measurement ran on: recorded by every benchmark and lab run, so each
published number names its kernel, CPU and software."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """``model name`` of the first CPU in /proc/cpuinfo, "" if unreadable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages now (a shared VM's background load)."""
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[:3]
    return []


def describe(packages: Iterable[str] = ()) -> dict[str, Any]:
    """Kernel, host, CPU model and count, Python, the installed versions of
    ``packages`` ("?" when one is not installed) and the load average now."""
    versions = {}
    for name in packages:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "?"
    return {"kernel": platform.release(), "hostname": platform.node(),
            "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "versions": versions,
            "loadavg": loadavg()}
