"""In-process threaded TCP servers for the lab: a TCP echo and a slow-handshake TLS echo.

Both bind on ``start()`` (or ``with``), serve each connection in its own thread, and on
exit cut open connections and join their threads, so a test never leaks a thread or a
port. Every connection has a 30 s idle timeout, bounding its life even if a client
hangs. Re-exported by :mod:`llm_slo.lab.workloads`.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from llm_slo.errors import LabError
from llm_slo.lab.processes import run_cmd


class _ThreadedServer:
    """Accept loop in a thread, one thread per connection, all stopped on exit.

    Nothing is bound before ``start()``/``__enter__``; ``.port`` is the real port after.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Bind, listen and start the accept thread."""
        self._sock = socket.create_server((self.host, self.port), backlog=128)
        self.port = self._sock.getsockname()[1]
        self._spawn(self._accept_loop, self._sock)

    def _spawn(self, target: Any, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        # Forget finished connection threads so a long-lived server does not grow.
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept_loop(self, lsock: socket.socket) -> None:
        lsock.settimeout(0.05)  # poll the stop flag between accepts
        while not self._stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:  # includes the timeout
                continue
            conn.settimeout(30.0)  # bound every connection's life
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._run_conn, conn)

    def _run_conn(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._handle(conn)
        except OSError:  # includes ssl.SSLError: client went away or we are stopping
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting, cut open connections, join the threads. Idempotent."""
        self._stop.set()
        if self._threads:  # the accept loop first, so no connection starts after this
            self._threads[0].join(2.0)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(2.0)
        self._threads.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


class TcpEchoServer(_ThreadedServer):
    """Threaded in-process TCP echo server on ``host:port`` (``.port`` once started)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)

    def _handle(self, conn: socket.socket) -> None:
        _echo(conn)


class TlsServer(_ThreadedServer):
    """Threaded TLS echo server with a fresh self-signed cert and a slow handshake.

    ``handshake_delay_s`` (mutable) is waited after accept and before the server
    reads the ClientHello, so the client's handshake takes at least that long.
    ``.cafile`` is the certificate to trust; it is valid for ``localhost`` and
    ``127.0.0.1``. ``.handshakes`` counts completed server handshakes.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 handshake_delay_s: float = 0.0) -> None:
        super().__init__(host, port)
        self.handshake_delay_s = handshake_delay_s
        self.handshakes = 0
        self.cafile = ""
        self._dir: Path | None = None
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def start(self) -> None:
        """Generate a 1-day P-256 certificate for localhost, then start serving."""
        self._dir = Path(tempfile.mkdtemp(prefix="llm-slo-tls-"))
        try:
            self.cafile = str(self._dir / "cert.pem")
            key = str(self._dir / "key.pem")
            run_cmd(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                     "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out",
                     self.cafile, "-days", "1", "-subj", "/CN=localhost", "-addext",
                     "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            self._ctx.load_cert_chain(self.cafile, key)
            super().start()
        except BaseException:
            self.close()
            raise

    def _handle(self, conn: socket.socket) -> None:
        # Event.wait instead of sleep: close() must not wait out a long delay.
        if self._stop.wait(self.handshake_delay_s):
            return
        with self._ctx.wrap_socket(conn, server_side=True,
                                   do_handshake_on_connect=False) as tls:
            with self._lock:  # wrapping detached conn: close() must now cut `tls`
                self._conns.discard(conn)
                self._conns.add(tls)
            try:
                tls.do_handshake()
                with self._lock:
                    self.handshakes += 1
                _echo(tls)
            finally:
                with self._lock:
                    self._conns.discard(tls)

    def close(self) -> None:
        """Stop the server and delete the certificate directory."""
        super().close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def tls_client_handshake(host: str, port: int, cafile: str, *,
                         server_hostname: str = "localhost", timeout: float = 10.0) -> float:
    """Do one verified TLS client handshake with Python ``ssl``; return its wall seconds.

    Only the handshake is timed (TCP connect excluded). Raises ``ssl.SSLError`` or
    ``OSError`` on failure.
    """
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=timeout) as sock, \
            ctx.wrap_socket(sock, server_hostname=server_hostname,
                            do_handshake_on_connect=False) as tls:
        t0 = time.perf_counter()
        tls.do_handshake()
        elapsed = time.perf_counter() - t0
        # One round trip proves the session works (the server echoes).
        tls.sendall(b"ping")
        if tls.recv(4) != b"ping":
            raise LabError("TLS echo mismatch")
    return elapsed

