"""Fixtures for kernel tests: open one probe for real, poll it until a record shows up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_slo.probes import Probe, ProbeOptions
from llm_slo.probes.base import BpfProbe

pytestmark = pytest.mark.kernel


@pytest.fixture
def open_probe() -> Iterator[Callable[..., Probe]]:
    """Open probe classes with options; every one is closed (detached) after the test."""
    opened: list[Probe] = []

    def _open(cls: type[Probe], **options: Any) -> Probe:
        probe = cls(ProbeOptions(**options))
        opened.append(probe)
        probe.open()
        mode = options.get("attach_mode")
        if mode and isinstance(probe, BpfProbe) and probe.obj is not None:
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


@pytest.fixture(params=["tp_btf", "raw_tp"])
def attach_mode(request: pytest.FixtureRequest) -> str:
    """Both flavours of the tracepoint programs: tp_btf, and the raw_tp twins used on
    kernels without BTF (forced here, since this kernel has BTF)."""
    return str(request.param)
