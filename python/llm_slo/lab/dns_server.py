"""A small authoritative DNS server with controllable latency, errors and silence.

DNS-latency probes need a resolver whose behaviour a test dictates: answer in 200 ms,
fail with SERVFAIL (always, or for a seeded share of queries), or never answer.
``DnsServer`` is that resolver: real UDP and TCP (RFC 1035 framing, 2-byte length
prefix) on one port, stdlib only, in background threads. Settings are plain attributes
read per query, so a test can change them while the server runs:

    with DnsServer(answers={"model.svc": "10.0.0.7"}, delay_s=0.2) as dns:
        ...  # dig @127.0.0.1 -p {dns.port} model.svc  -> 10.0.0.7 after ~200 ms
        dns.rcode = 2  # from now on: SERVFAIL
        dns.configure(fail_rate=0.3)  # ... for 30 % of the queries only

As a subprocess (e.g. inside a lab network namespace), controlled over stdin::

    python -m llm_slo.lab.dns_server --host 10.253.1.2 --port 53 \
        --answer provider.lab=10.253.2.2 [--answer ...] [--max-s S]

It prints its bound port on stdout once listening (read it with
:func:`llm_slo.lab.workloads.wait_ready`), then applies one JSON object per stdin line
(``{"delay_s": 0.2}``, ``{"rcode": 2, "fail_rate": 0.5}``, ``{"drop": true}``) and
answers each with one stdout line: the settings now, or ``{"error": "..."}`` (nothing
changed). EOF on stdin, SIGTERM or SIGINT stop it with exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import itertools
import json
import math
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

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

#: The runtime settings, in the order :meth:`DnsServer.settings` lists them.
SETTINGS = ("delay_s", "rcode", "fail_rate", "drop")
# (lo, hi, integer) of the numeric settings. rcode is a 4-bit header field; an hour
# is far beyond any resolver timeout, so a larger delay can only be a typo.
_LIMITS: dict[str, tuple[float, float, bool]] = {
    "delay_s": (0.0, 3600.0, False), "rcode": (0, 15, True), "fail_rate": (0.0, 1.0, False)}


def _checked(name: str, value: Any) -> float | int | bool:
    """``value`` validated for setting ``name``; ``ValueError`` with a readable reason."""
    if name == "drop":
        if not isinstance(value, bool):
            raise ValueError(f"drop must be true or false, got {value!r}")
        return value
    if name not in _LIMITS:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    lo, hi, integer = _LIMITS[name]
    # bool is an int subclass: {"rcode": true} is a client bug, not 1
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, "
                         f"got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be within [{lo:g}, {hi:g}], got {value!r}")
    return int(value) if integer else float(value)


class DnsServer:
    """Background DNS server; see the module docstring. ``.port`` is set on start.

    ``rcode`` (0: answer normally) replaces the answer of a ``fail_rate`` share of the
    queries (1.0: all of them), drawn from a ``random.Random(seed)``, so the same seed
    and query sequence fail the same queries.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay_s: float = 0.0,
                 rcode: int = 0, fail_rate: float = 1.0, drop: bool = False,
                 answers: dict[str, str] | None = None, tcp: bool = True,
                 seed: int = 0) -> None:
        self.host, self.port, self.tcp = host, port, tcp
        self.delay_s, self.rcode, self.fail_rate = 0.0, 0, 1.0  # set by configure() below
        self.drop = False
        self.answers: dict[str, str] = dict(answers or {})
        self.queries_received = 0
        self.queries_answered = 0
        self.rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._due_cv = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self.configure(delay_s=delay_s, rcode=rcode, fail_rate=fail_rate, drop=drop)

    def configure(self, **changes: Any) -> None:
        """Apply several settings at once, all or nothing.

        Raises ``ValueError`` naming the first unknown key or bad value; then nothing
        changed. A query never sees half of a change (e.g. the new ``rcode`` with the
        old ``fail_rate``).
        """
        checked = {name: _checked(name, value) for name, value in changes.items()}
        with self._lock:
            for name, value in checked.items():
                setattr(self, name, value)

    def settings(self) -> dict[str, Any]:
        """Current value of every runtime setting, by name."""
        with self._lock:
            return {name: getattr(self, name) for name in SETTINGS}

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
        with self._lock:  # one consistent snapshot of the settings per query
            self.queries_received += 1
            drop, delay, rcode = self.drop, self.delay_s, self.rcode
            # one draw per query while rcode is set: a seed fixes which ones fail
            fail = rcode != 0 and self.rng.random() < self.fail_rate
        if drop or len(msg) < HEADER.size:
            return
        try:
            q = parse_query(msg)
        except DnsFormatError:
            resp = error_response(msg, RCODE_FORMERR)
        else:
            # At most one A record and a <=255-byte name: always within the 512-byte
            # classic UDP limit, so truncation (TC) never arises.
            resp = self._answer(q, rcode if fail else 0)

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

    def _answer(self, q: Question, rcode: int) -> bytes:
        if (q.flags >> 11) & 0xF != 0:
            return build_response(q, RCODE_NOTIMP, [])
        if rcode:
            return build_response(q, rcode, [])
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


