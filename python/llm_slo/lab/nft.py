"""Random TCP packet loss with nftables, as a reversible fault.

The machine has no netem, so loss is injected with an nftables rule
``numgen random mod 100 < N drop``: the kernel drops real packets, TCP really
retransmits (or retries SYNs), and the tracepoints the toolkit watches fire for real.
Each ``NftDrop`` lives in its own ``inet`` table, so removing the fault is deleting the
table, which cannot disturb any other ruleset on the host.

    with NftDrop("llm-slo-test", daddr=pair.ns_addr, dport=8080, percent=100,
                 syn_only=True):
        ...  # connects to pair.ns_addr:8080 now time out

With ``direction="forward"`` the drop happens where this host routes packets between
two network namespaces (a router between pods), and ``saddr`` narrows it to one
sender.
"""

from __future__ import annotations

import ipaddress
import json
from types import TracebackType

from llm_slo.errors import LabError
from llm_slo.lab.naming import is_stale, unique_name
from llm_slo.lab.processes import run_cmd

_DIRECTIONS = {"output": ("output",), "input": ("input",), "both": ("output", "input"),
               "forward": ("forward",)}


class NftError(LabError):
    """``nft`` rejected a script or command; the message carries nft's own text."""


def _nft(script: str) -> None:
    """Apply ``script`` atomically with ``nft -f -`` (all of it or nothing)."""
    try:
        run_cmd(["nft", "-f", "-"], stdin=script)
    except LabError as exc:
        raise NftError(str(exc)) from exc


def _net(addr: str) -> tuple[int, str]:
    """IP version and nft spelling of an address or network (``ValueError`` on junk)."""
    net = ipaddress.ip_network(addr, strict=False)
    return net.version, str(net.network_address if net.prefixlen == net.max_prefixlen
                            else net.with_prefixlen)


class NftDrop:
    """Context manager dropping ``percent``% of TCP packets to ``daddr[:dport]``.

    ``daddr`` is an IPv4/IPv6 address or network; ``saddr`` (optional, same family)
    also requires that source. ``syn_only`` restricts the drop to connection attempts
    (SYN without ACK), which delays or fails connects without touching established
    flows. ``direction`` is ``"output"`` (packets this host sends), ``"input"``
    (packets it receives), ``"both"``, or ``"forward"`` (packets it routes from one
    interface to another, e.g. between two network namespaces; needs forwarding
    enabled). Attribute ``table`` is the table name; :meth:`dropped` reads the rule
    counters.
    """

    def __init__(self, table_prefix: str = "llm-slo", *, daddr: str, dport: int | None,
                 percent: int, syn_only: bool = False, direction: str = "output",
                 saddr: str | None = None) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be in 0..100, got {percent}")
        if dport is not None and not 0 < dport < 65536:
            raise ValueError(f"dport must be in 1..65535, got {dport}")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}")
        version, dst = _net(daddr)
        self.table = unique_name(table_prefix)
        self.hooks = _DIRECTIONS[direction]
        family = "ip" if version == 4 else "ip6"
        match: list[str] = []
        if saddr is not None:
            src_version, src = _net(saddr)
            if src_version != version:
                raise ValueError(f"saddr {saddr} and daddr {daddr} are not the same family")
            match.append(f"{family} saddr {src}")
        match += [f"{family} daddr {dst}", "meta l4proto tcp"]
        if dport is not None:
            match.append(f"tcp dport {dport}")
        if syn_only:
            match.append("tcp flags & (syn | ack) == syn")
        # numgen last: only packets that match everything else consume a random
        # draw, so the drop rate is exactly `percent` of the matching packets. 100 %
        # needs no draw (and `< 100` is out of nft's range); 0 % only counts.
        if 0 < percent < 100:
            match.append(f"numgen random mod 100 < {percent}")
        self.rule = " ".join([*match, "counter", "drop" if percent else ""]).rstrip()
        self._installed = False

    def _script(self) -> str:
        chains = "".join(
            f"  chain {hook} {{\n"
            # An accept in another table's chain does not stop ours (a drop in any
            # base chain is final), so the priority only orders the work: -10 runs
            # before the usual filter chains at 0.
            f"    type filter hook {hook} priority -10; policy accept;\n"
            f"    {self.rule}\n  }}\n"
            for hook in self.hooks)
        return f"table inet {self.table} {{\n{chains}}}\n"

    def __enter__(self) -> NftDrop:
        _nft(self._script())
        self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Delete the table (and with it the drop rules); idempotent."""
        if self._installed:
            try:
                _nft(f"delete table inet {self.table}\n")
            except NftError:
                # Already gone (e.g. cleanup_stale took it): the goal is reached.
                if run_cmd(["nft", "list", "table", "inet", self.table], check=False
                           ).returncode == 0:
                    raise
            self._installed = False

    def dropped(self) -> int:
        """Packets dropped so far by this fault, summed over its chains."""
        out = run_cmd(["nft", "-j", "list", "table", "inet", self.table]).stdout
        return sum(item["counter"]["packets"]
                   for entry in json.loads(out)["nftables"] if "rule" in entry
                   for item in entry["rule"]["expr"] if "counter" in item)


def cleanup_stale(prefix: str = "llm-slo", *, include_live: bool = False) -> list[str]:
    """Delete ``inet`` tables named ``prefix*`` whose owner process is gone.

    With ``include_live`` also tables of running owners. Returns the names deleted.
    """
    out = run_cmd(["nft", "-j", "list", "tables"], check=False).stdout or '{"nftables": []}'
    removed = []
    for entry in json.loads(out)["nftables"]:
        table = entry.get("table")
        if table and table["family"] == "inet" and is_stale(table["name"], prefix,
                                                             include_live):
            _nft(f"delete table inet {table['name']}\n")
            removed.append(table["name"])
    return removed
