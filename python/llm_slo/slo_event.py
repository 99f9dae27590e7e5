"""The v1 SloEvent contract: one SLI measurement of one request, with its status.

Field names and enums are the original project's, so existing consumers keep working.
The JSON Schema ``contracts/v1/slo-event.schema.json`` is generated from this Struct.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SliName = Literal["ttft_ms", "request_latency_ms", "token_throughput_tps", "error_rate",
                  "retrieval_latency_ms", "provider_error_rate"]
SloStatus = Literal["ok", "warning", "breach"]


class SloEvent(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One SLI value for one request (or one evaluation window for rates)."""

    event_id: str
    timestamp: str  # RFC 3339, UTC
    cluster: str
    namespace: str
    workload: str
    service: str
    request_id: str
    sli_name: SliName
    sli_value: float
    unit: str
    status: SloStatus
    trace_id: str | None = None
    labels: dict[str, str] | None = None
