"""Signals read from /proc and cgroupfs each interval, behind the same probe interface."""

from __future__ import annotations

import time
from typing import Any

from llm_slo.cfs_throttle import CfsThrottleReader
from llm_slo.cpu_steal import CpuStealReader
from llm_slo.errors import AttachPointMissing
from llm_slo.probes.base import AttachPoint, Probe


class CpuSteal(Probe):
    """cpu_steal_pct: per CPU and node from /proc/stat."""

    signal = "cpu_steal_pct"

    def attach_points(self) -> list[AttachPoint]:
        return [AttachPoint(self.signal, "procfs", "/proc/stat", True, True)]

    def open(self) -> None:
        self.reader = CpuStealReader()
        self.reader.sample()  # prime: the first interval starts now

    def poll(self, now_ns: int) -> list[Any]:
        return list(self.reader.sample())


class CfsThrottled(Probe):
    """cfs_throttled_ms: throttled time of every cgroup with a CPU quota (v1 or v2)."""

    signal = "cfs_throttled_ms"
    rediscover_s = 2.0  # new pods get a quota at any time; the walk is cheap

    def attach_points(self) -> list[AttachPoint]:
        try:
            root = CfsThrottleReader().cpu_root
        except OSError:
            return [AttachPoint(self.signal, "procfs", "<no cpu controller>", False, True)]
        return [AttachPoint(self.signal, "procfs", f"{root}/**/cpu.stat", True, True)]

    def open(self) -> None:
        try:
            self.reader = CfsThrottleReader()
        except OSError as e:
            raise AttachPointMissing(self.signal, f"no cgroup cpu controller mounted ({e})") from e
        self._paths: list[str] = []
        self._discovered_at = float("-inf")
        self.poll(0)

    def poll(self, now_ns: int) -> list[Any]:
        now = time.monotonic()
        if now - self._discovered_at >= self.rediscover_s:
            self._paths = self.reader.discover()
            self._discovered_at = now
        return list(self.reader.sample(self._paths))
