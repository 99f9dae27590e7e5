"""BPF object lifecycle over libbpf: open -> size maps -> load -> attach -> read -> close.

One :class:`BpfObject` owns its programs, maps and links; ``close()`` is idempotent and
releases links before the object, so nothing stays attached after the agent exits.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import structlog

from llm_slo.bpf._ffi import ffi, lib, libc
from llm_slo.errors import AttachPointMissing, BtfError, PrivilegeError, ProbeError

log = structlog.get_logger("libbpf")

# The prebuilt CO-RE objects, and the BCC fallback sources under bcc/.
BPF_DIR = Path(os.environ.get("LLM_SLO_BPF_DIR", Path(__file__).resolve().parents[3] / "bpf"))

BPF_STATS_RUN_TIME = 0
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BPF_ANY = 0
_PROG_INFO_SIZE = 232  # struct bpf_prog_info in 5.x-6.x UAPI
_RUN_TIME_NS_OFF = 192
_RUN_CNT_OFF = 200
_RECURSION_MISSES_OFF = 208  # kernel 5.12+; older kernels leave our zeroes there
# struct bpf_map_info: type, id, key_size (8), value_size (12), max_entries (16), ...
_MAP_INFO_SIZE = 80
_LOG_BUF = 1 << 20
_log_buf: Any = None

# Set while one object loads, so verifier output ends up in the error we raise.
_load_log: list[str] | None = None


@ffi.callback("int(int, const char *, void *)")
def _print(level: int, fmt: Any, ap: Any) -> int:
    # One buffer for the process (the callback runs with the GIL held); sized for
    # verifier logs, which arrive as one message.
    global _log_buf
    if _log_buf is None:
        _log_buf = ffi.new("char[]", _LOG_BUF)
    buf = _log_buf
    libc.vsnprintf(buf, _LOG_BUF, fmt, ap)
    line = ffi.string(buf).decode(errors="replace").rstrip()
    if _load_log is not None and level <= 1:
        _load_log.extend(part for part in line.splitlines() if part.strip())
    if level == 0:
        log.warning(line)
    elif level == 1:
        log.debug(line)
    return 0


_print_installed = False


def _install_print() -> None:
    global _print_installed
    if not _print_installed:
        lib().libbpf_set_print(_print)
        _print_installed = True


def libbpf_version() -> str:
    """Version of the libbpf shared library in use, e.g. ``v1.1``."""
    return ffi.string(lib().libbpf_version_string()).decode()


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    n = lib().libbpf_num_possible_cpus()
    if n < 0:
        raise OSError(-n, os.strerror(-n))
    return int(n)


def _errno(rc: int | None = None) -> int:
    return -rc if rc is not None and rc < 0 else ffi.errno


def _fail(probe: str, what: str, err: int, detail: str = "") -> ProbeError:
    reason = f"failed to {what}: {os.strerror(err)} ({errno_mod.errorcode.get(err, err)})"
    if detail:
        reason += f"; {detail}"
    if err == errno_mod.EPERM:
        return PrivilegeError(
            f"probe {probe}: {reason}; run as root or grant CAP_BPF, CAP_PERFMON "
            "(and CAP_SYS_ADMIN on kernels before 5.8)"
        )
    if err == errno_mod.ENOENT:
        return AttachPointMissing(probe, reason)
    return ProbeError(probe, reason)


class Detachable(Protocol):
    def destroy(self) -> None: ...


class LinkOwner:
    """The attachments of one loaded object, in the order made (both loaders keep them so:
    a probe undoes a half-attached library, and closing detaches everything)."""

    def __init__(self) -> None:
        self._links: list[Detachable] = []

    @property
    def links(self) -> list[Detachable]:
        return list(self._links)

    def detach_since(self, n: int) -> None:
        """Destroy the links made after the first ``n`` (undo a partial attach)."""
        for link in self._links[n:]:
            link.destroy()
        del self._links[n:]

    def detach_all(self) -> None:
        """Destroy every link; the list is emptied even if one fails."""
        try:
            for link in self._links:
                link.destroy()
        finally:
            self._links.clear()


class Link:
    """An attachment; ``destroy()`` detaches it (idempotent)."""

    def __init__(self, ptr: Any, description: str) -> None:
        self._ptr = ptr
        self.description = description

    def destroy(self) -> None:
        """Detach now."""
        if self._ptr is not None:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class Program:
    """One BPF program of an object."""

    def __init__(self, owner: BpfObject, ptr: Any) -> None:
        self._owner = owner
        self._ptr = ptr
        self.name: str = ffi.string(lib().bpf_program__name(ptr)).decode()
        self.section: str = ffi.string(lib().bpf_program__section_name(ptr)).decode()

    @property
    def fd(self) -> int:
        return int(lib().bpf_program__fd(self._ptr))

    def set_autoload(self, autoload: bool) -> None:
        """Include or skip this program at load (call before ``load``)."""
        lib().bpf_program__set_autoload(self._ptr, autoload)

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self._ptr))

    def attach(self) -> Link:
        """Attach as the section name says (tp_btf/..., raw_tp/...)."""
        return self._owner._keep(lib().bpf_program__attach(self._ptr), self.section, self.name)

    def attach_uprobe(
        self, binary: str, symbol: str, *, retprobe: bool = False, pid: int = -1
    ) -> Link:
        """Attach to ``symbol`` in ``binary`` (all processes when ``pid`` is -1)."""
        opts = ffi.new("struct bpf_uprobe_opts *")
        opts.sz = ffi.sizeof("struct bpf_uprobe_opts")
        opts.retprobe = retprobe
        name = ffi.new("char[]", symbol.encode())
        opts.func_name = name
        ptr = lib().bpf_program__attach_uprobe_opts(self._ptr, pid, binary.encode(), 0, opts)
        kind = "uretprobe" if retprobe else "uprobe"
        return self._owner._keep(ptr, f"{kind}:{binary}:{symbol}", self.name)

    def attach_cgroup(self, cgroup_path: str) -> Link:
        """Attach to a cgroup-v2 directory through a BPF link (multi-attach safe)."""
        fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ptr = lib().bpf_program__attach_cgroup(self._ptr, fd)
            err = ffi.errno
        finally:
            os.close(fd)
        ffi.errno = err
        return self._owner._keep(ptr, f"{self.section}:{cgroup_path}", self.name)

    def stats(self) -> ProgStats:
        """The kernel's per-program statistics."""
        return prog_stats(self.fd)


