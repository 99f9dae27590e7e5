"""The v1 IncidentAttribution contract: which fault domain broke an SLO, and why.

Compatible with the original (same required fields, names and the original domain
values); extended where it fell short: more domains, ``sub_cause``, evidence items with
unit, baseline, correlation tier and confidence, and an explicit abstain. The JSON
Schema ``contracts/v1/incident-attribution.schema.json`` is generated from it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]

FaultDomain = Literal[
    "network_dns", "network_egress", "network_connect", "tls_handshake", "cpu_contention",
    "cpu_throttle", "memory_pressure", "provider_throttle", "provider_error",
    "retrieval_backend", "unknown",
]
FAULT_DOMAINS: tuple[str, ...] = FaultDomain.__args__  # type: ignore[attr-defined]
EvidenceSource = Literal["ebpf", "otel", "kubernetes", "application"]
CorrelationTier = Literal["trace_id_exact", "pod_pid_100ms", "pod_conn_250ms",
                          "service_node_500ms", "window"]


class Evidence(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One observation behind a hypothesis: a signal's value against its baseline."""

    signal: str
    value: str | float | bool
    source: EvidenceSource
    unit: str | None = None
    baseline: float | None = None
    correlation_tier: CorrelationTier | None = None
    confidence: Probability | None = None


class SloImpact(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The SLO that burned: its SLI, burn rate and the alert window."""

    sli: str
    burn_rate: float
    window_minutes: Annotated[int, msgspec.Meta(ge=1)]


class FaultHypothesis(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ranked candidate domain with its posterior and the evidence supporting it."""

    domain: str
    posterior: Probability
    evidence: list[str]


class IncidentAttribution(msgspec.Struct, kw_only=True, omit_defaults=True,
                          forbid_unknown_fields=True):
    """The answer for one SLO violation. ``abstain`` means: evidence too weak to name a
    domain; ``predicted_fault_domain`` is then ``unknown``."""

    incident_id: str
    timestamp: str  # RFC 3339, UTC
    cluster: str
    service: str
    predicted_fault_domain: FaultDomain
    confidence: Probability
    evidence: list[Evidence]
    slo_impact: SloImpact
    namespace: str | None = None
    trace_ids: list[str] | None = None
    request_ids: list[str] | None = None
    fault_hypotheses: list[FaultHypothesis] | None = None
    sub_cause: str | None = None
    abstain: bool = False
    abstain_reason: str | None = None
