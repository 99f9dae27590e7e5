"""A small authoritative DNS server with controllable latency, errors and silence.

DNS-latency probes need a resolver whose behaviour a test dictates: answer in 200 ms,
fail with SERVFAIL, or never answer. ``DnsServer`` is that resolver: real UDP and TCP
(RFC 1035 framing, 2-byte length prefix) on one port, stdlib only, in background
threads. Settings are plain attributes read per query, so a test can change them while
the server runs:

    with DnsServer(answers={"model.svc": "10.0.0.7"}, delay_s=0.2) as dns:
        ...  # dig @127.0.0.1 -p {dns.port} model.svc  -> 10.0.0.7 after ~200 ms
        dns.rcode = 2  # from now on: SERVFAIL
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

from llm_slo.lab.dns_wire import (
    HEADER,
    QTYPE_A,
    QTYPE_ANY,
    RCODE_FORMERR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    DnsFormatError,
    Question,
    build_response,
    error_response,
    parse_query,
)


class DnsServer:
    """Background DNS server; see the module docstring. ``.port`` is set on start."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0,
                 rcode: int = 0, drop: bool = False, answers: dict[str, str] | None = None,
                 tcp: bool = True) -> None:
        self.host, self.port, self.tcp = host, port, tcp
        self.delay_s, self.rcode, self.drop = delay_s, rcode, drop
        self.answers: dict[str, str] = dict(answers or {})
        self.queries_received = 0
        self.queries_answered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._due_cv = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Bind UDP (and TCP) on one port and start serving."""
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for attempt in range(20):  # port 0: the UDP port may be taken for TCP; retry
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            try:
                if self.tcp:
                    self._tcp = socket.create_server((self.host, udp.getsockname()[1]),
                                                     family=fam, backlog=64)
                break
            except OSError:
                udp.close()
                if self.port or attempt == 19:
                    raise
        self._udp = udp
        self.port = udp.getsockname()[1]
        self._spawn(self._serve)
        self._spawn(self._run_due)

    def stop(self) -> None:
        """Stop serving; pending delayed answers are discarded. Idempotent."""
        self._stop.set()
        with self._due_cv:
            self._due.clear()
            self._due_cv.notify_all()
        if self._threads:  # the accept loop first, so no connection starts after this
            self._threads[0].join(2.0)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # unblocks the per-connection threads' recv()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(2.0)
        self._threads.clear()
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()
        self._udp = self._tcp = None

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="dns-server")
        # Forget finished connection threads so a long-lived server does not grow.
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _serve(self) -> None:
        udp, tcp = self._udp, self._tcp
        assert udp is not None
        sel = selectors.DefaultSelector()
        sel.register(udp, selectors.EVENT_READ)
        if tcp is not None:
            sel.register(tcp, selectors.EVENT_READ)
        with sel:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):  # short timeout: notices stop() quickly
                    try:
                        if key.fileobj is udp:
                            msg, peer = udp.recvfrom(4096)
                            self._query(msg, lambda r, p=peer: udp.sendto(r, p))
                        elif tcp is not None:
                            self._spawn(self._serve_tcp, tcp.accept()[0])
                    except OSError:  # a client vanished mid-operation: keep serving
                        continue

    def _serve_tcp(self, conn: socket.socket) -> None:
        send_lock = threading.Lock()

        def send(resp: bytes) -> None:
            with send_lock:  # delayed answers may be sent from another thread
                conn.sendall(struct.pack("!H", len(resp)) + resp)

        with self._lock:
            self._conns.add(conn)
        conn.settimeout(30.0)  # bound idle clients
        try:
            with conn, conn.makefile("rb") as rf:
                while not self._stop.is_set():
                    head = rf.read(2)
                    if len(head) < 2:
                        break
                    (length,) = struct.unpack("!H", head)
                    msg = rf.read(length)
                    if len(msg) < length:
                        break
                    self._query(msg, send)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _query(self, msg: bytes, send: Callable[[bytes], object]) -> None:
        """Decide the reply from the settings as they are now, then send or schedule it."""
        with self._lock:
            self.queries_received += 1
        if self.drop or len(msg) < HEADER.size:
            return
        try:
            q = parse_query(msg)
        except DnsFormatError:
            resp = error_response(msg, RCODE_FORMERR)
        else:
            # At most one A record and a <=255-byte name: always within the 512-byte
            # classic UDP limit, so truncation (TC) never arises.
            resp = self._answer(q)
        delay = self.delay_s

        def deliver() -> None:
            try:
                send(resp)
            except OSError:  # client went away, or the server stopped meanwhile
                return
            with self._lock:
                self.queries_answered += 1

        if delay <= 0:
            deliver()
            return
        with self._due_cv:
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), deliver))
            self._due_cv.notify()

    def _answer(self, q: Question) -> bytes:
        if (q.flags >> 11) & 0xF != 0:
            return build_response(q, RCODE_NOTIMP, [])
        if self.rcode:
            return build_response(q, self.rcode, [])
        table = {k.lower().rstrip("."): v for k, v in self.answers.items()}
        addr = table.get(q.qname.lower().rstrip("."))
        if addr is None:
            return build_response(q, RCODE_NXDOMAIN, [])
        # Known name, other type (e.g. AAAA): NOERROR without records ("NODATA").
        return build_response(q, 0, [addr] if q.qtype in (QTYPE_A, QTYPE_ANY) else [])

    def _run_due(self) -> None:
        # One timer thread for all delayed answers: each query gets its own due time,
        # so concurrent delayed queries overlap instead of queueing behind each other.
        while True:
            with self._due_cv:
                while not self._stop.is_set():
                    now = time.monotonic()
                    if self._due and self._due[0][0] <= now:
                        break
                    self._due_cv.wait(self._due[0][0] - now if self._due else None)
                if self._stop.is_set():
                    return
                _, _, deliver = heapq.heappop(self._due)
            deliver()
