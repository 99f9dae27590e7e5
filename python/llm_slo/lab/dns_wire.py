"""DNS wire format, just enough for the lab DNS server (RFC 1035 section 4).

Parses the header and single question of a query and builds responses that echo the
question byte for byte, with optional A records.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP = 1, 2, 3, 4
QTYPE_A, QTYPE_ANY = 1, 255
HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    """The message is not a well-formed single-question DNS query."""


@dataclass(frozen=True)
class Question:
    """The parsed question of a query; ``wire`` is its exact bytes, echoed in replies."""

    id: int
    flags: int
    qname: str
    qtype: int
    qclass: int
    wire: bytes


def parse_query(msg: bytes) -> Question:
    """Parse header and the one question of ``msg``; raise DnsFormatError if malformed."""
    if len(msg) < HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, _, _, _ = HEADER.unpack_from(msg)
    if qdcount != 1:
        raise DnsFormatError(f"qdcount {qdcount}, expected 1")
    labels, pos = [], HEADER.size
    while True:
        if pos >= len(msg):
            raise DnsFormatError("qname runs past the message")
        n = msg[pos]
        if n == 0:
            pos += 1
            break
        # Compression pointers (top bits set) have nothing to point back to in the
        # first name of a message: reject them as malformed instead of following them.
        if n >= 0x40 or pos + 1 + n > len(msg):
            raise DnsFormatError("bad qname label")
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    if pos + 4 > len(msg) or pos - HEADER.size > 255:
        raise DnsFormatError("truncated question or name too long")
    qtype, qclass = struct.unpack_from("!HH", msg, pos)
    return Question(qid, flags, ".".join(labels), qtype, qclass, msg[HEADER.size:pos + 4])


def build_response(q: Question, rcode: int, addrs: list[str], ttl: int = 60) -> bytes:
    """Authoritative response to ``q`` echoing its question, with A records ``addrs``."""
    # QR=1, opcode copied, AA=1, RD copied; RA mirrors RD so stub resolvers and dig
    # treat us like the recursive resolver (CoreDNS, node-local-dns) we stand in for.
    rd = q.flags & 0x0100
    flags = 0x8000 | (q.flags & 0x7800) | 0x0400 | rd | (rd >> 1) | (rcode & 0xF)
    out = [HEADER.pack(q.id, flags, 1, len(addrs), 0, 0), q.wire]
    for addr in addrs:
        # 0xC00C: pointer to the qname at offset 12, right after the header.
        out.append(struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, ttl, 4) + socket.inet_aton(addr))
    return b"".join(out)


def error_response(msg: bytes, rcode: int) -> bytes:
    """Header-only response with ``rcode`` to a message whose question is unusable."""
    qid, flags = struct.unpack_from("!HH", msg)
    return HEADER.pack(qid, 0x8000 | (flags & 0x7900) | rcode, 0, 0, 0, 0)
