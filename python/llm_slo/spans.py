"""Spans as the SLO engine sees them: decoded from OTLP, independent of the wire format.

Attribute names follow the OpenTelemetry conventions (``k8s.pod.name``, ``process.pid``,
``network.peer.address``, ``gen_ai.*``) plus this project's ``llm.slo.*``.
"""

from __future__ import annotations

import msgspec

AttrValue = str | int | float | bool
Attributes = dict[str, AttrValue]

SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2


class SpanEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A timestamped event inside a span, e.g. ``gen_ai.first_token``."""

    name: str
    time_unix_nano: int
    attributes: Attributes = msgspec.field(default_factory=dict)


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """One finished span with its resource attributes folded in.

    ``trace_id`` (32 hex) and ``span_id`` (16 hex) are lowercase hex, as in OTLP/JSON.
    """

    trace_id: str
    span_id: str
    parent_span_id: str = ""
    name: str
    kind: int = SPAN_KIND_INTERNAL
    start_unix_nano: int
    end_unix_nano: int
    status_code: int = STATUS_UNSET
    attributes: Attributes = msgspec.field(default_factory=dict)
    events: list[SpanEvent] = msgspec.field(default_factory=list)
    resource: Attributes = msgspec.field(default_factory=dict)

    @property
    def service(self) -> str:
        """``service.name`` of the resource ("" if absent)."""
        return str(self.resource.get("service.name", ""))

    @property
    def duration_ms(self) -> float:
        return (self.end_unix_nano - self.start_unix_nano) / 1e6

    def attr(self, key: str) -> AttrValue | None:
        """A span attribute, falling back to the resource (pod, node, pid live there)."""
        if key in self.attributes:
            return self.attributes[key]
        return self.resource.get(key)
