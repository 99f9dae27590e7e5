"""A network namespace joined to the root namespace by a veth pair.

``NetnsPair`` gives tests a real, private "remote host": packets to ``ns_addr`` leave
the root namespace through a real interface (``host_if``), so they cross the root
namespace's netfilter hooks, qdiscs and TCP stack exactly like traffic to another
machine would, while never leaving the box (the HARD RULE of the lab: traffic only to
loopback or to namespaces we create).

    with NetnsPair("llm-slo-test") as pair:
        srv = pair.run(["python3", "-m", "http.server", "--bind", pair.ns_addr, "8080"])
        ...  # connect to pair.ns_addr:8080 from the root namespace
"""

from __future__ import annotations

import json
import random
import subprocess
from types import TracebackType
from typing import Any

from llm_slo.errors import LabError
from llm_slo.lab.naming import is_stale, unique_name
from llm_slo.lab.processes import kill_quietly, run_cmd, stop_process

_SUBNET_PREFIX = "10.253."


def _subnet_users() -> dict[int, set[str]]:
    """Third octet X of every 10.253.X.* address in the root namespace -> interfaces."""
    out = run_cmd(["ip", "-j", "-4", "addr", "show"]).stdout
    users: dict[int, set[str]] = {}
    for link in json.loads(out or "[]"):
        for addr in link.get("addr_info", []):
            local = addr.get("local", "")
            if local.startswith(_SUBNET_PREFIX):
                users.setdefault(int(local.split(".")[2]), set()).add(link["ifname"])
    return users


class NetnsPair:
    """Context manager: netns ``<prefix>-srv-<pid>-<rand>`` plus a veth pair into it.

    Attributes (valid inside the ``with`` block): ``ns`` (namespace name), ``host_if``
    (root-side interface), ``ns_if`` (namespace-side interface), ``host_addr``
    (10.253.X.1) and ``ns_addr`` (10.253.X.2).
    """

    def __init__(self, name_prefix: str = "llm-slo") -> None:
        self.ns = unique_name(f"{name_prefix}-srv")
        tag = self.ns[-6:]
        # Interface names are limited to 15 bytes (IFNAMSIZ - 1), too short for the
        # namespace name, so the link carries the full name in its alias instead;
        # cleanup_stale finds orphaned links by that alias.
        self.host_if = f"slo{tag}h"
        self.ns_if = f"slo{tag}n"
        self.host_addr = self.ns_addr = ""  # chosen on enter
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> NetnsPair:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _create(self) -> None:
        ns, h, n = self.ns, self.host_if, self.ns_if
        run_cmd(["ip", "netns", "add", ns])
        # Creating the peer directly inside the namespace avoids a window where both
        # ends sit in the root namespace under guessable names.
        run_cmd(["ip", "link", "add", h, "type", "veth", "peer", "name", n, "netns", ns])
        run_cmd(["ip", "link", "set", "dev", h, "alias", ns])
        self._claim_subnet()
        run_cmd(["ip", "link", "set", "dev", h, "up"])
        run_cmd(["ip", "-n", ns, "addr", "add", f"{self.ns_addr}/30", "dev", n])
        run_cmd(["ip", "-n", ns, "link", "set", "dev", n, "up"])
        # Loopback up so servers in the namespace can also talk to themselves.
        run_cmd(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])

    def _claim_subnet(self) -> None:
        # Another run may pick the same X at the same moment. Add our address, then
        # look again and back off if another interface holds that subnet too.
        for _ in range(8):
            free = sorted(set(range(256)) - _subnet_users().keys())
            if not free:
                break
            octet = random.choice(free)
            cidr = f"{_SUBNET_PREFIX}{octet}.1/30"
            run_cmd(["ip", "addr", "add", cidr, "dev", self.host_if])
            if _subnet_users().get(octet) == {self.host_if}:
                self.host_addr = f"{_SUBNET_PREFIX}{octet}.1"
                self.ns_addr = f"{_SUBNET_PREFIX}{octet}.2"
                return
            run_cmd(["ip", "addr", "del", cidr, "dev", self.host_if], check=False)
        raise LabError("no free 10.253.X.0/30 subnet could be claimed")

    def run(self, argv: list[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; it is killed when the pair closes.

        ``ip netns exec`` execs the command in place, so the returned Popen's pid is
        the command's own pid.
        """
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **popen_kw)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Kill processes in the namespace, delete the veth pair and the namespace."""
        for proc in self._procs:
            stop_process(proc)
        self._procs.clear()
        _destroy(self.ns, self.host_if)


def _netns_pids(ns: str) -> list[int]:
    out = run_cmd(["ip", "netns", "pids", ns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _destroy(ns: str, host_if: str | None) -> None:
    # Any process still in the namespace keeps it (and the veth) alive after
    # `ip netns del`, so kill strays, including ones started behind our back.
    for pid in _netns_pids(ns):
        kill_quietly(pid)
    if host_if is not None:
        # Deleting one end deletes both; ignore "cannot find device" when never made.
        run_cmd(["ip", "link", "del", "dev", host_if], check=False)
    run_cmd(["ip", "netns", "del", ns], check=False)


def cleanup_stale(prefix: str = "llm-slo", *, include_live: bool = False) -> list[str]:
    """Remove namespaces and veth links named ``prefix*`` left behind by crashed runs.

    Objects whose owner process is still alive are kept unless ``include_live``.
    Returns the names removed.
    """
    removed: list[str] = []
    out = run_cmd(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        if name and is_stale(name, prefix, include_live):
            _destroy(name, None)
            removed.append(name)
    links = json.loads(run_cmd(["ip", "-j", "link", "show"], check=False).stdout or "[]")
    for link in links:
        alias = link.get("ifalias", "")
        if alias and is_stale(alias, prefix, include_live):
            run_cmd(["ip", "link", "del", "dev", link["ifname"]], check=False)
            removed.append(link["ifname"])
    return removed
