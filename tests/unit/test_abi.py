"""The Python mirrors in llm_slo.abi match the C records, as the built objects see them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llm_slo import abi

ROOT = Path(__file__).resolve().parents[2]


def _btf_structs() -> dict[str, dict]:
    if not shutil.which("bpftool"):
        pytest.fail("bpftool is required (make deps installs it)")
    structs: dict[str, dict] = {}
    for obj in sorted((ROOT / "bpf").glob("*.bpf.o")):
        out = subprocess.run(
            ["bpftool", "-j", "btf", "dump", "file", str(obj)],
            check=True, capture_output=True, text=True,
        ).stdout
        for t in json.loads(out)["types"]:
            if t["kind"] == "STRUCT" and t["name"] in abi.MIRRORS:
                structs[t["name"]] = t
    return structs


STRUCTS = _btf_structs()


@pytest.mark.parametrize("name", sorted(abi.MIRRORS))
def test_mirror_matches_btf(name: str) -> None:
    """Size and every mirrored field's offset equal the object's BTF."""
    assert name in STRUCTS, f"struct {name} not found in any bpf/*.bpf.o"
    btf = STRUCTS[name]
    dtype = abi.MIRRORS[name]
    assert dtype.itemsize == btf["size"]
    offsets = {m["name"]: m["bits_offset"] // 8 for m in btf["members"]}
    for field, (_, offset) in dtype.fields.items():
        assert offsets.get(field) == offset, f"{name}.{field}"


def test_every_record_struct_is_mirrored() -> None:
    """Each *_event record in the header has a mirror (nothing streamed goes undecoded)."""
    header = (ROOT / "bpf" / "llm_slo.h").read_text()
    records = {line.split()[1] for line in header.splitlines()
               if line.startswith("struct ") and line.rstrip().endswith("{")}
    assert {r for r in records if r.endswith("_event")} <= set(abi.MIRRORS)
