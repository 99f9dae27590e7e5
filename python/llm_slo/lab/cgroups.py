"""Throw-away cgroups (v2 and v1) for putting workloads where the probes can see them.

On this host the hierarchy is hybrid: resource controllers (cpu, memory, ...) are v1
mounts at ``/sys/fs/cgroup/<controller>``, while the cgroup2 tree (no controllers, but
its directory inode is the id BPF reports) is mounted separately. A test that wants a
CPU-quota'd process with a known BPF cgroup id uses both:

    with V2Cgroup(unique_name("llm-slo-t")) as v2, \\
         V1Cgroup("cpu", unique_name("llm-slo-t"), {"cpu.cfs_quota_us": "20000"}) as cpu:
        proc = spawn_in([v2, cpu], ["python3", "-c", "while True: pass"])
        ...  # events for this process carry cgroup id v2.id

Exit removes the directory after killing (default) or evicting its members.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from llm_slo import mounts
from llm_slo.errors import LabError
from llm_slo.lab.naming import is_stale
from llm_slo.lab.processes import kill_quietly

_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "freezer",
                   "devices")


@functools.cache
def cgroup2_mount() -> Path:
    """Mount point of the cgroup2 hierarchy (``/sys/fs/cgroup/unified`` here)."""
    point = mounts.cgroup2_mount()
    if not point:
        raise LabError("no cgroup2 hierarchy mounted")
    return Path(point)


@functools.cache
def cgroup1_mount(controller: str) -> Path:
    """Mount point of the v1 hierarchy carrying ``controller`` (e.g. ``cpu``)."""
    point = mounts.cgroup1_mount(controller)
    if not point:
        raise LabError(f"no cgroup v1 hierarchy with controller {controller!r}")
    return Path(point)


def _write(path: Path, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _members(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _remove(path: Path, kill_members: bool) -> None:
    """Empty the cgroup at ``path`` (children first), then rmdir it."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir():
            _remove(child, kill_members)
    deadline = time.monotonic() + 5.0
    while True:
        for pid in _members(path):
            # Never kill ourselves: a caller may have added the test process.
            if kill_members and pid != os.getpid():
                kill_quietly(pid)
            else:
                with contextlib.suppress(ProcessLookupError):
                    _write(path.parent / "cgroup.procs", str(pid))
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY while SIGKILLed members are still exiting; retry briefly.
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise LabError(f"cannot remove cgroup {path}: {exc}") from exc
            time.sleep(0.01)


class Cgroup:
    """Base of V1Cgroup and V2Cgroup: create, add members, tear down."""

    def __init__(self, path: Path, kill_members: bool) -> None:
        self.path = path
        self.kill_members = kill_members
        self._created = False

    def __enter__(self) -> Self:
        self.path.mkdir()  # FileExistsError: never adopt (and later kill) someone's cgroup
        self._created = True
        try:
            self._configure()
        except BaseException:
            self.close()
            raise
        return self

    def _configure(self) -> None:
        pass

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        _write(self.path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """Processes currently in this cgroup."""
        return _members(self.path)

    def close(self) -> None:
        """Kill or evict members, then remove the directory; idempotent."""
        if self._created:
            _remove(self.path, self.kill_members)
            self._created = False


class V2Cgroup(Cgroup):
    """Cgroup ``<cgroup2 mount>/<name>``; ``.id`` equals BPF's cgroup id for it."""

    def __init__(self, name: str, *, kill_members: bool = True) -> None:
        super().__init__(cgroup2_mount() / name, kill_members)
        self.name = name

    @property
    def id(self) -> int:
        """The cgroup id BPF helpers report: the directory's inode number."""
        return self.path.stat().st_ino


class V1Cgroup(Cgroup):
    """Cgroup ``<controller mount>/<name>`` with ``settings`` written in order."""

    def __init__(self, controller: str, name: str, settings: Mapping[str, str] | None = None,
                 *, kill_members: bool = True) -> None:
        super().__init__(cgroup1_mount(controller) / name, kill_members)
        self.controller = controller
        self.name = name
        self.settings = dict(settings or {})

    def _configure(self) -> None:
        for key, value in self.settings.items():
            try:
                _write(self.path / key, value)
            except OSError as exc:
                raise LabError(f"cannot set {self.path / key} = {value}: {exc}") from exc

    def read(self, key: str) -> str:
        """Current value of control file ``key`` (e.g. ``cpu.stat``)."""
        return (self.path / key).read_text()


def spawn_in(cgroups: Sequence[Cgroup], argv: Sequence[str],
             **popen_kw: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` already inside every cgroup of ``cgroups``.

    The child joins the cgroups between fork and exec, so no event of the new program
    (its first scheduling, allocation or packet) is attributed to the parent's cgroup.
    The hook only makes raw syscalls, which keeps ``preexec_fn`` safe enough even with
    other threads (servers of this lab) running in the parent.
    """
    targets = [str(cg.path / "cgroup.procs") for cg in cgroups]

    def _join() -> None:
        for target in targets:
            # "0" means "the writing process" for cgroup.procs in v1 and v2.
            fd = os.open(target, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    return subprocess.Popen(list(argv), preexec_fn=_join, **popen_kw)


def cleanup_stale(prefix: str = "llm-slo", *, include_live: bool = False) -> list[str]:
    """Remove top-level cgroups named ``prefix*`` of dead owners, killing members.

    Looks in the cgroup2 tree and in every mounted v1 controller hierarchy. Returns
    the paths removed.
    """
    roots = []
    for controller in (None, *_V1_CONTROLLERS):
        try:
            roots.append(cgroup2_mount() if controller is None else cgroup1_mount(controller))
        except LabError:  # hierarchy not mounted on this host
            continue
    removed = []
    for root in dict.fromkeys(roots):
        for child in root.iterdir():
            if child.is_dir() and is_stale(child.name, prefix, include_live):
                _remove(child, kill_members=True)
                removed.append(str(child))
    return removed
