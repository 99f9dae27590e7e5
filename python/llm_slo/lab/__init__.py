"""Incident lab: real, reversible workloads and faults for kernel tests.

Every primitive is a context manager that undoes itself on exit, also when the body
raises: network namespaces with veth pairs (:mod:`.netns`), nftables packet loss
(:mod:`.nft`), cgroups (:mod:`.cgroups`), a misbehaving DNS server
(:mod:`.dns_server`), CPU hogs and TCP/TLS servers (:mod:`.workloads`). Kernel objects
are named ``<prefix>-<owner pid>-<random>`` so :func:`cleanup_all` can remove what a
crashed run left behind without touching runs still in progress.

The LLM workload: an OpenAI-compatible provider emulator with SSE streaming and
switchable 429/5xx (:mod:`.provider`), a vector DB emulator with switchable latency
(:mod:`.vectordb`), the OpenTelemetry-instrumented RAG service (:mod:`.rag_service`)
and a seeded fixed-rate load generator (:mod:`.loadgen`). Each runs in-process or as a
subprocess, e.g. inside a lab network namespace.

Traffic stays on loopback or inside namespaces the lab creates.
"""

from __future__ import annotations


def cleanup_all(prefix: str = "llm-slo", *, include_live: bool = False) -> list[str]:
    """Remove every lab leftover named ``prefix*`` (namespaces, nft tables, cgroups).

    Objects whose owner process still runs are kept unless ``include_live``. Returns
    what was removed.
    """
    from llm_slo.lab import cgroups, netns, nft  # deferred: keep `import lab` cheap

    removed: list[str] = []
    for mod in (netns, nft, cgroups):
        removed += mod.cleanup_stale(prefix, include_live=include_live)
    return removed