# --- subprocess mode ---------------------------------------------------------------------


def _answer_arg(text: str) -> tuple[str, str]:
    """``NAME=ADDR`` of ``--answer``: a non-empty name and an IPv4 address (A records)."""
    name, sep, addr = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        ipaddress.IPv4Address(addr.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=IPV4, got {text!r}") from None
    return name.strip(), addr.strip()


def _command(server: DnsServer, line: bytes) -> dict[str, Any]:
    """Apply one JSON control line; the reply is the settings now or ``{"error": ...}``."""
    try:
        changes = json.loads(line)  # JSONDecodeError and UnicodeDecodeError: ValueError
        if not isinstance(changes, dict):
            raise ValueError(f"a command must be a JSON object, got {changes!r}")
        server.configure(**changes)
    except ValueError as exc:
        return {"error": str(exc)}
    return server.settings()


@contextlib.contextmanager
def _signal_pipe() -> Iterator[int]:
    """Yield a fd that turns readable on SIGTERM/SIGINT instead of dying of them.

    The control loop waits in select() on stdin and this fd, so a signal ends it at a
    well-defined point rather than raising somewhere inside a command.
    """
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)  # set_wakeup_fd requires it
    # the wakeup fd is only written for signals with a Python-level handler
    previous = {sig: signal.signal(sig, lambda *_: None)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_fd = signal.set_wakeup_fd(wfd)
    try:
        yield rfd
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(rfd)
        os.close(wfd)


def _obey(server: DnsServer, stop_fd: int, max_s: float) -> None:
    """Apply stdin's command lines until EOF, ``stop_fd`` turns readable or ``max_s``."""
    deadline = time.monotonic() + max_s if max_s > 0 else None
    stdin = sys.stdin.fileno()
    pending = b""
    # poll, not epoll: epoll refuses regular files and /dev/null as stdin
    with selectors.PollSelector() as sel:
        sel.register(stdin, selectors.EVENT_READ)
        sel.register(stop_fd, selectors.EVENT_READ)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            ready = {key.fd for key, _ in sel.select(left)}
            if stop_fd in ready:
                return
            if stdin not in ready:
                continue
            # raw reads, not sys.stdin: select() cannot see data buffered in a file object
            chunk = os.read(stdin, 65536)
            pending += chunk or b"\n"  # at EOF, a last line without newline still counts
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    print(json.dumps(_command(server, line)), flush=True)
            if not chunk:  # EOF: whoever controlled us is gone
                return


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_slo.lab.dns_server``: serve and obey stdin; see the module doc."""
    parser = argparse.ArgumentParser(
        prog="python -m llm_slo.lab.dns_server",
        description="Lab DNS server (UDP and TCP) with latency, errors and silence "
                    "switchable by JSON lines on stdin.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0: any; printed)")
    parser.add_argument("--answer", type=_answer_arg, action="append", default=[],
                        metavar="NAME=ADDR", help="an A record to serve (repeatable)")
    parser.add_argument("--max-s", type=float, default=0.0,
                        help="exit after this many seconds (0: until EOF or signalled)")
    args = parser.parse_args(argv)
    server = DnsServer(args.host, args.port, answers=dict(args.answer))
    with _signal_pipe() as stop_fd:
        try:
            server.start()
        except OSError as exc:
            print(f"dns_server: {exc}", file=sys.stderr)
            return 1
        try:
            print(server.port, flush=True)  # the readiness line the starter waits for
            _obey(server, stop_fd, args.max_s)
        finally:
            server.stop()
    return 0


def dns_server_argv(host: str, port: int = 0, answers: Mapping[str, str] | None = None,
                    max_s: float = 0.0) -> list[str]:
    """Command line of a DNS server subprocess (e.g. for ``NetnsPair.run``).

    Start it with ``stdin=PIPE, stdout=PIPE``, read its port with
    :func:`llm_slo.lab.workloads.wait_ready`, then write one JSON command per line and
    read one reply line for each. ``max_s`` > 0 bounds its life.
    """
    argv = [sys.executable, "-m", "llm_slo.lab.dns_server", "--host", host,
            "--port", str(port), "--max-s", str(max_s)]
    for name, addr in (answers or {}).items():
        argv += ["--answer", f"{name}={addr}"]
    return argv


if __name__ == "__main__":
    sys.exit(main())
