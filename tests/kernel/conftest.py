"""Fixtures for kernel tests: open one probe for real, poll it until a record shows up."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_slo.probes import Probe, ProbeOptions

pytestmark = pytest.mark.kernel


@pytest.fixture
def open_probe() -> Iterator[Callable[..., Probe]]:
    """Open probe classes with options; every one is closed (detached) after the test."""
    opened: list[Probe] = []

    def _open(cls: type[Probe], **options: Any) -> Probe:
        probe = cls(ProbeOptions(**options))
        opened.append(probe)
        probe.open()
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