def _obj_info(fd: int, size: int) -> bytes:
    """``bpf_obj_get_info_by_fd`` as raw bytes (the UAPI layouts are append-only)."""
    info = ffi.new("uint8_t[]", size)
    info_len = ffi.new("uint32_t *", size)
    rc = lib().bpf_obj_get_info_by_fd(fd, info, info_len)
    if rc:
        raise OSError(_errno(rc), os.strerror(_errno(rc)))
    return bytes(ffi.buffer(info))


class ProgStats(NamedTuple):
    """A program's statistics as the kernel keeps them (``struct bpf_prog_info``)."""

    run_time_ns: int  # 0 unless run-time statistics are on (see enable_run_time_stats)
    run_cnt: int
    # Runs the kernel skipped because the program was already running on that CPU: a
    # hook that fires in softirq or a timer (a connect ending, a retransmit) while the
    # program runs in task context there is not traced; what it would have recorded or
    # counted is lost. Kernel 5.12+; older kernels leave our zeroes.
    recursion_misses: int


def prog_stats(fd: int) -> ProgStats:
    """The statistics of the program behind ``fd``."""
    raw = _obj_info(fd, _PROG_INFO_SIZE)
    return ProgStats(*(int.from_bytes(raw[off : off + 8], "little")
                       for off in (_RUN_TIME_NS_OFF, _RUN_CNT_OFF, _RECURSION_MISSES_OFF)))


def held_prog_ids(pid: int) -> set[int]:
    """Ids of the BPF programs process ``pid`` holds, by program or link fd (its
    ``/proc`` fdinfo names them); empty if the process is gone."""
    ids: set[int] = set()
    with contextlib.suppress(OSError):
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            with contextlib.suppress(OSError):
                for line in info.read_text().splitlines():
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    return ids


def prog_run_time_ns(prog_ids: set[int]) -> dict[int, int]:
    """The kernel's accumulated run time of each program still loaded (stats must be
    on: ``kernel.bpf_stats_enabled`` or a holder of ``BPF_ENABLE_STATS``)."""
    out = {}
    for prog_id in prog_ids:
        fd = lib().bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue  # unloaded since
        try:
            out[prog_id] = prog_stats(fd).run_time_ns
        finally:
            os.close(fd)
    return out


