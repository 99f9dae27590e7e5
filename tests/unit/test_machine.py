"""Provenance of measurements: what `llm_slo.machine.describe` records."""

from __future__ import annotations

import os

from llm_slo.machine import describe


def test_describe_names_kernel_cpu_software_and_load() -> None:
    m = describe(("msgspec", "no-such-package-llm-slo"))
    assert m["kernel"] == os.uname().release and m["cpus"] == os.cpu_count()
    assert isinstance(m["cpu_model"], str)  # "" where cpuinfo has no model name (arm64)
    assert m["versions"]["msgspec"][0].isdigit()
    assert m["versions"]["no-such-package-llm-slo"] == "?"
    assert len(m["loadavg"]) == 3 and all(float(x) >= 0 for x in m["loadavg"])
