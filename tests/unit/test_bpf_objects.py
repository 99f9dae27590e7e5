"""The committed bpf/*.bpf.o are exactly what their sources build to.

"Match" means byte-identical output of `make bpf` (clang -g -O2 -target bpf, then
llvm-strip -g, relative paths) with the clang recorded in bpf/TOOLCHAIN (Debian 12's
clang 14). With another clang the test skips, unless LLM_SLO_REQUIRE_KERNEL=1 (CI),
where a toolchain mismatch is a failure.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = sorted(p.name.removesuffix(".bpf.o") for p in (ROOT / "bpf").glob("*.bpf.o"))


def _toolchain() -> str:
    if not shutil.which("clang") or not shutil.which("llvm-strip"):
        return ""
    return subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout.split(
        "\n")[0]


def test_every_source_has_an_object() -> None:
    """A .bpf.c without its committed .bpf.o (or the reverse) is a packaging bug."""
    sources = sorted(p.name.removesuffix(".bpf.c") for p in (ROOT / "bpf").glob("*.bpf.c"))
    assert sources == OBJECTS


@pytest.mark.parametrize("name", OBJECTS)
def test_object_is_reproducible(name: str, tmp_path: Path) -> None:
    """Rebuilding the object from its source gives the committed bytes."""
    pinned = (ROOT / "bpf" / "TOOLCHAIN").read_text().strip()
    found = _toolchain()
    if found != pinned:
        msg = f"clang {found!r} is not the pinned {pinned!r}"
        if os.environ.get("LLM_SLO_REQUIRE_KERNEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    cflags = subprocess.run(["make", "-s", "print-BPF_CFLAGS"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()
    out = tmp_path / f"{name}.bpf.o"
    subprocess.run(["clang", *cflags, "-c", f"bpf/{name}.bpf.c", "-o", str(out)],
                   cwd=ROOT, check=True)
    subprocess.run(["llvm-strip", "-g", str(out)], check=True)
    committed = (ROOT / "bpf" / f"{name}.bpf.o").read_bytes()
    assert out.read_bytes() == committed, (
        f"bpf/{name}.bpf.o differs from its source; run `make bpf` and commit "
        f"({shlex.join(['clang', *cflags])})"
    )
