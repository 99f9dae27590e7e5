"""Tests for llm_slo.bpf.ringbuf.RingBuffer against a memfd laid out like a BPF ring buffer.

The kernel maps the consumer page, the producer page and the data area twice back to back.
A memfd cannot alias the data area onto itself, so :class:`FakeRing` keeps the ring in a
bytearray and writes it to both halves after every change: a record that wraps past the
end of the data area then reads contiguously, as through the kernel's double mapping.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from llm_slo.bpf.ringbuf import RingBuffer

PAGE = mmap.PAGESIZE
SIZE = 1024  # data area bytes; a power of two
BUSY = 1 << 31
DISCARD = 1 << 30
# 12-byte records: 20 bytes with the header, so every frame carries 4 bytes of padding.
REC = np.dtype([("seq", "<u8"), ("tag", "<u4")])
STRIDE = 24


def _round8(n: int) -> int:
    return (n + 7) & ~7


class FakeRing:
    """The producer side: appends framed records and publishes the producer position."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.fd = os.memfd_create("llm-slo-ringbuf-test")
        os.ftruncate(self.fd, PAGE + PAGE + 2 * size)
        self.mem = mmap.mmap(self.fd, PAGE + PAGE + 2 * size)
        self.ring = bytearray(size)
        self.prod = 0

    # positions ---------------------------------------------------------------------

    @property
    def cons(self) -> int:
        return struct.unpack_from("<Q", self.mem, 0)[0]

    def set_positions(self, pos: int) -> None:
        """Start both positions at ``pos`` (an empty ring that has already wrapped)."""
        self.prod = pos
        struct.pack_into("<Q", self.mem, 0, pos)
        self.publish()

    def publish(self) -> None:
        struct.pack_into("<Q", self.mem, PAGE, self.prod)

    # records -----------------------------------------------------------------------

    def _write(self, pos: int, data: bytes) -> None:
        for j, b in enumerate(data):
            self.ring[(pos + j) & (self.size - 1)] = b
        base = 2 * PAGE
        self.mem[base : base + self.size] = self.ring
        self.mem[base + self.size : base + 2 * self.size] = self.ring

    def append(self, payload: bytes, *, busy: bool = False, discard: bool = False,
               length: int | None = None, publish: bool = True) -> int:
        """Frame ``payload`` at the producer position; return the frame's position."""
        length = len(payload) if length is None else length
        flags = (BUSY if busy else 0) | (DISCARD if discard else 0)
        frame = struct.pack("<II", length | flags, 1) + payload
        frame += b"\xaa" * (_round8(length + 8) - len(frame))  # padding is not zeroed
        pos = self.prod
        self._write(pos, frame)
        self.prod += len(frame)
        if publish:
            self.publish()
        return pos

    def commit(self, pos: int, length: int) -> None:
        """Clear BUSY on the record at ``pos``, as bpf_ringbuf_submit does."""
        self._write(pos, struct.pack("<I", length))

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


def _recs(seqs: list[int], tag: int = 7) -> list[bytes]:
    return [np.array([(s, tag)], dtype=REC).tobytes() for s in seqs]


@pytest.fixture
def ring() -> Iterator[tuple[FakeRing, RingBuffer]]:
    fake = FakeRing()
    rb = RingBuffer(fake.fd, SIZE, REC)
    yield fake, rb
    rb.close()
    fake.close()


def _seqs(out: np.ndarray[Any, Any]) -> list[int]:
    return out["seq"].tolist()


def test_empty_drain(ring: tuple[FakeRing, RingBuffer]) -> None:
    """Nothing produced: an empty array of the dtype and no position change."""
    fake, rb = ring
    out = rb.drain()
    assert out.shape == (0,) and out.dtype == REC
    assert fake.cons == 0
    assert rb.pending_bytes == 0


def test_records_in_order_and_consumer_advances(ring: tuple[FakeRing, RingBuffer]) -> None:
    """N records come back in order; the consumer position moves by N * stride."""
    fake, rb = ring
    for p in _recs(list(range(10))):
        fake.append(p)
    assert rb.pending_bytes == 10 * STRIDE
    out = rb.drain()
    assert _seqs(out) == list(range(10))
    assert out["tag"].tolist() == [7] * 10
    assert fake.cons == 10 * STRIDE
    assert rb.pending_bytes == 0
    assert rb.drain().shape == (0,)
    assert rb.bad_records == 0


def test_stride_rounds_up_to_eight() -> None:
    """A record whose size + header is already 8-aligned has no padding."""
    fake = FakeRing()
    dtype = np.dtype([("a", "<u8"), ("b", "<u8")])  # 16 + 8 = 24
    rb = RingBuffer(fake.fd, SIZE, dtype)
    try:
        for i in range(3):
            fake.append(np.array([(i, i * 10)], dtype=dtype).tobytes())
        assert rb.drain()["b"].tolist() == [0, 10, 20]
        assert fake.cons == 3 * 24
    finally:
        rb.close()
        fake.close()


