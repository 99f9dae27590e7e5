"""BCC fallback loader, for kernels without BTF: the CO-RE objects cannot relocate there.

BCC compiles ``bpf/bcc/<name>.bcc.c`` at run time against the host's kernel headers,
loads it and attaches it; from then on its maps and rings are read by fd through our
own binding (:class:`FdMap`, :class:`~llm_slo.bpf.ringbuf.RingBuffer`), so records
decode exactly as the CO-RE objects' do. :class:`BccObject` offers the part of
:class:`~llm_slo.bpf.libbpf.BpfObject` the probes use (maps, programs, links).

BCC's Python module ships with the distribution (Debian: ``python3-bpfcc``) for the
system interpreter; when the agent's virtualenv lacks it, it is imported from the
distribution's directory, which is on ``sys.path`` only for that import.
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

from llm_slo.bpf.libbpf import BPF_DIR, FdMap, LinkOwner, ProgStats, prog_stats
from llm_slo.errors import AttachPointMissing, ProbeError
from llm_slo.mounts import read_mounts

log = structlog.get_logger("bcc")

BCC_DIR = BPF_DIR / "bcc"
DIST_PACKAGES = ("/usr/lib/python3/dist-packages", "/usr/lib64/python3/site-packages",
                 f"/usr/lib/python3.{sys.version_info.minor}/site-packages")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
KHEADERS = "/sys/kernel/kheaders.tar.xz"  # CONFIG_IKHEADERS: BCC unpacks it under /tmp
_FIELD = re.compile(r"field:[^;]*?([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?;")


def import_bcc(probe: str) -> ModuleType:
    """BCC's Python module, from the virtualenv or the distribution's packages."""
    try:
        import bcc
    except ImportError:
        saved = list(sys.path)
        sys.path.extend(d for d in DIST_PACKAGES if os.path.isdir(os.path.join(d, "bcc")))
        try:
            import bcc
        except (ImportError, OSError) as e:  # OSError: the package without libbcc.so
            raise ProbeError(probe, "the BCC fallback (for kernels without BTF) needs BCC: "
                             "apt install python3-bpfcc (Debian/Ubuntu) or python3-bcc "
                             f"(Fedora/RHEL) ({e})") from e
        finally:
            sys.path[:] = saved  # BCC's submodules resolve through its package path
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


def find_kernel_headers(configured: str | None = None) -> str | None:
    """Where BCC will find kernel headers: ``configured``, ``$BCC_KERNEL_SOURCE``, this
    kernel's ``/lib/modules/<release>/build``, or the kheaders module; None if nowhere."""
    tree = configured or os.environ.get("BCC_KERNEL_SOURCE")
    if tree:
        return tree
    build = f"/lib/modules/{platform.release()}/build"
    if os.path.isfile(f"{build}/include/linux/kconfig.h"):
        return build
    return KHEADERS if os.path.exists(KHEADERS) else None


def kernel_headers(configured: str | None, probe: str) -> str | None:
    """The tree to point ``BCC_KERNEL_SOURCE`` at, or None when BCC finds this kernel's
    own; an error naming the fix when there are none."""
    tree = find_kernel_headers(configured)
    if tree is None:
        release = platform.release()
        raise ProbeError(probe, f"no kernel headers for {release}, which the BCC fallback "
                         "compiles against: install them (Debian/Ubuntu: linux-headers-"
                         f"{release}), load the kheaders module, or set "
                         "probes.kernel_headers")
    if tree == KHEADERS or tree.startswith("/lib/modules/"):
        return None
    if not os.path.isfile(os.path.join(tree, "include", "linux", "kconfig.h")):
        raise ProbeError(probe, f"kernel headers {tree}: no include/linux/kconfig.h (a "
                         "header tree for BCC has include/ and arch/<arch>/include/, "
                         "generated headers included)")
    return tree


