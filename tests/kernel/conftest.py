"""Fixtures for kernel tests: open one probe for real, poll it until a record shows up."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_slo import mounts
from llm_slo.bpf.bcc import BccObject, tracefs_root
from llm_slo.lab.cgroups import cgroup2_mount
from llm_slo.lab.topology import V1_CONTROLLERS
from llm_slo.prereq import Host
from llm_slo.probes import Probe, ProbeOptions
from llm_slo.probes.base import BpfProbe

pytestmark = pytest.mark.kernel


@pytest.fixture
def open_probe(request: pytest.FixtureRequest) -> Iterator[Callable[..., Probe]]:
    """Open probe classes with options; every one is closed (detached) after the test.
    ``attach_mode="bcc"`` compiles the BCC fallback (see :func:`bcc_headers`)."""
    opened: list[Probe] = []

    def _open(cls: type[Probe], **options: Any) -> Probe:
        if options.get("attach_mode") == "bcc":
            options.setdefault("kernel_headers", request.getfixturevalue("bcc_headers"))
        probe = cls(ProbeOptions(**options))
        opened.append(probe)
        probe.open()
        mode = options.get("attach_mode")
        if mode == "bcc":
            assert isinstance(probe, BpfProbe) and isinstance(probe.obj, BccObject)
        elif mode in ("tp_btf", "raw_tp") and isinstance(probe, BpfProbe) and probe.tracepoints:
            assert probe.obj is not None
            loaded = {p.section.split("/")[0] for p in probe.obj.programs.values()
                      if p.autoload and p.section.startswith(("tp_btf/", "raw_tp/"))}
            assert loaded == {mode}, f"{cls.__name__} loaded {loaded}, wanted {mode}"
        return probe

    yield _open
    for probe in opened:
        probe.close()


def poll_until(probe: Probe, until: Callable[[Any], bool], timeout: float = 8.0,
               interval: float = 0.1) -> list[Any]:
    """Poll ``probe`` until a record satisfies ``until`` (or time runs out); all records."""
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = probe.poll(time.monotonic_ns())
        records.extend(batch)
        if any(until(r) for r in batch):
            return records
        time.sleep(interval)
    return records


@pytest.fixture
def collect() -> Callable[..., list[Any]]:
    """:func:`poll_until` as a fixture."""
    return poll_until


@pytest.fixture(params=["tp_btf", "raw_tp", "bcc"])
def attach_mode(request: pytest.FixtureRequest) -> str:
    """Every way the tracepoint programs load: tp_btf; the raw_tp twins (kernels without
    BTF, given a BTF file); the BCC fallback (kernels without BTF). This kernel has BTF,
    so the last two are forced."""
    return str(request.param)


@pytest.fixture(params=["core", "bcc"])
def uprobe_loader(request: pytest.FixtureRequest) -> str:
    """The uprobe probes' loaders, as an ``attach_mode``: the CO-RE object, or BCC."""
    return "auto" if request.param == "core" else "bcc"


@pytest.fixture(scope="session")
def bcc_headers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A kernel header tree for the BCC fallback, and tracefs for its tracepoints.

    None when the running kernel's own headers are installed (BCC finds them). Else the
    distribution's headers of any version, since the fallback dereferences no kernel
    struct (bpf/bcc/common.bcc.h): Debian splits them into ``linux-headers-<v>-<arch>``
    (generated) and ``linux-headers-<v>-common``, merged here by symlinks. tracefs is
    mounted if it is not, and unmounted again at the end. Missing packages skip, which
    the root conftest turns into a failure when kernel tests are required.
    """
    if not Host().bcc_module():
        pytest.skip("BCC fallback: BCC's Python module is not installed (python3-bpfcc)")
    mounted = tracefs_root() is None
    if mounted:
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    try:
        yield _header_tree(tmp_path_factory.mktemp("kernel-headers"))
    finally:
        if mounted:
            subprocess.run(["umount", "/sys/kernel/tracing"], check=False)


def _header_tree(root: Path) -> str | None:
    if os.path.isfile(f"/lib/modules/{os.uname().release}/build/include/linux/kconfig.h"):
        return None
    arch = {"x86_64": ("amd64", "x86"), "aarch64": ("arm64", "arm64")}.get(os.uname().machine)
    if arch is None:
        pytest.skip(f"BCC fallback: no Debian header layout known for {os.uname().machine}")
    builds = sorted(glob.glob(f"/usr/src/linux-headers-*-{arch[0]}"), key=_version_key)
    if not builds:
        pytest.skip("BCC fallback: no kernel headers (apt install linux-headers-amd64)")
    build = Path(builds[-1])
    common = Path(str(build).removesuffix(arch[0]) + "common")
    for sub in ("include", f"arch/{arch[1]}/include"):
        (root / sub).mkdir(parents=True)
        for src in (common / sub, build / sub):  # the build's generated dirs win
            for entry in src.iterdir():
                link = root / sub / entry.name
                if not link.exists():
                    link.symlink_to(entry)
    return str(root)


def _version_key(path: str) -> list[int | str]:
    """Numbers compared as numbers: 6.1.0-10 is newer than 6.1.0-9."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path)]


def _lab_leftovers() -> list[str]:
    """Whatever a lab run made that is still there: namespaces and their /etc/netns
    files, nftables tables, cgroups in the v2 tree and every v1 hierarchy, processes."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    roots = [cgroup2_mount()] + [Path(p) for c in V1_CONTROLLERS
                                 if (p := mounts.cgroup1_mount(c))]
    procs = subprocess.run(["pgrep", "-af", "llm_slo.lab.|llm_slo.cli agent"],
                           capture_output=True, text=True).stdout
    return ([ln for ln in out.splitlines() if ln.startswith("llm-slo-lab")]
            + [str(p) for p in Path("/etc/netns").glob("llm-slo-lab*")]
            + [ln for ln in tables.splitlines() if "llm-slo-lab" in ln]
            + [str(p) for root in roots for p in root.glob("llm-slo-lab*")]
            + [ln for ln in procs.splitlines() if "pgrep" not in ln])


@pytest.fixture
def lab_leftovers() -> Callable[[], list[str]]:
    """:func:`_lab_leftovers` as a fixture: what lab runs left on this host."""
    return _lab_leftovers