def test_busy_record_stops_the_drain(ring: tuple[FakeRing, RingBuffer]) -> None:
    """Records from the first BUSY one on stay in the ring until it is committed."""
    fake, rb = ring
    a, b, c = _recs([1, 2, 3])
    fake.append(a)
    busy_pos = fake.append(b, busy=True)
    fake.append(c)
    assert _seqs(rb.drain()) == [1]
    assert fake.cons == STRIDE
    assert rb.pending_bytes == 2 * STRIDE
    assert _seqs(rb.drain()) == []  # still busy
    fake.commit(busy_pos, REC.itemsize)
    assert _seqs(rb.drain()) == [2, 3]
    assert fake.cons == 3 * STRIDE


def test_discarded_records_are_skipped_but_consumed(ring: tuple[FakeRing, RingBuffer]) -> None:
    """DISCARD records are not returned, yet the consumer moves past them."""
    fake, rb = ring
    for i, p in enumerate(_recs([1, 2, 3, 4])):
        fake.append(p, discard=i in (0, 2))
    assert _seqs(rb.drain()) == [2, 4]
    assert fake.cons == 4 * STRIDE
    assert rb.bad_records == 0


def test_wrap_around(ring: tuple[FakeRing, RingBuffer]) -> None:
    """Records that straddle the end of the data area read back whole and in order."""
    fake, rb = ring
    start = 5 * SIZE - 16  # positions keep growing; this one is 16 bytes before the end
    fake.set_positions(start)
    for p in _recs([10, 11, 12]):
        fake.append(p)
    out = rb.drain()
    assert _seqs(out) == [10, 11, 12]
    assert out["tag"].tolist() == [7, 7, 7]
    assert fake.cons == start + 3 * STRIDE


def test_many_laps(ring: tuple[FakeRing, RingBuffer]) -> None:
    """Producing and draining across several laps of the ring loses and repeats nothing."""
    fake, rb = ring
    seen: list[int] = []
    seq = 0
    for batch in range(60):
        for p in _recs(list(range(seq, seq + batch % 7 + 1))):
            fake.append(p)
        seq += batch % 7 + 1
        seen += _seqs(rb.drain())
    assert seen == list(range(seq))
    assert fake.cons == seq * STRIDE > 3 * SIZE


def test_unexpected_length_takes_slow_path(ring: tuple[FakeRing, RingBuffer]) -> None:
    """A record of another size is skipped and counted; its neighbours still decode."""
    fake, rb = ring
    a, b = _recs([1, 2])
    fake.append(a)
    fake.append(b"\x01" * 40)  # stride 48: the batch is no longer a multiple of 24
    fake.append(b)
    assert _seqs(rb.drain()) == [1, 2]
    assert rb.bad_records == 1
    assert fake.cons == STRIDE + 48 + STRIDE


def test_wrong_length_same_stride(ring: tuple[FakeRing, RingBuffer]) -> None:
    """A record shorter than the dtype but in the same stride is still rejected."""
    fake, rb = ring
    a, b, c = _recs([1, 2, 3])
    fake.append(a)
    fake.append(b[:10])  # 10 + 8 rounds to 24, like a real record
    fake.append(c)
    assert _seqs(rb.drain()) == [1, 3]
    assert rb.bad_records == 1
    assert fake.cons == 3 * STRIDE


def test_slow_path_skips_discarded_and_stops_at_busy(
    ring: tuple[FakeRing, RingBuffer],
) -> None:
    """In the slow path a discarded odd-sized record is not bad, and BUSY still stops."""
    fake, rb = ring
    a, b, c = _recs([1, 2, 3])
    fake.append(a)
    fake.append(b"\x00" * 36, discard=True)  # stride 48
    fake.append(b)
    busy_pos = fake.append(c, busy=True)
    assert _seqs(rb.drain()) == [1, 2]
    assert rb.bad_records == 0
    assert fake.cons == busy_pos
    fake.commit(busy_pos, REC.itemsize)
    assert _seqs(rb.drain()) == [3]


def test_uncommitted_positions_are_not_read(ring: tuple[FakeRing, RingBuffer]) -> None:
    """Records written but not yet published by the producer position are not returned."""
    fake, rb = ring
    a, b = _recs([1, 2])
    fake.append(a)
    fake.append(b, publish=False)
    assert _seqs(rb.drain()) == [1]
    fake.publish()
    assert _seqs(rb.drain()) == [2]


def test_pending_bytes(ring: tuple[FakeRing, RingBuffer]) -> None:
    """pending_bytes is producer minus consumer, busy records included."""
    fake, rb = ring
    fake.set_positions(3 * SIZE)
    assert rb.pending_bytes == 0
    a, b = _recs([1, 2])
    fake.append(a)
    fake.append(b, busy=True)
    assert rb.pending_bytes == 2 * STRIDE
    rb.drain()
    assert rb.pending_bytes == STRIDE


def test_drained_records_are_copies(ring: tuple[FakeRing, RingBuffer]) -> None:
    """A drained batch does not change when the producer reuses the space, nor on close()."""
    fake, rb = ring
    pos = fake.append(_recs([1])[0])
    out = rb.drain()
    fake._write(pos + 8, _recs([99])[0])
    rb.close()
    assert _seqs(out) == [1]


def test_close_is_idempotent() -> None:
    """close() twice is harmless and unmaps both regions."""
    fake = FakeRing()
    rb = RingBuffer(fake.fd, SIZE, REC)
    rb.close()
    rb.close()
    assert rb._cons.closed and rb._data.closed
    fake.close()
