"""The incident lab's faults and scenarios: what each one does to the running lab, its
parameters (overridable with ``--set name=value``) and the fault domain it is the
ground truth for.

Every fault is real and reversible: ``inject`` changes the lab (a DNS server setting,
an nftables table in the router's forward hook, CPU hogs in the neighbour pod, a CFS
quota or memory limit on the rag pod, an emulator knob) and returns the function that
undoes it. The runner records when each injection took effect and when it was undone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from llm_slo.errors import LabError


class LabControl(Protocol):
    """What a fault may touch in the running lab (implemented by the runner)."""

    def dns_set(self, **settings: Any) -> None: ...
    def provider_set(self, **knobs: Any) -> None: ...
    def vectordb_set(self, **knobs: Any) -> None: ...
    def drop(self, *, percent: int, syn_only: bool) -> Callable[[], None]: ...
    def noisy_hogs(self, n: int, shares: int) -> Callable[[], None]: ...
    def rag_cpu_quota(self, pct: float) -> Callable[[], None]: ...
    def rag_memory_squeeze(self, cache_mb: int) -> Callable[[], None]: ...


class Param(msgspec.Struct, frozen=True):
    """One overridable parameter: its default, bounds and what it means."""

    default: float
    lo: float
    hi: float
    help: str
    integer: bool = False

    def parse(self, name: str, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise LabError(f"--set {name}={text}: not a number") from None
        if self.integer and value != int(value):
            raise LabError(f"--set {name}={text}: must be a whole number")
        if not self.lo <= value <= self.hi:
            raise LabError(f"--set {name}={text}: must be within {self.lo:g}..{self.hi:g}")
        return int(value) if self.integer else value


Inject = Callable[[LabControl, Mapping[str, float]], Callable[[], None]]

#: The workload's own settings, the same for every scenario: the load offered and the
#: backends' behaviour outside a fault (a fault's undo goes back to these).
WORKLOAD: dict[str, Param] = {
    "load.rps": Param(20, 0.1, 200, "requests offered per second, evenly spaced; the "
                      "prompt mix of profile rag_mixed_20rps"),
    "vectordb.base_latency_ms": Param(5, 0, 60_000, "the vector DB's search latency, ms"),
    "provider.ttft_ms": Param(120, 0, 60_000, "the provider's time to first token, ms"),
    "provider.tokens_per_s": Param(50, 1, 100_000, "the provider's token rate, per s"),
}


class Fault(msgspec.Struct, frozen=True):
    """A fault: the domain it is ground truth for, what it does, its parameters."""

    name: str
    domain: str
    description: str
    params: dict[str, Param]
    inject: Inject


def _setting(apply: Callable[..., None], on: dict[str, Any], off: dict[str, Any]
             ) -> Callable[[], None]:
    apply(**on)
    return lambda: apply(**off)


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("dns_latency", "network_dns",
          "the cluster DNS answers every query late (each search-path step pays it)",
          {"dns.delay_ms": Param(100, 1, 10_000, "added to every DNS answer, ms")},
          lambda lab, p: _setting(lab.dns_set, {"delay_s": p["dns.delay_ms"] / 1000},
                                  {"delay_s": 0.0})),
    Fault("dns_failure", "network_dns",
          "the cluster DNS answers a share of queries with SERVFAIL",
          {"dns.fail_pct": Param(30, 1, 100, "share of queries answered SERVFAIL, %")},
          lambda lab, p: _setting(lab.dns_set,
                                  {"rcode": 2, "fail_rate": p["dns.fail_pct"] / 100},
                                  {"rcode": 0, "fail_rate": 1.0})),
    Fault("egress_loss", "network_egress",
          "the router drops a share of rag->provider TCP packets (nftables, forward hook)",
          {"egress.loss_pct": Param(10, 1, 100, "packets dropped, %", integer=True)},
          lambda lab, p: lab.drop(percent=int(p["egress.loss_pct"]), syn_only=False)),
    Fault("connect_timeout", "network_connect",
          "the router drops rag->provider connection attempts (SYN only)",
          {"connect.syn_loss_pct": Param(100, 1, 100, "SYNs dropped, %", integer=True)},
          lambda lab, p: lab.drop(percent=int(p["connect.syn_loss_pct"]), syn_only=True)),
    Fault("tls_slow", "tls_handshake",
          "the provider's TLS terminator stalls every handshake",
          {"tls.delay_ms": Param(800, 1, 30_000, "added to every TLS handshake, ms")},
          lambda lab, p: _setting(lab.provider_set, {"tls_delay_ms": p["tls.delay_ms"]},
                                  {"tls_delay_ms": 0.0})),
    Fault("cpu_contention", "cpu_contention",
          "a neighbour pod on rag's CPU starts busy-looping",
          {"noisy.hogs": Param(3, 1, 64, "busy-looping processes", integer=True),
           "noisy.shares": Param(16_384, 2, 262_144, "the neighbour's cpu.shares (rag: 1024)",
                                 integer=True)},
          lambda lab, p: lab.noisy_hogs(int(p["noisy.hogs"]), int(p["noisy.shares"]))),
    Fault("cpu_throttle", "cpu_throttle",
          "rag's CPU limit is cut (CFS quota per 100 ms period)",
          {"rag.cpu_limit_pct": Param(10, 1, 400, "CPU limit, % of one CPU")},
          lambda lab, p: lab.rag_cpu_quota(p["rag.cpu_limit_pct"])),
    Fault("memory_pressure", "memory_pressure",
          "rag's memory limit leaves little page cache above its anonymous memory: its "
          "64 MiB local index is evicted and read back from disk per request",
          {"mem.cache_mb": Param(32, 1, 4096, "page cache the limit leaves, MiB",
                                 integer=True)},
          lambda lab, p: lab.rag_memory_squeeze(int(p["mem.cache_mb"]))),
    Fault("provider_throttle", "provider_throttle",
          "the LLM provider answers a share of requests 429 with Retry-After",
          {"provider.throttle_pct": Param(50, 1, 100, "requests answered 429, %"),
           "provider.retry_after_s": Param(1, 0, 3600, "the 429's Retry-After, s",
                                           integer=True)},
          lambda lab, p: _setting(lab.provider_set,
                                  {"throttle_rate": p["provider.throttle_pct"] / 100,
                                   "retry_after_s": int(p["provider.retry_after_s"])},
                                  {"throttle_rate": 0.0, "retry_after_s": 1})),
    Fault("provider_error", "provider_error",
          "the LLM provider answers a share of requests 503 (or another 5xx)",
          {"provider.error_pct": Param(30, 1, 100, "requests answered 5xx, %"),
           "provider.error_status": Param(503, 500, 599, "the 5xx status answered",
                                          integer=True)},
          lambda lab, p: _setting(lab.provider_set,
                                  {"error_rate": p["provider.error_pct"] / 100,
                                   "error_status": int(p["provider.error_status"])},
                                  {"error_rate": 0.0, "error_status": 503})),
    Fault("retrieval_slowdown", "retrieval_backend",
          "the vector DB answers searches late",
          {"vectordb.latency_ms": Param(800, 1, 60_000, "search latency, ms")},
          lambda lab, p: _setting(lab.vectordb_set, {"latency_ms": p["vectordb.latency_ms"]},
                                  {"latency_ms": p["vectordb.base_latency_ms"]})),
)}


class Scenario(msgspec.Struct, frozen=True):
    """Faults in steps: each step's faults are on together during one fault phase."""

    name: str
    description: str
    steps: tuple[tuple[str, ...], ...]

    def params(self) -> dict[str, Param]:
        out: dict[str, Param] = {}
        for step in self.steps:
            for fault in step:
                out.update(FAULTS[fault].params)
        return out


