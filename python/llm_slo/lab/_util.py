"""Helpers shared by the lab primitives: unique names, owner checks, command runner.

Every object a lab primitive creates in the kernel (network namespace, nftables table,
cgroup directory) is named ``<prefix>-<owner pid>-<random>``. The random part keeps
parallel instances apart; the owner pid lets ``cleanup_stale`` tell the leftovers of a
crashed run (owner gone) from the live objects of a run still in progress, which
matters because several engineers and CI jobs share one machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import subprocess
from pathlib import Path

from llm_slo.errors import LlmSloError

# Names end up in nft identifiers, netns file names and cgroup directories; this subset
# is valid in all three without quoting.
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_OWNER_RE = re.compile(r"-(\d+)-[0-9a-f]{6}$")


class LabError(LlmSloError):
    """A lab primitive could not set up or tear down its kernel object."""


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` unchanged, or raise ``ValueError`` if it is not name-safe."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"invalid lab name prefix {prefix!r}: use [A-Za-z][A-Za-z0-9_.-]*")
    return prefix


def unique_name(prefix: str) -> str:
    """Return ``<prefix>-<pid>-<6 hex>``, unique per call and traceable to its owner."""
    return f"{check_prefix(prefix)}-{os.getpid()}-{secrets.token_hex(3)}"


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running process; a zombie (exited, unreaped) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def owner_alive(name: str) -> bool:
    """True if ``name`` carries the pid of a process that still runs.

    Names without an owner pid count as dead: nothing claims them.
    """
    m = _OWNER_RE.search(name)
    return m is not None and pid_alive(int(m.group(1)))


def is_stale(name: str, prefix: str, include_live: bool) -> bool:
    """True if ``name`` belongs to ``prefix`` and may be removed by ``cleanup_stale``."""
    return name.startswith(prefix) and (include_live or not owner_alive(name))


def kill_quietly(pid: int) -> None:
    """SIGKILL ``pid``; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run_cmd(argv: list[str], *, stdin: str | None = None, check: bool = True,
            timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run a short administrative command (ip, nft, openssl) and capture its output.

    Raises :class:`LabError` with the command's own stderr when ``check`` and it fails,
    so the caller sees e.g. the nft parser message rather than just an exit code.
    """
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{argv[0]}: {exc}") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise LabError(f"{' '.join(argv[:4])}: {msg}")
    return proc


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str],
                 grace_s: float = 1.0) -> None:
    """Terminate ``proc``, escalate to SIGKILL after ``grace_s``, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def read_ready_line(proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> str:
    """The first stdout line of a starting server (its port, or an ack), or a LabError
    saying ``what`` did not start, with its exit status and the tail of its stderr."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line:
        err = b""
        if proc.poll() is not None and proc.stderr is not None:
            err = proc.stderr.read()[-800:]
        raise LabError(f"{what} did not start within {timeout_s:g} s (exit {proc.poll()}): "
                       f"{err.decode(errors='replace').strip()}")
    return line
