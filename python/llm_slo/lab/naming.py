"""Names of the kernel objects the lab makes, and who owns them.

Every object a lab primitive creates in the kernel (network namespace, nftables table,
cgroup directory) is named ``<prefix>-<owner pid>-<random>``. The random part keeps
parallel instances apart; the owner pid lets ``cleanup_stale`` tell the leftovers of a
crashed run (owner gone) from the live objects of a run still in progress, which
matters because several engineers and CI jobs share one machine.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

# Names end up in nft identifiers, netns file names and cgroup directories; this subset
# is valid in all three without quoting.
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_OWNER_RE = re.compile(r"-(\d+)-[0-9a-f]{6}$")


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