SCENARIOS: dict[str, Scenario] = {
    **{name: Scenario(name, f.description, ((name,),)) for name, f in FAULTS.items()},
    "mixed": Scenario("mixed", "dns_latency, egress_loss, cpu_contention and "
                      "provider_throttle one after another, with recovery between",
                      (("dns_latency",), ("egress_loss",), ("cpu_contention",),
                       ("provider_throttle",))),
    "mixed_multi": Scenario("mixed_multi", "two faults at once: dns_latency with "
                            "cpu_contention, then egress_loss with provider_throttle",
                            (("dns_latency", "cpu_contention"),
                             ("egress_loss", "provider_throttle"))),
    "none": Scenario("none", "no fault: the agent's false alarms and overhead under load",
                     ()),
}


def resolve_params(scenario: Scenario, overrides: Mapping[str, str]) -> dict[str, float]:
    """Defaults of the workload's and ``scenario``'s parameters with ``--set`` overrides
    applied."""
    params = {**WORKLOAD, **scenario.params()}
    values = {name: p.default for name, p in params.items()}
    for name, text in overrides.items():
        if name not in params:
            known = ", ".join(sorted(params)) or "none"
            raise LabError(f"--set {name}: scenario {scenario.name} has no such parameter "
                           f"(its parameters: {known})")
        values[name] = params[name].parse(name, text)
    return values


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["a.b=1", ...]`` -> ``{"a.b": "1"}``; a malformed item is a LabError."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise LabError(f"--set {item!r}: expected name=value, e.g. dns.delay_ms=150")
        out[name.strip()] = value.strip()
    return out


def undo_all(undos: list[Callable[[], None]]) -> list[str]:
    """Run every undo (last first) even if some fail; return the failures' messages."""
    errors = []
    for undo in reversed(undos):
        try:
            undo()
        except Exception as e:  # one failed undo must not leave the others undone
            errors.append(f"{type(e).__name__}: {e}")
    undos.clear()
    return errors
