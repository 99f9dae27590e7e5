"""scripts/bench_agent_rss.py's arithmetic: what it reads of /proc and the growth it
reports, which must see a slow leak and not the retention filling up."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def rss(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("bench_agent_rss")  # it imports profile_lab_agent


def test_growth_is_measured_after_the_retention_has_filled(rss: ModuleType) -> None:
    # 10 minutes filling fast, then 50 minutes flat: no growth.
    filling = [(t * 10.0, 60_000 + t * 50) for t in range(60)]
    flat = [(600.0 + t * 10.0, 63_000) for t in range(300)]
    assert rss.growth_mib_per_hour(filling + flat) == pytest.approx(0.0, abs=1e-9)
    # A leak of 1 MiB an hour under sampling noise is seen as that.
    leak = [(t * 10.0, 70_000 + int(t * 10.0 * 1024 / 3600 + (7 if t % 2 else -7)))
            for t in range(360)]
    assert rss.growth_mib_per_hour(leak) == pytest.approx(1.0, rel=0.02)
    assert rss.growth_mib_per_hour(leak[:6]) is None  # too few to say


STATUS = """Name:\tpython
VmPeak:\t  120000 kB
VmHWM:\t   71404 kB
VmRSS:\t   70624 kB
RssAnon:\t   45932 kB
RssFile:\t   24648 kB
RssShmem:\t      44 kB
Threads:\t4
"""


def test_reads_the_memory_fields_of_a_live_process_only(rss: ModuleType,
                                                         tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)
    assert rss.read_status(status) == {"VmRSS": 70624, "RssAnon": 45932, "RssFile": 24648,
                                       "RssShmem": 44}
    # A zombie keeps its status file without memory fields: gone, as is a missing file.
    status.write_text("Name:\tpython\nState:\tZ (zombie)\nThreads:\t1\n")
    assert rss.read_status(status) is None
    assert rss.read_status(tmp_path / "missing") is None
    own = rss.read_status(Path(f"/proc/{os.getpid()}/status"))
    assert own is not None and own["VmRSS"] >= own["RssAnon"] > 0
    assert rss.start_time(os.getpid()) == rss.start_time(os.getpid()) is not None
    assert rss.start_time(2**22 + 1) is None  # above pid_max's ceiling: no such process
