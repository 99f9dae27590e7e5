"""CFS bandwidth throttling from cgroup ``cpu.stat``: signal ``cfs_throttled_ms``.

A container with a CPU limit is stopped for the rest of a CFS period once it used its
quota; requests then stall even though the node is idle. The kernel counts this per
cgroup, so no BPF is needed: poll ``cpu.stat`` and difference the counters.

cgroup v1 and v2 name and scale the counters differently (``throttled_time`` in ns vs
``throttled_usec``); :func:`parse_cpu_stat` normalises both to nanoseconds.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable

import msgspec

from llm_slo.mounts import MOUNTINFO, parse_mountinfo, read_mounts

SIGNAL = "cfs_throttled_ms"

# A cgroup being removed answers ENODEV instead of ENOENT for a short while.
_VANISHED = (errno.ENOENT, errno.ENODEV)


class CpuStat(msgspec.Struct, frozen=True, kw_only=True):
    """Cumulative CFS bandwidth counters of one cgroup, throttled time in ns."""

    nr_periods: int
    nr_throttled: int
    throttled_ns: int


class CfsThrottleSample(msgspec.Struct, frozen=True, kw_only=True):
    """Throttling of one cgroup over one interval."""

    cgroup_path: str
    throttled_ms: float
    throttled_periods: int
    periods: int
    throttled_share: float
    interval_s: float


def parse_cpu_stat(text: str) -> CpuStat:
    """Parse a v1 or v2 ``cpu.stat``; unknown keys are ignored, missing counters are 0.

    A v2 cgroup without the cpu controller has only ``usage_usec`` and friends, which
    reads as "never throttled". Raises :class:`ValueError` naming a malformed line.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        # cpu.stat is "flat keyed" (cgroup-v2.rst): exactly one value per key.
        if len(tokens) != 2:
            raise ValueError(f"malformed cpu.stat line: {line!r}")
        key, value = tokens
        if key in ("nr_periods", "nr_throttled", "throttled_time", "throttled_usec"):
            try:
                found[key] = int(value)
            except ValueError:
                raise ValueError(f"non-integer value in cpu.stat line: {line!r}") from None
    if "throttled_time" in found:
        throttled_ns = found["throttled_time"]
    else:
        throttled_ns = found.get("throttled_usec", 0) * 1000
    return CpuStat(
        nr_periods=found.get("nr_periods", 0),
        nr_throttled=found.get("nr_throttled", 0),
        throttled_ns=throttled_ns,
    )


def throttle_between(
    path: str, prev: CpuStat, cur: CpuStat, interval_s: float
) -> CfsThrottleSample | None:
    """Throttling between two reads, or ``None`` if a counter went backwards.

    Counters only go back when the cgroup was removed and recreated under the same
    path; the pair then spans two different cgroups and means nothing.
    """
    periods = cur.nr_periods - prev.nr_periods
    throttled = cur.nr_throttled - prev.nr_throttled
    ns = cur.throttled_ns - prev.throttled_ns
    if periods < 0 or throttled < 0 or ns < 0:
        return None
    return CfsThrottleSample(
        cgroup_path=path,
        throttled_ms=ns / 1e6,
        throttled_periods=throttled,
        periods=periods,
        throttled_share=throttled / periods if periods else 0.0,
        interval_s=interval_s,
    )


def detect_cpu_root(mountinfo: str | None = None) -> str:
    """Mount point of the cgroup cpu controller: v1 ``cpu`` first, else cgroup2 with cpu.

    On a hybrid host the v1 hierarchy owns the controller and the v2 mount has none, so
    v1 must win. ``mountinfo`` is the file's text (default: read this process's).
    Raises :class:`FileNotFoundError` when neither carries it.
    """
    mounts = read_mounts() if mountinfo is None else parse_mountinfo(mountinfo)
    for m in mounts:
        if m.fstype == "cgroup" and "cpu" in m.options:
            return m.point
    for m in mounts:
        if m.fstype != "cgroup2":
            continue
        try:
            with open(os.path.join(m.point, "cgroup.controllers"), encoding="ascii") as f:
                if "cpu" in f.read().split():
                    return m.point
        except OSError:
            continue
    raise FileNotFoundError(errno.ENOENT, "no cgroup cpu controller mounted", MOUNTINFO)


def _rel(path: str) -> str:
    path = path.strip("/")
    return "/" if path in ("", ".") else "/" + path


def _read_if_exists(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError as e:
        if e.errno in _VANISHED:
            return None
        raise


class CfsThrottleReader:
    """Polls ``cpu.stat`` of chosen cgroups and reports throttling since the last poll."""

    def __init__(
        self, cpu_root: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cpu_root = os.path.normpath(cpu_root if cpu_root is not None else detect_cpu_root())
        self._clock = clock
        self._prev: dict[str, tuple[CpuStat, float]] = {}

    def sample(self, cgroup_paths: Iterable[str]) -> list[CfsThrottleSample]:
        """Read ``cpu.stat`` of each cgroup (paths relative to the root, ``/`` = root).

        The first sight of a path only primes it. A cgroup that vanished is forgotten
        silently; any other read error (permission) is raised as :class:`OSError` with
        the file name. Paths not passed in this call are forgotten, which bounds memory.
        """
        out: list[CfsThrottleSample] = []
        seen: dict[str, tuple[CpuStat, float]] = {}
        for raw in cgroup_paths:
            rel = _rel(raw)
            if rel in seen:
                continue
            text = _read_if_exists(os.path.join(self.cpu_root, rel[1:], "cpu.stat"))
            if text is None:
                continue
            now = self._clock()
            cur = parse_cpu_stat(text)
            seen[rel] = (cur, now)
            before = self._prev.get(rel)
            if before is not None:
                sample = throttle_between(rel, before[0], cur, now - before[1])
                if sample is not None:
                    out.append(sample)
        self._prev = seen
        return out

    def _has_quota(self, directory: str) -> bool:
        quota = _read_if_exists(os.path.join(directory, "cpu.cfs_quota_us"))
        if quota is not None:
            return quota.strip() != "-1"
        # v2: no cpu.max in the root or where the controller is not enabled, and none in
        # a cgroup that vanished during the walk; all mean "no quota here".
        limit = _read_if_exists(os.path.join(directory, "cpu.max"))
        return limit is not None and not limit.startswith("max")

    def discover(self) -> list[str]:
        """Every cgroup under the root with a CPU quota, as sorted relative paths."""
        found: list[str] = []
        for directory, _dirs, _files in os.walk(self.cpu_root):
            if self._has_quota(directory):
                found.append(_rel(os.path.relpath(directory, self.cpu_root)))
        return sorted(found)
