"""The agent's peak RSS comes at start-up, while libbpf parses the kernel's BTF to load
each object; a second parsed copy kept beside it (our attach-point questions) raised
that peak by the BTF's size. Each question now parses and frees."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import llm_slo
from llm_slo.probes.base import KERNEL_BTF

pytestmark = pytest.mark.kernel

# In a fresh process: the first free of a large block gives it back to the kernel (glibc
# raises its mmap threshold only after that), so RSS shows whether the parse is kept.
_SCRIPT = textwrap.dedent("""
    import re
    from llm_slo.bpf.libbpf import BTF_KIND_TYPEDEF, kernel_btf_has, lib

    def rss_kib():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read())[1])

    lib()
    before = rss_kib()
    found = kernel_btf_has("btf_trace_sched_switch", BTF_KIND_TYPEDEF)
    missing = kernel_btf_has("btf_trace_no_such_tracepoint", BTF_KIND_TYPEDEF)
    print(found, missing, rss_kib() - before)
""")


def test_attach_point_questions_keep_no_parsed_btf() -> None:
    if not os.path.exists(KERNEL_BTF):
        pytest.skip(f"no kernel BTF at {KERNEL_BTF}")
    here = os.path.dirname(os.path.dirname(llm_slo.__file__))  # the llm_slo under test
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": here}).stdout.split()
    assert out[:2] == ["True", "False"]
    btf_kib = os.path.getsize(KERNEL_BTF) // 1024
    assert int(out[2]) < btf_kib // 2, f"RSS grew {out[2]} KiB; the BTF is {btf_kib} KiB"
