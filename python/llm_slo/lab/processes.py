"""The lab's child processes: short administrative commands (ip, nft, openssl) and the
servers it starts and stops."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess

from llm_slo.errors import LabError


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
