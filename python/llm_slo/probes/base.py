"""The probe interface: options, attach points, and the BPF-backed base class.

A probe owns one BPF object (or a /proc reader) for one signal. Inside a probe, an
optional hook that is missing (e.g. getaddrinfo in a libc we cannot find) is a *gap*:
reported, not fatal.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import structlog

from llm_slo import decode
from llm_slo.bpf.bcc import BccObject, tracepoint_fields
from llm_slo.bpf.libbpf import (
    BPF_DIR,
    BTF_KIND_TYPEDEF,
    BpfObject,
    kernel_btf_has,
    possible_cpus,
)
from llm_slo.bpf.ringbuf import RingBuffer
from llm_slo.errors import AttachPointMissing

log = structlog.get_logger("probes")

KERNEL_BTF = "/sys/kernel/btf/vmlinux"
# What a probe loads: a CO-RE object through libbpf, or the BCC fallback's module.
LoadedObject = BpfObject | BccObject


# Written into the programs' settings structs: u32 counts, u64 nanoseconds.
_U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
_Ms = Annotated[float, msgspec.Meta(ge=0, le=1e12)]  # as ns, within a u64


class ProbeOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Tunables shared by the probes; defaults suit a busy node."""

    ringbuf_bytes: int = 256 * 1024
    dns_slow_ms: _Ms = 20.0
    dns_sample_every: _U32 = 0
    # Per cgroup and layer: a resolver slow for everyone makes every answer worth
    # streaming; the histograms count them all, failures always stream. 0 = no limit.
    dns_max_slow_per_sec: _U32 = 50
    dns_timeout_s: float = 5.0
    runq_slow_ms: _Ms = 10.0
    runq_max_events_per_sec: _U32 = 20
    connect_slow_ms: _Ms = 100.0
    tls_slow_ms: _Ms = 100.0
    reclaim_slow_ms: _Ms = 1.0
    btf_path: str | None = None
    # "auto": tp_btf when the kernel has BTF; without it the raw_tp twins when btf_path
    # gives CO-RE a BTF file, else the BCC fallback (compiled here against the kernel's
    # headers). "tp_btf", "raw_tp" or "bcc" force one.
    attach_mode: Literal["auto", "tp_btf", "raw_tp", "bcc"] = "auto"
    # BCC fallback: the kernel header tree to compile against; default: the running
    # kernel's (/lib/modules/<release>/build, or the kheaders module).
    kernel_headers: str | None = None


class AttachPoint(msgspec.Struct, frozen=True):
    """A hook a probe needs, and whether this host has it."""

    probe: str
    kind: str  # tp_btf | raw_tp | tracepoint (BCC) | cgroup | uprobe | procfs
    target: str
    present: bool
    required: bool


def _ms(v: float) -> int:
    # At least 1 ns: the BCC programs read 0 as "settings not written yet".
    return max(1, int(v * 1_000_000))


class Probe:
    """Base: a named signal that yields records each poll."""

    signal: str = ""

    def __init__(self, options: ProbeOptions) -> None:
        self.options = options
        self.gaps: list[str] = []

    def attach_points(self) -> list[AttachPoint]:
        """What this probe hooks, checked against this host."""
        return []

    def open(self) -> None:
        """Load and attach; raises ProbeError with the reason."""

    def poll(self, now_ns: int) -> list[Any]:
        """Records since the last poll."""
        return []

    def counters(self) -> dict[str, int]:
        """Health counters: records dropped, rate-limited, map-full, bad, and hook hits
        the kernel skipped (a program already running on that CPU)."""
        return {}

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """Per BPF program: (run_time_ns, run_cnt)."""
        return {}

    def close(self) -> None:
        """Detach and free (idempotent)."""