class MapIO(ABC):
    """Element access through a loaded map's fd; subclasses say where fd and sizes come
    from (a libbpf object, or a bare fd from another loader)."""

    name: str = ""

    @property
    @abstractmethod
    def fd(self) -> int: ...

    @property
    @abstractmethod
    def key_size(self) -> int: ...

    @property
    @abstractmethod
    def value_size(self) -> int: ...

    def update(self, key: bytes, value: bytes) -> None:
        """Write one element."""
        rc = lib().bpf_map_update_elem(self.fd, key, value, BPF_ANY)
        if rc:
            raise OSError(_errno(rc), f"update map {self.name}: {os.strerror(_errno(rc))}")

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """One element's raw value, or None if absent."""
        size = value_size or self.value_size
        out = ffi.new("uint8_t[]", size)
        if lib().bpf_map_lookup_elem(self.fd, key, out):
            return None
        return bytes(ffi.buffer(out))

    def delete(self, key: bytes) -> bool:
        """Remove one element; False if it was already gone."""
        return lib().bpf_map_delete_elem(self.fd, key) == 0

    def read_all(
        self, key_dtype: np.dtype[Any], value_dtype: np.dtype[Any], ncpus: int = 0
    ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Every element in as few syscalls as the kernel allows (``bpf_map_lookup_batch``).

        Per-CPU maps: pass ``ncpus`` (possible CPUs); values come back shaped
        ``(n, ncpus)``. The value dtype must be 8-byte aligned for per-CPU maps, as the
        kernel rounds each CPU's slot up to 8 bytes.
        """
        chunk = 1024
        keys_out: list[np.ndarray[Any, Any]] = []
        vals_out: list[np.ndarray[Any, Any]] = []
        in_batch = ffi.NULL
        token = ffi.new("uint8_t[]", max(self.key_size, 8))
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        while True:
            keys = np.zeros(chunk, dtype=key_dtype)
            vals = np.zeros(chunk * max(ncpus, 1), dtype=value_dtype)
            count = ffi.new("uint32_t *", chunk)
            rc = lib().bpf_map_lookup_batch(
                self.fd, in_batch, token,
                ffi.from_buffer(keys), ffi.from_buffer(vals), count, opts,
            )
            err = _errno(rc) if rc else 0
            n = int(count[0])
            if err and err != errno_mod.ENOENT:
                raise OSError(err, f"read map {self.name}: {os.strerror(err)}")
            keys_out.append(keys[:n])
            v = vals[: n * max(ncpus, 1)]
            vals_out.append(v.reshape(n, ncpus) if ncpus else v)
            if err == errno_mod.ENOENT:
                break
            in_batch = token
        # np.concatenate would repack structured dtypes and drop their padding, breaking
        # the byte-exact keys that delete/lookup need; fill arrays of the exact dtypes.
        keys_all = np.zeros(sum(len(k) for k in keys_out), dtype=key_dtype)
        vals_all = np.zeros((len(keys_all), ncpus) if ncpus else len(keys_all), dtype=value_dtype)
        at = 0
        for k, v in zip(keys_out, vals_out, strict=True):
            keys_all[at : at + len(k)] = k
            vals_all[at : at + len(k)] = v
            at += len(k)
        return keys_all, vals_all


class Map(MapIO):
    """One map of a libbpf object; reads go straight to the kernel through its fd."""

    def __init__(self, ptr: Any) -> None:
        self._ptr = ptr
        self.name = ffi.string(lib().bpf_map__name(ptr)).decode()

    @property
    def fd(self) -> int:
        return int(lib().bpf_map__fd(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(lib().bpf_map__max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        """Resize before load (ring buffers: a power of two of pages)."""
        rc = lib().bpf_map__set_max_entries(self._ptr, n)
        if rc:
            raise OSError(_errno(rc), f"resize map {self.name}: {os.strerror(_errno(rc))}")

    @property
    def key_size(self) -> int:
        return int(lib().bpf_map__key_size(self._ptr))

    @property
    def value_size(self) -> int:
        return int(lib().bpf_map__value_size(self._ptr))


class FdMap(MapIO):
    """A map known only by its fd (e.g. one BCC created); sizes from the kernel's info."""

    def __init__(self, fd: int, name: str) -> None:
        raw = _obj_info(fd, _MAP_INFO_SIZE)
        self._fd = fd
        self.name = name
        self._key_size, self._value_size, self.max_entries = (
            int.from_bytes(raw[off : off + 4], "little") for off in (8, 12, 16))

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def key_size(self) -> int:
        return self._key_size

    @property
    def value_size(self) -> int:
        return self._value_size


class BpfObject(LinkOwner):
    """A compiled ``.bpf.o`` opened through libbpf, owning its links.

    ``probe`` names the signal in every error so an operator knows which probe failed.
    """

    def __init__(self, path: str, *, probe: str, btf_custom_path: str | None = None) -> None:
        super().__init__()
        _install_print()
        self.path = path
        self.probe = probe
        self._keepalive: list[Any] = []
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        if btf_custom_path:
            if not os.access(btf_custom_path, os.R_OK):
                raise BtfError(f"probe {probe}: BTF file {btf_custom_path} is missing or "
                               "unreadable")
            btf = ffi.new("char[]", btf_custom_path.encode())
            self._keepalive.append(btf)
            opts.btf_custom_path = btf
        if not os.path.exists(path):
            raise ProbeError(probe, f"BPF object {path} not found; run `make bpf`")
        self._obj = lib().bpf_object__open_file(path.encode(), opts)
        if self._obj == ffi.NULL:
            raise _fail(probe, f"open {path}", ffi.errno)
        self.programs: dict[str, Program] = {p.name: p for p in self._iter_programs()}
        self.maps: dict[str, Map] = {m.name: m for m in self._iter_maps()}
        self.loaded = False

    def _iter_programs(self) -> Iterator[Program]:
        prog = lib().bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            yield Program(self, prog)
            prog = lib().bpf_object__next_program(self._obj, prog)

    def _iter_maps(self) -> Iterator[Map]:
        m = lib().bpf_object__next_map(self._obj, ffi.NULL)
        while m != ffi.NULL:
            yield Map(m)
            m = lib().bpf_object__next_map(self._obj, m)

    def load(self) -> None:
        """Verify and load every program with autoload on; CO-RE relocates here."""
        global _load_log
        _load_log = []
        try:
            rc = lib().bpf_object__load(self._obj)
            err = _errno(rc)
            captured = _load_log
        finally:
            _load_log = None
        if rc:
            detail = " | ".join(captured[-4:])
            raise _fail(self.probe, f"load {os.path.basename(self.path)}", err, detail)
        self.loaded = True

    def _keep(self, ptr: Any, description: str, prog: str) -> Link:
        if ptr == ffi.NULL:
            raise _fail(self.probe, f"attach {prog} to {description}", ffi.errno)
        link = Link(ptr, description)
        self._links.append(link)
        return link

    def close(self) -> None:
        """Detach every link, then free the object (idempotent)."""
        self.detach_all()
        if self._obj is not None:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def enable_run_time_stats() -> int | None:
    """Turn on per-program run-time accounting; returns an fd to close, or None.

    Needs CAP_SYS_ADMIN; without it the counters stay 0 unless the node sets
    ``kernel.bpf_stats_enabled=1``.
    """
    fd = lib().bpf_enable_stats(BPF_STATS_RUN_TIME)
    return int(fd) if fd >= 0 else None


@functools.lru_cache(maxsize=256)
def kernel_btf_has(name: str, kind: int = BTF_KIND_TYPEDEF, btf_path: str | None = None) -> bool:
    """Whether the kernel BTF (or ``btf_path``) defines ``name`` of ``kind``.

    tp_btf programs attach to the typedef ``btf_trace_<tracepoint>``. Each question
    parses the BTF and frees it (~10 ms for vmlinux): kept, the parse stood beside the
    one libbpf makes while it loads each object, and was the agent's peak RSS.
    """
    btf = (lib().btf__parse(btf_path.encode(), ffi.NULL) if btf_path
           else lib().btf__load_vmlinux_btf())
    if btf == ffi.NULL:
        return False
    try:
        return int(lib().btf__find_by_name_kind(btf, name.encode(), kind)) > 0
    finally:
        lib().btf__free(btf)
