"""Probes, one per signal, and the set that runs them with per-probe fault isolation.

:class:`ProbeSet` opens the requested probes one by one. A probe that fails (no
privilege, an attach point or library missing) is recorded with its reason in
``failures`` and the others keep running; ``prereq`` and ``probe watch`` report it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import structlog

from llm_slo.bpf.libbpf import enable_run_time_stats
from llm_slo.errors import ConfigError, LlmSloError
from llm_slo.events import SIGNALS
from llm_slo.probes.base import AttachPoint, Probe, ProbeOptions
from llm_slo.probes.kernel import KERNEL_PROBES
from llm_slo.probes.procfs import CfsThrottled, CpuSteal

__all__ = ["PROBES", "AttachPoint", "Probe", "ProbeOptions", "ProbeSet", "parse_signals"]

log = structlog.get_logger("probes")

PROBES: dict[str, type[Probe]] = {p.signal: p for p in (*KERNEL_PROBES, CpuSteal, CfsThrottled)}
assert set(PROBES) == set(SIGNALS)


def parse_signals(text: str | None) -> list[str]:
    """``a,b`` -> validated signal names (all when empty); unknown names are an error."""
    if not text:
        return list(SIGNALS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ConfigError(
            f"unknown signal(s) {', '.join(unknown)}; choose from {', '.join(SIGNALS)}"
        )
    return names


class ProbeSet:
    """The open probes of one agent; ``close()`` detaches everything (idempotent)."""

    def __init__(self, signals: Iterable[str], options: ProbeOptions | None = None) -> None:
        self.options = options or ProbeOptions()
        self.signals = list(signals)
        self.probes: dict[str, Probe] = {}
        self.failures: dict[str, str] = {}
        self.read_errors: dict[str, int] = {}
        self._stats_fd: int | None = None

    def open(self) -> None:
        """Open each probe; a failure of any kind disables that probe only."""
        self._stats_fd = enable_run_time_stats()
        for signal in self.signals:
            probe = PROBES[signal](self.options)
            try:
                probe.open()
            except Exception as e:
                probe.close()
                reason = str(e) if isinstance(e, LlmSloError) else f"probe {signal}: {e!r}"
                self.failures[signal] = reason
                log.warning("probe unavailable", signal=signal, reason=reason)
                continue
            self.probes[signal] = probe
            for gap in probe.gaps:
                log.warning("probe degraded", signal=signal, gap=gap)

    def poll(self, now_ns: int) -> list[Any]:
        """Records from every open probe since the last poll; a probe whose read fails
        is logged and counted, and the others still deliver."""
        out: list[Any] = []
        for signal, probe in self.probes.items():
            try:
                out.extend(probe.poll(now_ns))
            except Exception as e:
                self.read_errors[signal] = self.read_errors.get(signal, 0) + 1
                log.error("probe read failed", signal=signal, error=repr(e))
        return out

    def run_stats(self) -> dict[str, dict[str, tuple[int, int]]]:
        """Per probe and program: (run_time_ns, run_cnt) from the kernel."""
        return {s: p.run_stats() for s, p in self.probes.items() if p.run_stats()}

    def gaps(self) -> dict[str, list[str]]:
        """Missing optional hooks per open probe."""
        return {s: list(p.gaps) for s, p in self.probes.items() if p.gaps}

    def counters(self) -> dict[str, dict[str, int]]:
        return {s: p.counters() for s, p in self.probes.items()}

    def close(self) -> None:
        """Detach and free every probe, then stop run-time accounting (idempotent); one
        that fails to close is logged and the others are still closed."""
        for signal, probe in self.probes.items():
            try:
                probe.close()
            except Exception as e:
                log.error("probe close failed", signal=signal, error=repr(e))
        self.probes.clear()
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None

    def __enter__(self) -> ProbeSet:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
