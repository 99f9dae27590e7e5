"""Shared test configuration.

Tests marked ``kernel`` load real BPF programs and provoke them with real traffic. They
need root and a kernel that allows bpf(); elsewhere they skip, unless
``LLM_SLO_REQUIRE_KERNEL=1`` (set by ``.ci/run``), which turns every such skip into a
failure so CI can never pass without running them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REQUIRE_KERNEL = os.environ.get("LLM_SLO_REQUIRE_KERNEL") == "1"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def require_kernel(reason: str) -> None:
    """Skip the calling kernel test, or fail it when kernel tests are required."""
    if REQUIRE_KERNEL:
        pytest.fail(f"kernel test could not run (LLM_SLO_REQUIRE_KERNEL=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _kernel_guard(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kernel") is None:
        return
    if os.geteuid() != 0:
        require_kernel("needs root to load BPF programs")


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    """Fail instead of skip for kernel tests when they are required."""
    if not REQUIRE_KERNEL or item.get_closest_marker("kernel") is None:
        return
    if call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        call.excinfo = None
        raise AssertionError("kernel test skipped while LLM_SLO_REQUIRE_KERNEL=1")


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """``load_script("bench_lab")``: scripts/bench_lab.py as a fresh module. scripts/ is
    put on sys.path for the test's length: scripts import their neighbours."""
    monkeypatch.syspath_prepend(str(SCRIPTS))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
