"""Batch reader for a BPF ring buffer, mapped into Python and decoded with numpy.

Why not ``ring_buffer__poll``: it calls back into Python once per record (~1.4 us each,
and it collapses when another thread holds the GIL; ../shared/notes/python-libbpf.md
section 5). Here one drain views every committed record in place as a structured array
and copies them out in one go.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it); the
next page holds the producer position, followed by the data area mapped twice back to
back, so a record that wraps is still contiguous. Each record has an 8-byte header:
u32 len with BUSY (bit 31) and DISCARD (bit 30) flags, then u32 page offset.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

import numpy as np

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingBuffer:
    """A BPF ring buffer whose records all have one dtype.

    ``drain()`` returns the committed records as a copied structured array and releases
    their space to the kernel. Plain loads and stores suffice on x86-64 (TSO); other
    architectures would need acquire/release ordering that Python cannot express.
    """

    def __init__(self, map_fd: int, size: int, dtype: np.dtype[Any]) -> None:
        page = mmap.PAGESIZE
        self.size = size
        self.dtype = dtype
        self._mask = size - 1
        self._stride = (dtype.itemsize + _HDR + 7) & ~7
        self._frame = np.dtype(
            {
                "names": ["len", "pg_off", "rec"],
                "formats": ["<u4", "<u4", dtype],
                "offsets": [0, 4, 8],
                "itemsize": self._stride,
            }
        )
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        # The kernel reads the consumer position while we write it: the store must be one
        # aligned 8-byte write. struct.pack_into may copy bytewise, and a torn value made
        # the producer see a full ring and drop records (make bench, publish diagnostic).
        self._cons_word = ctypes.c_uint64.from_buffer(self._cons)
        self._data = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        self._page = page
        self.bad_records = 0

    def _positions(self) -> tuple[int, int]:
        (prod,) = struct.unpack_from("<Q", self._data, 0)
        return self._cons_word.value, prod

    def drain(self) -> np.ndarray[Any, Any]:
        """Copy out every committed record and advance the consumer position."""
        cons, prod = self._positions()
        avail = prod - cons
        if avail <= 0:
            return np.empty(0, dtype=self.dtype)
        start = self._page + (cons & self._mask)
        if avail % self._stride:
            return self._walk(cons, prod)
        raw = np.frombuffer(self._data, dtype=self._frame, count=avail // self._stride,
                            offset=start)
        lens = raw["len"]
        busy = np.flatnonzero(lens & _BUSY)
        n = int(busy[0]) if busy.size else raw.shape[0]
        lens = lens[:n]
        keep = (lens & _DISCARD) == 0
        # Every frame, discarded ones included, must have our size, or strides are wrong.
        if np.any((lens & ~np.uint32(_DISCARD)) != self.dtype.itemsize):
            del raw, lens
            return self._walk(cons, prod)
        out = raw["rec"][:n][keep].copy()
        del raw, lens
        self._cons_word.value = cons + n * self._stride
        return out

    def _walk(self, cons: int, prod: int) -> np.ndarray[Any, Any]:
        """Slow path: record by record, for frames whose sizes differ from the dtype."""
        recs: list[bytes] = []
        pos = cons
        while pos < prod:
            off = self._page + (pos & self._mask)
            (hdr_len,) = struct.unpack_from("<I", self._data, off)
            if hdr_len & _BUSY:
                break
            length = hdr_len & ~(_BUSY | _DISCARD)
            if not hdr_len & _DISCARD:
                if length == self.dtype.itemsize:
                    recs.append(self._data[off + _HDR : off + _HDR + length])
                else:
                    self.bad_records += 1
            pos += (length + _HDR + 7) & ~7
        self._cons_word.value = pos
        return np.frombuffer(b"".join(recs), dtype=self.dtype).copy()

    @property
    def pending_bytes(self) -> int:
        """Bytes committed or in flight that the consumer has not released yet."""
        cons, prod = self._positions()
        return prod - cons

    def close(self) -> None:
        """Unmap both regions (idempotent)."""
        if not self._cons.closed:
            del self._cons_word  # the exported buffer must go before the map can close
            self._cons.close()
        if not self._data.closed:
            self._data.close()
