"""BCC fallback loader, for kernels without BTF: the CO-RE objects cannot relocate there.

BCC compiles ``bpf/bcc/<name>.bcc.c`` at run time against the host's kernel headers,
loads it and attaches it; from then on its maps and rings are read by fd through our
own binding (:class:`FdMap`, :class:`~llm_slo.bpf.ringbuf.RingBuffer`), so records
decode exactly as the CO-RE objects' do. :class:`BccObject` offers the part of
:class:`~llm_slo.bpf.libbpf.BpfObject` the probes use (maps, programs, links).

BCC's Python module ships with the distribution (Debian: ``python3-bpfcc``) for the
system interpreter; when the agent's virtualenv lacks it, the distribution's directory
is appended to ``sys.path`` (appended: the virtualenv's own packages still win).
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from llm_slo.bpf.libbpf import BPF_DIR, FdMap, prog_run_stats
from llm_slo.errors import AttachPointMissing, ProbeError
from llm_slo.mounts import read_mounts

log = structlog.get_logger("bcc")

BCC_DIR = BPF_DIR / "bcc"
DIST_PACKAGES = ("/usr/lib/python3/dist-packages", "/usr/lib64/python3/site-packages",
                 f"/usr/lib/python3.{sys.version_info.minor}/site-packages")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_FIELD = re.compile(r"field:[^;]*?([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?;")


def import_bcc(probe: str) -> ModuleType:
    """BCC's Python module, from the virtualenv or the distribution's packages."""
    try:
        import bcc
    except ImportError:
        sys.path.extend(d for d in DIST_PACKAGES
                        if os.path.isdir(os.path.join(d, "bcc")) and d not in sys.path)
        try:
            import bcc
        except ImportError as e:
            raise ProbeError(probe, "the BCC fallback (for kernels without BTF) needs BCC's "
                             "Python module: apt install python3-bpfcc (Debian/Ubuntu) or "
                             f"python3-bcc (Fedora/RHEL) ({e})") from e
    return bcc


def tracefs_root() -> str | None:
    """Where tracefs is mounted (classic tracepoints need it), or None."""
    points = [m.point for m in read_mounts() if m.fstype == "tracefs"]
    for preferred in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if preferred in points:
            return preferred
    return points[0] if points else None


def tracepoint_fields(event: str) -> frozenset[str] | None:
    """Field names of tracepoint ``category/event`` from tracefs; None if it is absent."""
    root = tracefs_root()
    if root is None:
        return None
    try:
        text = Path(root, "events", event, "format").read_text()
    except OSError:
        return None
    return frozenset(m[1] for m in _FIELD.finditer(text) if not m[1].startswith("common_"))


def kernel_headers(configured: str | None, probe: str) -> str | None:
    """The header tree to compile against: ``configured``, ``$BCC_KERNEL_SOURCE``, or
    None when BCC finds this kernel's own (``/lib/modules/<release>/build``, or the
    in-kernel ``/sys/kernel/kheaders.tar.xz``); an error naming the fix otherwise."""
    tree = configured or os.environ.get("BCC_KERNEL_SOURCE")
    if tree:
        if not os.path.isfile(os.path.join(tree, "include", "linux", "kconfig.h")):
            raise ProbeError(probe, f"kernel headers {tree}: no include/linux/kconfig.h (a "
                             "header tree for BCC has include/ and arch/<arch>/include/, "
                             "generated headers included)")
        return tree
    release = platform.release()
    build = f"/lib/modules/{release}/build/include/linux/kconfig.h"
    if os.path.isfile(build) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return None
    raise ProbeError(probe, f"no kernel headers for {release}, which the BCC fallback "
                     "compiles against: install them (Debian/Ubuntu: linux-headers-"
                     f"{release}), load the kheaders module, or set probes.kernel_headers")


def _inline_common(source: Path) -> bytes:
    """The source with ``common.bcc.h`` pasted in: BCC rewrites map calls (``m.lookup``)
    only in the main file, so helpers that touch maps cannot live in a header."""
    common = (BCC_DIR / "common.bcc.h").read_bytes()
    text = source.read_bytes()
    include = b'#include "common.bcc.h"\n'
    if include not in text:
        raise ValueError(f"{source} does not include common.bcc.h")
    return text.replace(include, common, 1)


class BccLink:
    """One BCC attachment; ``destroy()`` detaches it (idempotent)."""

    def __init__(self, description: str, detach: Callable[[], Any]) -> None:
        self.description = description
        self._detach: Callable[[], Any] | None = detach

    def destroy(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None


class BccProgram:
    """One function of a BCC module. Tracepoint functions (``tracepoint__*``) are loaded
    and attached by BCC with the module; uprobe functions load on first attach."""

    def __init__(self, owner: BccObject, name: str) -> None:
        self._owner = owner
        self.name = name
        tp = name.removeprefix("tracepoint__")
        self.section = ("tracepoint/" + tp.replace("__", "/", 1)) if tp != name else "uprobe"

    @property
    def autoload(self) -> bool:
        """Whether it is loaded (the probes' run-time statistics ask only those)."""
        return self.name.encode() in self._owner.bpf.funcs

    def attach(self) -> None:
        """Tracepoints are attached at load by BCC: nothing left to do."""

    def attach_uprobe(self, binary: str, symbol: str, *, retprobe: bool = False) -> BccLink:
        b = self._owner.bpf
        kind = "uretprobe" if retprobe else "uprobe"
        attach, detach = ((b.attach_uretprobe, b.detach_uretprobe) if retprobe
                          else (b.attach_uprobe, b.detach_uprobe))
        try:
            attach(name=binary.encode(), sym=symbol.encode(), fn_name=self.name.encode())
        except Exception as e:  # BCC raises bare Exception/ValueError for every failure
            raise AttachPointMissing(self._owner.probe, f"attach {self.name} to "
                                     f"{kind}:{binary}:{symbol}: {e}") from e
        return self._owner._keep(BccLink(f"{kind}:{binary}:{symbol}",
                                         lambda: detach(name=binary.encode(),
                                                        sym=symbol.encode())))

    def attach_cgroup(self, cgroup_path: str) -> BccLink:
        raise AttachPointMissing(self._owner.probe, "cgroup programs are not part of the BCC "
                                 "fallback")

    def run_stats(self) -> tuple[int, int]:
        return prog_run_stats(self._owner.bpf.funcs[self.name.encode()].fd)


class _BccMaps:
    """``obj.maps[name]``: a BCC table as an :class:`FdMap`, looked up when asked."""

    def __init__(self, owner: BccObject) -> None:
        self._owner = owner
        self._cache: dict[str, FdMap] = {}

    def _fd(self, name: str) -> int:
        return int(self._owner.bcc.libbcc.lib.bpf_table_fd(self._owner.bpf.module,
                                                            name.encode()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._cache or self._fd(name) >= 0)

    def __getitem__(self, name: str) -> FdMap:
        if name not in self._cache:
            fd = self._fd(name)
            if fd < 0:
                raise KeyError(name)
            self._cache[name] = FdMap(fd, name)
        return self._cache[name]


class BccObject:
    """``bpf/bcc/<name>.bcc.c`` compiled and loaded by BCC for one probe.

    ``tracepoints`` ("category/event") must exist, else :class:`AttachPointMissing`;
    ``features`` maps a macro to a tracepoint (or "category/event:field") whose presence
    it tells the source (1 or 0), for hooks that newer kernels add.
    """

    def __init__(self, name: str, *, probe: str, ring_bytes: int,
                 headers: str | None = None, tracepoints: tuple[str, ...] = (),
                 features: dict[str, str] | None = None) -> None:
        self.probe = probe
        self._links: list[BccLink] = []
        self.bcc = import_bcc(probe)
        source = BCC_DIR / f"{name}.bcc.c"
        if not source.is_file():
            raise ProbeError(probe, f"BCC source {source} not found")
        if tracepoints and tracefs_root() is None:
            raise AttachPointMissing(probe, "the BCC fallback attaches classic tracepoints, "
                                     "which need tracefs: mount -t tracefs nodev "
                                     "/sys/kernel/tracing")
        missing = [tp for tp in tracepoints if tracepoint_fields(tp) is None]
        if missing:
            raise AttachPointMissing(probe, f"tracepoint(s) {', '.join(missing)} not in "
                                     "this kernel")
        tree = kernel_headers(headers, probe)
        pages = max(1, ring_bytes // PAGE_SIZE)
        cflags = [f"-I{BPF_DIR}", f"-I{BCC_DIR}", f"-DRINGBUF_PAGES={pages}"]
        for macro, where in (features or {}).items():
            event, _, field = where.partition(":")
            fields = tracepoint_fields(event)
            cflags.append(f"-D{macro}={int(fields is not None and (not field or field in fields))}")
        self.bpf = self._compile(_inline_common(source), source.name, cflags, tree)
        lib = self.bcc.libbcc.lib
        names = [lib.bpf_function_name(self.bpf.module, i).decode()
                 for i in range(lib.bpf_num_functions(self.bpf.module))]
        self.programs = {n: BccProgram(self, n) for n in names}
        self.maps = _BccMaps(self)

    def _compile(self, text: bytes, name: str, cflags: list[str], tree: str | None) -> Any:
        # clang's diagnostics go to stderr, as with any BCC tool: LLVM exits the process
        # on a backend error, so capturing them would lose exactly those.
        saved = os.environ.get("BCC_KERNEL_SOURCE")
        if tree:
            os.environ["BCC_KERNEL_SOURCE"] = tree
        try:
            return self.bcc.BPF(text=text, cflags=cflags)
        except Exception as e:
            raise ProbeError(self.probe, f"BCC could not compile or load {name}: {e} "
                             "(BCC's diagnostics are on stderr)") from e
        finally:
            if tree:
                if saved is None:
                    os.environ.pop("BCC_KERNEL_SOURCE", None)
                else:
                    os.environ["BCC_KERNEL_SOURCE"] = saved

    def _keep(self, link: BccLink) -> BccLink:
        self._links.append(link)
        return link

    @property
    def links(self) -> list[BccLink]:
        return list(self._links)

    def detach_since(self, n: int) -> None:
        """Destroy the links made after the first ``n`` (undo a partial attach)."""
        for link in self._links[n:]:
            link.destroy()
        del self._links[n:]

    def close(self) -> None:
        """Detach everything and free the module (idempotent)."""
        for link in self._links:
            link.destroy()
        self._links.clear()
        if getattr(self, "bpf", None) is not None:
            self.bpf.cleanup()
            self.bpf = None
