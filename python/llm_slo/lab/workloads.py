"""Real workloads that make the kernel signals move: CPU hogs, TCP echo, slow TLS.

* :func:`cpu_hogs` - busy-loop processes for run-queue delay and CPU throttling.
* :class:`TcpEchoServer` / :func:`echo_server_argv` - TCP peers, in-process or as a
  subprocess (e.g. inside a :class:`~llm_slo.lab.netns.NetnsPair`).
* :class:`TlsServer` / :func:`tls_client_handshake` - TLS with a controllable server
  handshake delay. Python's ``ssl`` links the system ``libssl.so.3``, so a uprobe on
  ``SSL_do_handshake`` there sees the client's handshake.

The in-process servers live in :mod:`llm_slo.lab.servers` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from llm_slo.errors import LabError
from llm_slo.lab.cgroups import Cgroup, spawn_in
from llm_slo.lab.processes import read_ready_line
from llm_slo.lab.servers import TcpEchoServer, TlsServer, tls_client_handshake

__all__ = ["TcpEchoServer", "TlsServer", "cpu_hogs", "echo_server_argv",
           "tls_client_handshake", "wait_ready"]


@contextlib.contextmanager
def cpu_hogs(n: int, cgroups: Sequence[Cgroup] | None = None, *, max_s: float = 600.0
             ) -> Iterator[list[subprocess.Popen[Any]]]:
    """Run ``n`` busy-looping processes (inside ``cgroups`` if given) for the block.

    Each hog also exits by itself after ``max_s``, so a SIGKILLed test cannot leave
    the host spinning forever.
    """
    argv = [sys.executable, "-S", "-c",
            f"import time\nend = time.monotonic() + {max_s}\n"
            "while time.monotonic() < end: pass"]
    procs: list[subprocess.Popen[Any]] = []
    try:
        for _ in range(n):
            procs.append(spawn_in(cgroups, argv) if cgroups else subprocess.Popen(argv))
        yield procs
    finally:
        for p in procs:  # a hog has nothing to flush: SIGKILL straight away
            p.kill()
        for p in procs:
            p.wait(5.0)


# A dependency-free echo server for running in another namespace or cgroup. It prints
# its port once listening, so the starter can wait for readiness instead of sleeping.
_ECHO_SCRIPT = """
import os, socket, sys, threading
threading.Timer(float(sys.argv[3]), os._exit, (0,)).start()  # bounded lifetime
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=128)
print(srv.getsockname()[1], flush=True)
def echo(c):
    with c:
        c.settimeout(30)
        try:
            while data := c.recv(65536):
                c.sendall(data)
        except OSError:
            pass
while True:
    c, _ = srv.accept()
    threading.Thread(target=echo, args=(c,), daemon=True).start()
"""


def echo_server_argv(host: str, port: int = 0, *, max_s: float = 600.0) -> list[str]:
    """Command line of a standalone TCP echo server that exits after ``max_s``.

    Start it with ``stdout=PIPE`` and call :func:`wait_ready` for its port.
    """
    return [sys.executable, "-S", "-c", _ECHO_SCRIPT, host, str(port), str(max_s)]


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
    """Wait for a server from :func:`echo_server_argv` to listen; return its port."""
    line = read_ready_line(proc, "echo server", timeout)
    if not line.isdigit():
        raise LabError(f"echo server printed {line[:80]!r}, not its port")
    return int(line)
