"""What agent-stats.json says the agent cost. Its peak RSS is its own: a process started
by a big parent reports the parent's peak in ``ru_maxrss`` (Linux keeps it across
exec), not in ``VmHWM``. Its garbage collections are counted and timed."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from llm_slo.agent import _GcPauses

CHILD = """
import json, resource
from llm_slo.agent import _peak_rss_kib
print(json.dumps([_peak_rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""


def test_peak_rss_is_not_inherited_from_the_parent() -> None:
    ballast = bytearray(300 << 20)  # 300 MiB, touched: resident in this process
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True).stdout
    hwm_kib, maxrss_kib = json.loads(out)
    del ballast
    assert maxrss_kib > 300 << 10  # the parent's, carried over exec
    assert 0 < hwm_kib < 150 << 10  # the child's own: an interpreter and the agent module


def test_gc_pauses_count_collections_and_their_time() -> None:
    """agent-stats.json's ``gc``: what the cyclic collector cost the agent."""
    pauses = _GcPauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect()
        gc.collect(0)
    finally:
        gc.callbacks.remove(pauses)
    assert pauses.collections[2] >= 1 and pauses.collections[0] >= 1
    assert pauses.pause_s[2] > 0.0