def ring_pages(ring_bytes: int) -> int:
    """Pages for a ring of at least ``ring_bytes``: a power of two, as libbpf rounds."""
    pages = max(1, -(-ring_bytes // PAGE_SIZE))
    return 1 << (pages - 1).bit_length()


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
            detach, self._detach = self._detach, None
            detach()


class BccProgram:
    """One function of a BCC module. Tracepoint functions (``tracepoint__*``) are loaded
    and attached by BCC with the module; uprobe functions load on first attach."""

    def __init__(self, owner: BccObject, name: str) -> None:
        self._owner = owner
        self.name = name

    @property
    def autoload(self) -> bool:
        """Whether it is loaded (``BpfObject``'s name; run-time statistics ask it)."""
        return self.name.encode() in self._owner.bpf.funcs

    def attach(self) -> None:
        """Tracepoints are attached at load by BCC: nothing left to do."""

    def attach_uprobe(self, binary: str, symbol: str, *, retprobe: bool = False) -> BccLink:
        b = self._owner.bpf
        kind = "uretprobe" if retprobe else "uprobe"
        attach = b.attach_uretprobe if retprobe else b.attach_uprobe
        before = set(b.uprobe_fds)
        try:
            attach(name=binary.encode(), sym=symbol.encode(), fn_name=self.name.encode())
        except Exception as e:  # BCC raises bare Exception/ValueError for every failure
            raise AttachPointMissing(self._owner.probe, f"attach {self.name} to "
                                     f"{kind}:{binary}:{symbol}: {e}") from e
        # Detached by event name: BCC's detach_uprobe would look the symbol up again in
        # the file, which is gone once the container that held it has exited.
        events = [ev for ev in b.uprobe_fds if ev not in before]

        def detach() -> None:
            for ev in events:
                if ev in b.uprobe_fds:
                    b.detach_uprobe_event(ev)

        return self._owner._keep(BccLink(f"{kind}:{binary}:{symbol}", detach))

    def stats(self) -> ProgStats:
        return prog_stats(self._owner.bpf.funcs[self.name.encode()].fd)


class _BccMaps:
    """``obj.maps[name]``: a BCC table as an :class:`FdMap`, looked up when asked."""

    def __init__(self, owner: BccObject) -> None:
        self._owner = owner
        self._cache: dict[str, FdMap] = {}

    def _fd(self, name: str) -> int:
        return int(self._owner.bcc.libbcc.lib.bpf_table_fd(self._owner.bpf.module,
                                                            name.encode()))

    def __getitem__(self, name: str) -> FdMap:
        if name not in self._cache:
            fd = self._fd(name)
            if fd < 0:
                raise KeyError(name)
            self._cache[name] = FdMap(fd, name)
        return self._cache[name]


class BccObject(LinkOwner):
    """``bpf/bcc/<name>.bcc.c`` compiled and loaded by BCC for one probe.

    ``tracepoints`` ("category/event") must exist, else :class:`AttachPointMissing`;
    ``features`` maps a macro to a tracepoint (or "category/event:field") whose presence
    it tells the source (1 or 0), for hooks that newer kernels add.
    """

    def __init__(self, name: str, *, probe: str, ring_bytes: int,
                 headers: str | None = None, tracepoints: tuple[str, ...] = (),
                 features: dict[str, str] | None = None) -> None:
        self.probe = probe
        super().__init__()
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
        cflags = [f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={ring_pages(ring_bytes)}"]
        for macro, where in (features or {}).items():
            event, _, field = where.partition(":")
            fields = tracepoint_fields(event)
            cflags.append(f"-D{macro}={int(fields is not None and (not field or field in fields))}")
        self.bpf = self._compile(_inline_common(source), source.name, cflags, tree)
        try:
            lib = self.bcc.libbcc.lib
            names = [lib.bpf_function_name(self.bpf.module, i).decode()
                     for i in range(lib.bpf_num_functions(self.bpf.module))]
        except Exception:
            self.close()
            raise
        self.programs = {n: BccProgram(self, n) for n in names}
        self.maps = _BccMaps(self)

    def _compile(self, text: bytes, name: str, cflags: list[str], tree: str | None) -> Any:
        # clang's diagnostics go to stderr, as with any BCC tool: LLVM exits the process
        # on a backend error, so capturing them would lose exactly those.
        saved = os.environ.get("BCC_KERNEL_SOURCE")
        if tree:
            os.environ["BCC_KERNEL_SOURCE"] = tree
        # BCC attaches each tracepoint function as it loads it; if a later one fails,
        # those already attached must not stay behind (BCC keeps the half-built object
        # alive until exit), hence construction in two steps.
        bpf = self.bcc.BPF.__new__(self.bcc.BPF)
        try:
            bpf.__init__(text=text, cflags=cflags)
            return bpf
        except Exception as e:
            if getattr(bpf, "module", None) is not None:
                bpf.cleanup()
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

    def close(self) -> None:
        """Detach everything and free the module (idempotent)."""
        try:
            self.detach_all()
        finally:
            if getattr(self, "bpf", None) is not None:
                bpf, self.bpf = self.bpf, None
                bpf.cleanup()
