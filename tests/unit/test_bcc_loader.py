"""The BCC fallback loader's pure parts: tracefs formats, header lookup, ring sizes and the
pasting of common.bcc.h (BCC itself is exercised in tests/kernel/test_bcc_fallback.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_slo.bpf import bcc
from llm_slo.errors import ProbeError

FORMAT = """\
name: tcp_retransmit_skb
ID: 1420
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;

print fmt: "skbaddr=%p", REC->skbaddr
"""


def test_tracepoint_fields_from_the_format_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    event = tmp_path / "events" / "tcp" / "tcp_retransmit_skb"
    event.mkdir(parents=True)
    (event / "format").write_text(FORMAT)
    monkeypatch.setattr(bcc, "tracefs_root", lambda: str(tmp_path))
    assert bcc.tracepoint_fields("tcp/tcp_retransmit_skb") == {"skbaddr", "saddr_v6", "err"}
    assert bcc.tracepoint_fields("tcp/tcp_receive_reset") is None
    monkeypatch.setattr(bcc, "tracefs_root", lambda: None)
    assert bcc.tracepoint_fields("tcp/tcp_retransmit_skb") is None


@pytest.mark.parametrize(("ring_bytes", "pages"), [(1, 1), (4096, 1), (4097, 2),
                                                     (256 * 1024, 64), (300_000, 128)])
def test_ring_pages_round_up_to_a_power_of_two(ring_bytes: int, pages: int) -> None:
    assert bcc.PAGE_SIZE == 4096
    assert bcc.ring_pages(ring_bytes) == pages


def test_kernel_headers_configured_found_or_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "headers"
    (tree / "include" / "linux").mkdir(parents=True)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    with pytest.raises(ProbeError, match=r"no include/linux/kconfig\.h"):
        bcc.kernel_headers(str(tree), "runqueue_delay_ms")
    (tree / "include" / "linux" / "kconfig.h").write_text("")
    assert bcc.kernel_headers(str(tree), "runqueue_delay_ms") == str(tree)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tree))
    assert bcc.kernel_headers(None, "runqueue_delay_ms") == str(tree)
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    monkeypatch.setattr(bcc.platform, "release", lambda: "0.0.0-none")
    monkeypatch.setattr(bcc, "KHEADERS", str(tmp_path / "no-kheaders"))
    with pytest.raises(ProbeError, match=r"linux-headers-0\.0\.0-none"):
        bcc.kernel_headers(None, "runqueue_delay_ms")


def test_every_source_gets_common_pasted_in() -> None:
    """BCC rewrites map calls only in the main file: the helpers that touch maps must
    arrive inside it, not through an #include."""
    sources = sorted(bcc.BCC_DIR.glob("*.bcc.c"))
    assert len(sources) == 6
    for source in sources:
        text = bcc._inline_common(source)
        assert b'#include "common.bcc.h"' not in text
        assert b"BPF_PERCPU_ARRAY(counters" in text


def test_a_source_without_common_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "x.bcc.c"
    source.write_text("int x;\n")
    with pytest.raises(ValueError, match=r"does not include common\.bcc\.h"):
        bcc._inline_common(source)
