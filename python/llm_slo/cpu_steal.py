"""CPU steal from ``/proc/stat``: signal ``cpu_steal_pct``.

Steal is time a vCPU was runnable but the hypervisor ran something else. It needs no
BPF: the kernel already accounts it per CPU (the 8th value of each ``cpuN`` line), so
the signal is the steal share of all ticks between two reads of ``/proc/stat``.

The parsing and the arithmetic are pure functions; :class:`CpuStealReader` only adds
the file read and the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

SIGNAL = "cpu_steal_pct"

# Column order of a ``cpu`` line (proc(5)). Kernels before 2.6.11 stop before
# ``steal``; guest/guest_nice that follow are already counted in user/nice, so adding
# them to the total would count guest time twice.
_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# user..idle have existed since 2.4; anything shorter is not a cpu line at all.
_MIN_COLUMNS = 4


class CpuTimes(msgspec.Struct, frozen=True):
    """Cumulative tick counters of one ``cpu`` line; ``cpu == -1`` is the aggregate."""

    cpu: int
    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int

    def total(self) -> int:
        """All ticks the CPU accounted (guest time excluded: it is inside user/nice)."""
        return (
            self.user
            + self.nice
            + self.system
            + self.idle
            + self.iowait
            + self.irq
            + self.softirq
            + self.steal
        )


class CpuStealSample(msgspec.Struct, frozen=True, kw_only=True):
    """Steal share of one CPU (``cpu == -1``: the whole node) over one interval."""

    cpu: int
    steal_pct: float
    interval_s: float


def _parse_cpu_line(line: str, tokens: list[str]) -> CpuTimes:
    name = tokens[0]
    suffix = name[3:]
    if suffix and not suffix.isdigit():
        raise ValueError(f"bad cpu name in /proc/stat line: {line!r}")
    values = tokens[1:]
    if len(values) < _MIN_COLUMNS:
        raise ValueError(f"too few columns in /proc/stat line: {line!r}")
    try:
        ticks = [int(v) for v in values[: len(_FIELDS)]]
    except ValueError:
        raise ValueError(f"non-integer value in /proc/stat line: {line!r}") from None
    if any(t < 0 for t in ticks):
        raise ValueError(f"negative value in /proc/stat line: {line!r}")
    ticks += [0] * (len(_FIELDS) - len(ticks))
    return CpuTimes(int(suffix) if suffix else -1, *ticks)


def parse_proc_stat(text: str) -> list[CpuTimes]:
    """Parse the ``cpu`` lines of ``/proc/stat`` text, aggregate (``cpu=-1``) first.

    Columns a kernel does not report (``steal`` before 2.6.11) read as 0. Non-cpu lines
    (``intr``, ``ctxt``, ...) are skipped but must still start with a plain key, so a
    truncated or binary file is caught. Raises :class:`ValueError` naming the bad line.
    """
    out: list[CpuTimes] = []
    seen: set[int] = set()
    for line in text.splitlines():
        tokens = line.split()
        if not tokens:
            continue
        key = tokens[0]
        if not key.startswith("cpu"):
            if not (key.isascii() and key.replace("_", "").isalnum()):
                raise ValueError(f"unparsable /proc/stat line: {line!r}")
            continue
        times = _parse_cpu_line(line, tokens)
        if times.cpu in seen:
            raise ValueError(f"duplicate cpu in /proc/stat line: {line!r}")
        seen.add(times.cpu)
        out.append(times)
    if -1 not in seen:
        raise ValueError("no aggregate 'cpu' line in /proc/stat text")
    return sorted(out, key=lambda t: t.cpu)


def _steal_pct(prev: CpuTimes, cur: CpuTimes) -> float | None:
    deltas = {f: getattr(cur, f) - getattr(prev, f) for f in _FIELDS}
    # proc(5): iowait "may decrease" (it is estimated on tickless kernels), so a small
    # dip there is noise; clamp it. Any other counter going back means the CPU's
    # accounting restarted and the pair says nothing.
    deltas["iowait"] = max(deltas["iowait"], 0)
    if any(d < 0 for d in deltas.values()):
        return None
    total = sum(deltas.values())
    if total == 0:
        # Interval shorter than a tick: no measurement rather than a fake 0 %.
        return None
    return 100.0 * deltas["steal"] / total


def steal_between(
    prev: list[CpuTimes], cur: list[CpuTimes], interval_s: float
) -> list[CpuStealSample]:
    """Steal share of all ticks between two parses, per CPU and for the node (``-1``).

    A CPU present in only one of the two lists (hotplug) is skipped, as is one whose
    counters went backwards or that accounted no tick at all. Sorted by CPU, node first.
    """
    before = {t.cpu: t for t in prev}
    out: list[CpuStealSample] = []
    for now in sorted(cur, key=lambda t: t.cpu):
        then = before.get(now.cpu)
        if then is None:
            continue
        pct = _steal_pct(then, now)
        if pct is not None:
            out.append(CpuStealSample(cpu=now.cpu, steal_pct=pct, interval_s=interval_s))
    return out


class CpuStealReader:
    """Samples ``/proc/stat`` and reports steal since the previous call."""

    def __init__(
        self, path: str = "/proc/stat", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = path
        self._clock = clock
        self._prev: list[CpuTimes] | None = None
        self._prev_t = 0.0

    def sample(self) -> list[CpuStealSample]:
        """Read the file once; the first call only primes the baseline and returns ``[]``."""
        with open(self._path, encoding="ascii") as f:
            text = f.read()
        now = self._clock()
        cur = parse_proc_stat(text)
        prev, prev_t = self._prev, self._prev_t
        self._prev, self._prev_t = cur, now
        if prev is None:
            return []
        return steal_between(prev, cur, now - prev_t)