class BpfProbe(Probe):
    """A probe backed by ``bpf/<object_name>.bpf.o``, or by the BCC fallback's
    ``bpf/bcc/<object_name>.bcc.c`` on kernels without BTF."""

    object_name: str = ""
    tracepoints: tuple[str, ...] = ()  # tp_btf targets; each must be in kernel BTF
    # The BCC fallback's classic tracepoints ("category/event"), each required, and the
    # optional ones it compiles in when present (macro -> "category/event[:field]").
    bcc_tracepoints: tuple[str, ...] = ()
    bcc_features: dict[str, str] = {}  # noqa: RUF012 - class-level table
    rings: dict[str, np.dtype[Any]] = {}  # noqa: RUF012 - class-level table
    bcc_rings: tuple[str, ...] | None = None  # the rings the BCC source has; None: all

    def __init__(self, options: ProbeOptions) -> None:
        super().__init__(options)
        self.obj: LoadedObject | None = None
        self.ring_readers: dict[str, RingBuffer] = {}
        self.stats = decode.DecodeStats()

    def attach_points(self) -> list[AttachPoint]:
        if self.uses_bcc():
            # Classic tracepoints: tracefs says which exist (uprobes are the subclass's).
            return [AttachPoint(self.signal, "tracepoint", tp,
                                tracepoint_fields(tp) is not None, True)
                    for tp in self.bcc_tracepoints]
        if not os.path.exists(KERNEL_BTF):
            # raw_tp needs no BTF, and without BTF (or tracefs) there is nothing to ask.
            return [AttachPoint(self.signal, "raw_tp", f"{tp} (unverified)", True, True)
                    for tp in self.tracepoints]
        return [
            AttachPoint(self.signal, "tp_btf", tp,
                        kernel_btf_has(f"btf_trace_{tp}", BTF_KIND_TYPEDEF), True)
            for tp in self.tracepoints
        ]

    def uses_bcc(self) -> bool:
        """The BCC fallback: forced, or no kernel BTF and no BTF file for CO-RE."""
        mode = self.options.attach_mode
        return mode == "bcc" or (mode == "auto" and not os.path.exists(KERNEL_BTF)
                                 and not self.options.btf_path)

    def flavour(self) -> str:
        """What to load: "bcc" (the fallback), or the CO-RE object with its "tp_btf" or
        "raw_tp" twins of the tracepoint programs ("" when it has none)."""
        mode = self.options.attach_mode
        kernel_btf = os.path.exists(KERNEL_BTF)
        if self.uses_bcc():
            return "bcc"
        if not self.tracepoints:
            return ""
        if mode == "raw_tp" or (mode == "auto" and not kernel_btf):
            return "raw_tp"
        if not kernel_btf:
            raise AttachPointMissing(self.signal, f"tp_btf needs kernel BTF ({KERNEL_BTF}); "
                                     "use the raw_tp attach mode with a BTF file")
        missing = [a.target for a in self.attach_points() if not a.present]
        if missing:
            raise AttachPointMissing(
                self.signal, f"tracepoint(s) {', '.join(missing)} not in kernel BTF"
            )
        return "tp_btf"

    def open(self) -> None:
        flavour = self.flavour()
        if flavour == "bcc":
            self.obj = BccObject(self.object_name, probe=self.signal,
                                 ring_bytes=self.options.ringbuf_bytes,
                                 headers=self.options.kernel_headers,
                                 tracepoints=self.bcc_tracepoints, features=self.bcc_features)
        else:
            self.obj = self._load_core(flavour)
        log.debug("loaded", signal=self.signal, flavour=flavour or "core")
        self.configure(self.obj)
        self.attach(self.obj)
        self.ring_readers = {
            name: RingBuffer(self.obj.maps[name].fd, self.obj.maps[name].max_entries, dtype)
            for name, dtype in self.rings.items()
            if flavour != "bcc" or self.bcc_rings is None or name in self.bcc_rings
        }

    def _load_core(self, flavour: str) -> BpfObject:
        obj = BpfObject(
            str(BPF_DIR / f"{self.object_name}.bpf.o"),
            probe=self.signal,
            btf_custom_path=self.options.btf_path,
        )
        self.obj = obj  # closed by close() if loading fails
        for prog in obj.programs.values():
            kind = prog.section.split("/", 1)[0]
            if kind in ("tp_btf", "raw_tp"):
                prog.set_autoload(kind == flavour)
        for name in self.rings:
            obj.maps[name].set_max_entries(self.options.ringbuf_bytes)
        obj.load()
        return obj

    def configure(self, obj: LoadedObject) -> None:
        """Write the ``settings`` map after load, before attach."""

    def attach(self, obj: LoadedObject) -> None:
        for prog in obj.programs.values():
            if prog.autoload:
                prog.attach()

    def drain(self, ring: str) -> Any:
        return self.ring_readers[ring].drain()

    def counters(self) -> dict[str, int]:
        if self.obj is None:
            return {}
        ncpus = possible_cpus()
        cmap = self.obj.maps["counters"]
        out = {}
        for idx, name in enumerate(("ringbuf_dropped", "rate_limited", "map_full")):
            v = cmap.lookup(idx.to_bytes(4, "little"), 8 * ncpus)
            out[name] = int(np.frombuffer(v, dtype="<u8").sum()) if v else 0
        out["bad_records"] = sum(self.stats.bad_records.values()) + sum(
            r.bad_records for r in self.ring_readers.values()
        )
        out["recursion_missed"] = sum(p.stats().recursion_misses
                                      for p in self.obj.programs.values() if p.autoload)
        return out

    def run_stats(self) -> dict[str, tuple[int, int]]:
        if self.obj is None:
            return {}
        out = {}
        for p in self.obj.programs.values():
            if p.autoload:
                st = p.stats()
                out[p.name] = (st.run_time_ns, st.run_cnt)
        return out

    def close(self) -> None:
        for r in self.ring_readers.values():
            r.close()
        self.ring_readers.clear()
        if self.obj is not None:
            self.obj.close()
            self.obj = None
